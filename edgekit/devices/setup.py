"""Install what a device needs to run benchmarks (``edgekit setup``).

* ``python`` runner (Pi, host): a virtual environment on the device with
  litert-lm-api, ai-edge-litert and numpy, at the folder the profile's
  ``runner.python`` lives in (``~/edgekit/venv/bin/python`` -> ``~/edgekit/venv``), or
  ``WORK_DIR/venv``. Nothing is done when that interpreter already imports the three.
  Packages come from pip (pinned to the versions edgekit is tested with), or, with
  ``reuse_packages_from=PYTHON``, from an existing environment on the device: the venv
  is created by that interpreter and a ``.pth`` file adds its site-packages (no
  download, a second or two; this is what the ssh stand-in uses).
* ``native`` runner (phones): the ``litert_lm_main``-compatible binary named by the
  profile (``runner.binary`` or ``$runner.binary_env``) is pushed to ``WORK_DIR/bin``
  and made executable.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field

from edgekit.devices.profiles import DeviceProfile
from edgekit.devices.transport import Transport
from edgekit.errors import DeviceError, RuntimeMissing, UsageError

PIP_PACKAGES = ("litert-lm-api==0.18.1", "ai-edge-litert==2.3.0", "numpy")
CHECK_CODE = (
    "import json, importlib.metadata as m, platform\n"
    "import numpy, litert_lm, ai_edge_litert\n"
    "print(json.dumps({'python': platform.python_version(), 'machine': platform.machine(),"
    " 'litert_lm_api': m.version('litert-lm-api'), 'ai_edge_litert': m.version('ai-edge-litert'),"
    " 'numpy': numpy.__version__}))"
)


@dataclass
class SetupResult:
    device: str
    kind: str
    action: str  # "already installed" | "installed" | "pushed"
    python: str = ""
    method: str = ""
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0
    binary: str = ""
    sha256: str = ""
    notes: list[str] = field(default_factory=list)


def runner_python(profile: DeviceProfile, transport: Transport) -> str:
    """The interpreter the profile runs the runner with, expanded on the device."""
    if profile.runner.python:
        return transport.expand(profile.runner.python)
    if profile.transport == "local":
        return sys.executable
    return transport.expand(posixpath.join(profile.work_dir, "venv", "bin", "python"))


def venv_dir_for(python: str) -> str:
    d = posixpath.dirname(python)
    if posixpath.basename(d) == "bin":
        return posixpath.dirname(d)
    raise UsageError(f"runner.python {python!r} is not inside a venv's bin/ folder",
                     hint="set runner.python to WORK_DIR/venv/bin/python in the profile")


def check_python(transport: Transport, python: str, timeout: float = 120.0) -> dict | None:
    """Versions of the runtime packages the interpreter imports, or None when it cannot."""
    res = transport.shell([python, "-c", CHECK_CODE], check=False, timeout=timeout)
    if res.exit_code != 0:
        return None
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def setup_python(profile: DeviceProfile, transport: Transport, reuse_packages_from: str | None = None,
                 allow_download: bool = True, base_python: str = "python3", log=lambda msg: None) -> SetupResult:
    t0 = time.monotonic()
    python = runner_python(profile, transport)
    found = check_python(transport, python)
    if found:
        return SetupResult(profile.name, "python", "already installed", python=python, versions=found,
                           seconds=time.monotonic() - t0)
    if profile.transport == "local" and not profile.runner.python:
        raise RuntimeMissing(f"{profile.name}: this Python ({python}) cannot import litert_lm, ai_edge_litert, numpy",
                             hint="pip install edgekit's dependencies into this environment")
    venv = venv_dir_for(python)
    result = SetupResult(profile.name, "python", "installed", python=python)
    if reuse_packages_from:
        src = transport.expand(reuse_packages_from)
        have = check_python(transport, src)
        if not have:
            raise RuntimeMissing(f"{profile.name}: {src} cannot import litert_lm, ai_edge_litert and numpy",
                                 hint="pass an interpreter that has them to --reuse-packages-from")
        log(f"creating {venv} from {src} and linking its site-packages (offline)")
        transport.shell([src, "-m", "venv", "--clear", venv], timeout=300)
        site = transport.shell([src, "-c", "import site, json; print(json.dumps(site.getsitepackages()))"],
                               timeout=60).stdout.strip()
        dirs = json.loads(site.splitlines()[-1])
        target = transport.shell([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 timeout=60).stdout.strip()
        lines = "\n".join(dirs) + "\n"
        transport.sh('printf "%s" "$1" > "$2"', lines, posixpath.join(target, "edgekit-reuse.pth"), timeout=60)
        result.method = f"venv + .pth to the site-packages of {src}"
    else:
        if not allow_download:
            raise RuntimeMissing(f"{profile.name}: {python} lacks litert_lm / ai_edge_litert / numpy",
                                 hint="run `edgekit setup` without --offline, or pass --reuse-packages-from")
        log(f"creating {venv} with {base_python}")
        transport.shell([base_python, "-m", "venv", "--clear", venv], timeout=300)
        log(f"pip install {' '.join(PIP_PACKAGES)} (this downloads ~100 MB on a Pi)")
        res = transport.shell([python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                               *PIP_PACKAGES], check=False, timeout=max(profile.timeouts.command_s, 1800))
        if res.exit_code != 0:
            last = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
            raise RuntimeMissing(f"{profile.name}: pip install failed (exit {res.exit_code}): {last[0]}",
                                 hint="check the board's network and Python (needs 3.10-3.12, glibc >= 2.27)")
        result.method = "venv + pip install " + " ".join(PIP_PACKAGES)
    found = check_python(transport, python)
    if not found:
        raise RuntimeMissing(f"{profile.name}: {python} still cannot import the runtime after setup")
    result.versions = found
    result.seconds = time.monotonic() - t0
    return result


def setup_native(profile: DeviceProfile, transport: Transport) -> SetupResult:
    t0 = time.monotonic()
    local = profile.runner.native_binary()
    if not local:
        env = profile.runner.binary_env
        raise RuntimeMissing(
            f"{profile.name}: no litert_lm_main binary given",
            hint=(f"set {env}=PATH to an arm64 litert_lm_advanced_main" if env else "set runner.binary in the profile"),
        )
    if not os.path.isfile(local):
        raise RuntimeMissing(f"{profile.name}: {local}: no such file", hint="build litert_lm_advanced_main for the device")
    remote = posixpath.join(transport.expand(profile.work_dir), "bin", os.path.basename(local))
    pushed = transport.push(local, remote)
    transport.shell(["chmod", "755", remote], timeout=60)
    st = transport.stat(remote)
    if st is None or not (st.mode & 0o111):
        raise DeviceError(f"{profile.name}: {remote} is not executable after chmod (noexec mount?)")
    return SetupResult(profile.name, "native", "pushed" if pushed.sent else "already installed", binary=remote,
                       sha256=pushed.sha256, seconds=time.monotonic() - t0)


def setup_device(profile: DeviceProfile, transport: Transport, **kwargs) -> SetupResult:
    transport.makedirs(profile.work_dir)
    if profile.runner.kind == "python":
        return setup_python(profile, transport, **kwargs)
    return setup_native(profile, transport)
