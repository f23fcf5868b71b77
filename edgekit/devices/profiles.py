"""Device profiles: one TOML file per device, validated into a frozen dataclass.

Shipped profiles live in ``device_profiles/`` at the top of the source tree; users add
folders of their own with ``EDGEKIT_PROFILES`` (``os.pathsep``-separated). A user
profile with the same name as a shipped one overrides it; among user folders the
first one listed wins.

Every validation error names the file and the key (``pixel8.toml: cpu.threads: ...``)
and is a :class:`~edgekit.errors.ConfigError` (exit code 5).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError, UsageError

PROFILES_ENV = "EDGEKIT_PROFILES"
SHIPPED_DIR = Path(__file__).resolve().parent.parent.parent / "device_profiles"

TRANSPORTS = ("adb", "ssh", "local")
RUNNER_KINDS = ("native", "python")
BACKENDS = ("auto", "litert_lm", "interpreter")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# "decode_tps:-5%", "peak_anon_mb:+10%", "ttft_ms:+50"  (metric:signed change[%])
_FAIL_ON_RE = re.compile(r"^[a-z][a-z0-9_]*:[+-]\d+(\.\d+)?%?$")
# "peak_anon_mb<=1500"
_BUDGET_RE = re.compile(r"^[a-z][a-z0-9_]*(<=|>=|<|>)\d+(\.\d+)?$")


@dataclass(frozen=True)
class MatchSpec:
    serial: str = ""
    model: str = ""


@dataclass(frozen=True)
class SshSpec:
    host: str = ""
    port: int = 22
    user: str = ""
    key: str = ""
    known_hosts: str = "~/.ssh/known_hosts"


@dataclass(frozen=True)
class RunnerSpec:
    kind: str = "python"
    binary: str = ""
    binary_env: str = ""
    args: tuple[str, ...] = ()
    python: str = ""
    backend: str = "auto"

    def native_binary(self) -> str:
        """Local path of the native benchmark binary: ``binary``, else ``$binary_env``."""
        if self.binary:
            return os.path.expanduser(self.binary)
        if self.binary_env:
            return os.environ.get(self.binary_env, "")
        return ""


@dataclass(frozen=True)
class CpuSpec:
    threads: int = 4
    affinity: str = ""


@dataclass(frozen=True)
class SamplingSpec:
    interval_ms: int = 50


@dataclass(frozen=True)
class TimeoutSpec:
    connect_s: float = 10.0
    command_s: float = 900.0


@dataclass(frozen=True)
class GateSpec:
    fail_on: tuple[str, ...] = ()
    budget: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    transport: str
    work_dir: str
    match: MatchSpec = field(default_factory=MatchSpec)
    ssh: SshSpec = field(default_factory=SshSpec)
    runner: RunnerSpec = field(default_factory=RunnerSpec)
    cpu: CpuSpec = field(default_factory=CpuSpec)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    timeouts: TimeoutSpec = field(default_factory=TimeoutSpec)
    gate: GateSpec = field(default_factory=GateSpec)
    source: str = ""  # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        for sec in ("runner", "gate"):
            for k, v in d[sec].items():
                if isinstance(v, tuple):
                    d[sec][k] = list(v)
        return d


# --- schema -----------------------------------------------------------------------

# section -> key -> (type(s), validator or None)
_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_LIST_STR = (list,)

_TOP: dict[str, tuple] = {
    "name": _STR,
    "description": _STR,
    "transport": _STR,
    "work_dir": _STR,
}
_SECTIONS: dict[str, dict[str, tuple]] = {
    "match": {"serial": _STR, "model": _STR},
    "ssh": {"host": _STR, "port": _INT, "user": _STR, "key": _STR, "known_hosts": _STR},
    "runner": {
        "kind": _STR,
        "binary": _STR,
        "binary_env": _STR,
        "args": _LIST_STR,
        "python": _STR,
        "backend": _STR,
    },
    "cpu": {"threads": _INT, "affinity": _STR},
    "sampling": {"interval_ms": _INT},
    "timeouts": {"connect_s": _NUM, "command_s": _NUM},
    "gate": {"fail_on": _LIST_STR, "budget": _LIST_STR},
}
_SECTION_CLS = {
    "match": MatchSpec,
    "ssh": SshSpec,
    "runner": RunnerSpec,
    "cpu": CpuSpec,
    "sampling": SamplingSpec,
    "timeouts": TimeoutSpec,
    "gate": GateSpec,
}
_TYPE_NAMES = {_STR: "a string", _INT: "an integer", _NUM: "a number", _LIST_STR: "a list of strings"}


def _bad(path: Path, key: str, what: str) -> ConfigError:
    return ConfigError(
        f"{path}: {key}: {what}",
        hint="fix the device profile (see docs/contracts.md, 'Device profile TOML')",
    )


def _check_type(path: Path, key: str, value: Any, types: tuple) -> Any:
    ok = isinstance(value, types) and not isinstance(value, bool)
    if ok and types is _LIST_STR:
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise _bad(path, key, f"must be {_TYPE_NAMES[types]}, got {type(value).__name__} {value!r}")
    if types is _LIST_STR:
        return tuple(value)
    if types is _NUM:
        return float(value)
    return value


def parse_profile(data: dict[str, Any], path: Path) -> DeviceProfile:
    """Validate a decoded TOML document into a :class:`DeviceProfile`."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in _TOP:
            top[key] = _check_type(path, key, value, _TOP[key])
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise _bad(path, key, "must be a table ([" + key + "])")
            sec: dict[str, Any] = {}
            for k, v in value.items():
                if k not in _SECTIONS[key]:
                    allowed = ", ".join(_SECTIONS[key])
                    raise _bad(path, f"{key}.{k}", f"unknown key (allowed: {allowed})")
                sec[k] = _check_type(path, f"{key}.{k}", v, _SECTIONS[key][k])
            sections[key] = sec
        else:
            allowed = ", ".join(list(_TOP) + [f"[{s}]" for s in _SECTIONS])
            raise _bad(path, key, f"unknown key (allowed: {allowed})")

    for req in ("name", "transport", "work_dir"):
        if req not in top:
            raise _bad(path, req, "missing (required)")
    name = top["name"]
    if name != path.stem:
        raise _bad(path, "name", f"{name!r} must equal the file name {path.stem!r}")
    if not _NAME_RE.match(name):
        raise _bad(path, "name", f"{name!r}: use letters, digits, '-', '_', '.'")
    if top["transport"] not in TRANSPORTS:
        raise _bad(path, "transport", f"{top['transport']!r} is not one of {', '.join(TRANSPORTS)}")
    if not top["work_dir"].strip():
        raise _bad(path, "work_dir", "must not be empty")

    runner = sections.get("runner", {})
    if runner.get("kind", RunnerSpec.kind) not in RUNNER_KINDS:
        raise _bad(path, "runner.kind", f"{runner['kind']!r} is not one of {', '.join(RUNNER_KINDS)}")
    if runner.get("backend", RunnerSpec.backend) not in BACKENDS:
        raise _bad(path, "runner.backend", f"{runner['backend']!r} is not one of {', '.join(BACKENDS)}")
    if runner.get("kind", RunnerSpec.kind) == "native" and not (runner.get("binary") or runner.get("binary_env")):
        raise _bad(path, "runner.binary", "a native runner needs runner.binary or runner.binary_env")
    if top["transport"] == "ssh":
        ssh = sections.get("ssh", {})
        if not ssh.get("host"):
            raise _bad(path, "ssh.host", "missing (required for transport = \"ssh\")")
        port = ssh.get("port", 22)
        if not 0 < port < 65536:
            raise _bad(path, "ssh.port", f"{port} is not a TCP port")
    cpu = sections.get("cpu", {})
    if cpu.get("threads", 1) < 1:
        raise _bad(path, "cpu.threads", "must be >= 1")
    aff = cpu.get("affinity", "")
    if aff and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", aff):
        raise _bad(path, "cpu.affinity", f"{aff!r} is not a hex CPU mask (e.g. \"f0\")")
    if sections.get("sampling", {}).get("interval_ms", 50) < 1:
        raise _bad(path, "sampling.interval_ms", "must be >= 1")
    for k in ("connect_s", "command_s"):
        v = sections.get("timeouts", {}).get(k)
        if v is not None and v <= 0:
            raise _bad(path, f"timeouts.{k}", "must be > 0")
    gate = sections.get("gate", {})
    for i, rule in enumerate(gate.get("fail_on", ())):
        if not _FAIL_ON_RE.match(rule.replace(" ", "")):
            raise _bad(path, f"gate.fail_on[{i}]", f"{rule!r}: expected METRIC:+N% or METRIC:-N%")
    for i, rule in enumerate(gate.get("budget", ())):
        if not _BUDGET_RE.match(rule.replace(" ", "")):
            raise _bad(path, f"gate.budget[{i}]", f"{rule!r}: expected METRIC<=N (or >=, <, >)")

    kwargs: dict[str, Any] = dict(
        name=name,
        description=top.get("description", ""),
        transport=top["transport"],
        work_dir=top["work_dir"],
        source=str(path),
    )
    for sec_name, cls in _SECTION_CLS.items():
        kwargs[sec_name] = cls(**sections.get(sec_name, {}))
    return DeviceProfile(**kwargs)


