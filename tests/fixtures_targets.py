"""Session fixtures for the device stand-ins (scripts/targets, scripts/targetlib).

``ssh_target``: a real OpenSSH server on 127.0.0.1 standing in for a Raspberry Pi 5.
``adb_target``: the adb device emulator joined to the real adb server, standing in for
a Pixel 8. Both live in a per-session state folder (never the developer's .targets),
yield a :class:`StandIn` and are stopped at the end of the session.

Point edgekit at them with ``monkeypatch.setenv("EDGEKIT_PROFILES", target.profile_dir)``
and load ``target.profile_name`` ("rpi5-standin" / "pixel8-standin").

Missing binaries skip these tests with the reason, except under CI (``CI`` set), where
they fail: CI installs adb and openssh-server (`make system-deps`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(_SCRIPTS) not in sys.path:
    sys.path.insert(0, str(_SCRIPTS))

from targetlib import stand  # noqa: E402
from targetlib.common import TargetsError  # noqa: E402

# A file or argument name that breaks any command line built without quoting.
HOSTILE = "we ird 'q\" ;$(touch PWNED) `id` &|<>*"


def blob(path: Path, n: int, seed: int = 0, age_s: float = 0.0) -> str:
    """Write ``n`` seeded bytes to ``path`` (mtime ``age_s`` in the past) and return their sha256."""
    data = (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]
    path.write_bytes(data)
    if age_s:
        past = time.time() - age_s
        os.utime(path, (past, past))
    return hashlib.sha256(data).hexdigest()


class CountingHashes:
    """Counts device-side full hashes (``sha256``) of one transport; ``forbid`` makes one fail the test."""

    def __init__(self, t: Any, monkeypatch: pytest.MonkeyPatch, forbid: bool = False):
        self.calls: list[str] = []
        orig = t.sha256

        def sha(remote, timeout=None):
            self.calls.append(remote)
            if forbid:
                raise AssertionError(f"full device hash of {remote} was not expected")
            return orig(remote, timeout=timeout)

        monkeypatch.setattr(t, "sha256", sha)


def sidecar_fields(t: Any, remote: str) -> list[str]:
    """The words of the sha256 sidecar a push left beside ``remote`` ([] when there is none)."""
    res = t.shell(["cat", t.sidecar_name(remote)], check=False)
    return res.stdout.split() if res.exit_code == 0 else []


def pid_alive(pid: int) -> bool:
    """Does ``pid`` run (a zombie does not)? Read from /proc here, not with the stand-ins' own helper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_online(profile: Any, seconds: float = 20, **opts: Any) -> Any:
    """Open a transport to ``profile``, retrying while the device is away (after a dropped link)."""
    from edgekit.devices import open_transport
    from edgekit.errors import DeviceError

    deadline = time.monotonic() + seconds
    while True:
        try:
            tr = open_transport(profile, **opts)
            tr.stat(profile.work_dir)
            return tr
        except DeviceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _info(key: str, kind: Any = str, default: Any = None, doc: str | None = None) -> property:
    """A StandIn property read from its section of state.json (``default`` when absent, else required)."""
    def get(self: "StandIn") -> Any:
        return kind(self.info[key] if default is None else self.info.get(key, default))

    return property(get, doc=doc or f"``{key}`` of this stand-in's state.")


