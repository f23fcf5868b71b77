"""Which devices are reachable now: probe every profile in parallel, each with its own timeout."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from edgekit.devices.profiles import DeviceProfile, load_all
from edgekit.errors import EdgekitError


@dataclass
class DeviceStatus:
    name: str
    transport: str
    description: str = ""
    state: str = "unknown"  # reachable | not found | unauthorized | offline | timeout | ... | invalid profile
    reachable: bool = False
    model: str = ""
    soc: str = ""
    os: str = ""
    serial: str = ""
    free_bytes: int | None = None
    work_dir: str = ""
    seconds: float | None = None
    error: str = ""
    hint: str = ""
    identity: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def probe(profile: DeviceProfile, timeout: float | None = None, **opts) -> DeviceStatus:
    """Connect, read identity and free space of the work folder; never raises for device errors."""
    from edgekit.devices import open_transport

    st = DeviceStatus(profile.name, profile.transport, profile.description, work_dir=profile.work_dir)
    t0 = time.monotonic()
    tr = None
    try:
        connect = min(profile.timeouts.connect_s, timeout) if timeout else profile.timeouts.connect_s
        tr = open_transport(profile, connect_timeout=connect, command_timeout=max(connect, 5.0) + 10, **opts)
        ident = tr.identity()
        st.identity = ident
        st.model = ident.get("model", "")
        st.soc = ident.get("soc", "")
        st.os = ident.get("os", "")
        st.serial = ident.get("serial", "")
        st.work_dir = tr.expand(profile.work_dir)
        st.free_bytes = tr.free_bytes(st.work_dir)
        st.state = "reachable"
        st.reachable = True
    except EdgekitError as exc:
        st.state = exc.kind
        st.error = exc.message
        st.hint = exc.hint
    except Exception as exc:  # an unexpected library failure must not hide the other devices
        st.state = "error"
        st.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        if tr is not None:
            try:
                tr.close()
            except Exception:
                pass
    st.seconds = time.monotonic() - t0
    return st


def probe_all(timeout: float = 8.0, names: list[str] | None = None, **opts) -> list[DeviceStatus]:
    """Probe every profile (or ``names``) at once; a device that does not answer in time is 'timeout'."""
    entries = [e for e in load_all() if names is None or e[0] in names]
    results: dict[str, DeviceStatus] = {}
    threads = []
    for name, prof, err in entries:
        if prof is None:
            results[name] = DeviceStatus(name, "?", state="invalid profile", error=err.message if err else "",
                                         hint=err.hint if err else "")
            continue

        def work(p=prof):
            results[p.name] = probe(p, timeout=timeout, **opts)

        th = threading.Thread(target=work, daemon=True, name=f"probe-{name}")
        th.start()
        threads.append((prof, th))
    deadline = time.monotonic() + timeout + 5.0
    for prof, th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
        if th.is_alive() and prof.name not in results:
            results[prof.name] = DeviceStatus(prof.name, prof.transport, prof.description, state="timeout",
                                              work_dir=prof.work_dir,
                                              error=f"no answer within {timeout + 5.0:.0f} s")
    return [results[n] for n, _, _ in entries if n in results]