def read_profile(path: str | os.PathLike) -> DeviceProfile:
    """Read and validate one profile file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="fix the TOML syntax") from exc
    return parse_profile(data, path)


def profile_dirs() -> list[Path]:
    """Folders searched, highest precedence first: $EDGEKIT_PROFILES entries, then shipped."""
    dirs: list[Path] = []
    for entry in os.environ.get(PROFILES_ENV, "").split(os.pathsep):
        if entry.strip():
            dirs.append(Path(entry).expanduser())
    dirs.append(SHIPPED_DIR)
    return dirs


def _profile_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for d in profile_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.toml")):
            files.setdefault(p.stem, p)  # first folder wins
    return files


def list_profiles() -> list[str]:
    """Names of every known profile (shipped and user), sorted."""
    return sorted(_profile_files())


def load_profile(name: str) -> DeviceProfile:
    """Load a profile by name (or by path to a ``.toml`` file)."""
    if name.endswith(".toml") or os.sep in name:
        return read_profile(name)
    files = _profile_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise UsageError(
            f"unknown device {name!r} (known: {known})",
            hint=f"add {name}.toml to a folder listed in ${PROFILES_ENV}, or pick a known device",
        )
    return read_profile(files[name])


def load_all(strict: bool = False) -> list[tuple[str, DeviceProfile | None, ConfigError | None]]:
    """Every profile as (name, profile or None, error or None); raise on the first error if strict."""
    out = []
    for name, path in sorted(_profile_files().items()):
        try:
            out.append((name, read_profile(path), None))
        except ConfigError as exc:
            if strict:
                raise
            out.append((name, None, exc))
    return out