@dataclass
class StandIn:
    kind: str                      # "ssh" | "adb"
    profile_name: str              # e.g. "rpi5-standin"
    profile_dir: Path              # put this in EDGEKIT_PROFILES
    profile_path: Path
    state_dir: Path
    state_file: Path
    port: int
    info: dict[str, Any] = field(default_factory=dict)   # this stand-in's section of state.json

    # ssh
    host = _info("host", default="127.0.0.1")
    user = _info("user")
    key = _info("key", Path)
    known_hosts = _info("known_hosts", Path)
    work_dir = _info("work_dir", default="/data/local/tmp/edgekit")
    # adb
    serial = _info("serial")
    sandbox = _info("sandbox", Path, doc="Host folder standing in for the phone's /data/local/tmp.")

    def host_path(self, device_path: str) -> Path:
        """Where a /data/local/tmp/... device path lives on this machine."""
        from targetlib.adbemu import map_device_path

        mapped = map_device_path(device_path, str(self.sandbox))
        if mapped is None:
            raise ValueError(f"{device_path} is outside the emulated /data/local/tmp")
        return Path(mapped)

    def ensure_connected(self, timeout: float = 30) -> None:
        """Re-join the emulator to the adb server if it is not listed as "device" (another
        process on this machine may have restarted the shared adb server)."""
        from targetlib import adbhost

        adbhost.ensure_server()
        if adbhost.device_state(self.serial) != "device":
            adbhost.connect(self.serial, "device", timeout=timeout)

    @contextlib.contextmanager
    def faults(self, **faults: Any) -> Iterator[None]:
        """Inject faults into the running emulator for the duration of a ``with`` block.

        Keys: ``drop_after_bytes`` (close the transport once that many bytes of one sync
        SEND arrived; one-shot; the partial file stays unless ``drop_keep_partial=False``),
        ``quota_bytes`` (SEND fails with "No space left on device"
        once the sandbox would exceed it). Paths outside /data/local/tmp are always refused.
        """
        from targetlib.adbemu import write_faults

        write_faults(Path(self.info["faults"]), faults)
        try:
            yield
        finally:
            write_faults(Path(self.info["faults"]), {})

    @contextlib.contextmanager
    def extra_device(self, auth: str = "none", offline: bool = False) -> Iterator[str]:
        """Another emulated Pixel 8 (e.g. ``auth="never"``: unauthorized, ``offline=True``)
        connected to the adb server for the ``with`` block; yields its serial."""
        from targetlib import adbhost

        dev = adbhost.start_extra_device(self.state_dir, auth=auth, offline=offline)
        try:
            yield dev["serial"]
        finally:
            adbhost.stop_extra_device(dev)


def _missing(kind: str) -> str | None:
    if kind == "ssh":
        if not os.access("/usr/sbin/sshd", os.X_OK) or not shutil.which("ssh-keygen"):
            return "/usr/sbin/sshd or ssh-keygen missing: install openssh-server (`make system-deps`)"
    else:
        from targetlib.adbhost import adb_binary

        try:
            adb_binary()
        except TargetsError as exc:
            return str(exc)
    return None


def _need(kind: str) -> None:
    reason = _missing(kind)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the {kind} stand-in: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def targets_dir(tmp_path_factory) -> Path:
    """Per-session state folder shared by ssh_target and adb_target."""
    return tmp_path_factory.mktemp("targets")


def _bring_up(kind: str, root: Path) -> StandIn:
    try:
        state = stand.up(root, which=(kind,))
        stand.start_watchdog(root, os.getpid())  # stops them if this pytest is killed
    except TargetsError as exc:
        stand.down(root, which=(kind,))
        pytest.fail(f"could not start the {kind} stand-in: {exc}")
    info = state[kind]
    prof_dir = Path(state["profiles_dir"])
    return StandIn(kind=kind, profile_name=info["profile"], profile_dir=prof_dir,
                   profile_path=prof_dir / f"{info['profile']}.toml", state_dir=root,
                   state_file=root / "state.json", port=int(info["port"]), info=info)


def _drop_big_files(folder: Path, limit: int = 8 * 1024 * 1024) -> None:
    """Free the disk taken by pushed bundles; small files (traces, logs) stay for debugging."""
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_size > limit:
                path.unlink()


def _serve(kind: str, root: Path) -> Iterator[StandIn]:
    """One stand-in for the session: started, yielded, stopped, the disk its pushed bundles took freed."""
    _need(kind)
    target = _bring_up(kind, root)
    yield target
    stand.down(root, which=(kind,))
    _drop_big_files(target.sandbox if kind == "adb" else Path(target.work_dir))


@pytest.fixture(scope="session")
def ssh_target(targets_dir: Path) -> Iterator[StandIn]:
    yield from _serve("ssh", targets_dir)


@pytest.fixture(scope="session")
def adb_target(targets_dir: Path) -> Iterator[StandIn]:
    yield from _serve("adb", targets_dir)


def _stand_in_profile(target: StandIn, monkeypatch: pytest.MonkeyPatch) -> Any:
    from edgekit.devices.profiles import load_profile

    monkeypatch.setenv("EDGEKIT_PROFILES", str(target.profile_dir))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    return load_profile(target.profile_name)


def _profile_fixture(kind: str, what: str) -> Any:
    def fixture(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
        return _stand_in_profile(request.getfixturevalue(f"{kind}_target"), monkeypatch)

    fixture.__doc__ = f"The {what} stand-in's DeviceProfile (EDGEKIT_PROFILES set, ANDROID_SERIAL unset)."
    return pytest.fixture(name=f"{kind}_profile")(fixture)


adb_profile = _profile_fixture("adb", "Pixel 8")
ssh_profile = _profile_fixture("ssh", "Raspberry Pi 5")


def read_state(target: StandIn) -> dict[str, Any]:
    return json.loads(target.state_file.read_text())
