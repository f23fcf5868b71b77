"""Device profiles pointing at the stand-ins (schema: docs/contracts.md).

A stand-in profile starts from the shipped profile of the device it imitates
(``device_profiles/rpi5.toml`` / ``pixel8.toml``, when present) so gates, CPU
and sampling settings match, then replaces how the device is reached, its work
folder and how the runner is started.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from .common import REPO, atomic_write

RPI5_NAME = "rpi5-standin"
PIXEL8_NAME = "pixel8-standin"
COMPAT_BINARY = REPO / "scripts" / "litert_lm_main_compat"

_DEFAULTS: dict[str, Any] = {
    "cpu": {"threads": 4, "affinity": ""},
    "sampling": {"interval_ms": 50},
    "timeouts": {"connect_s": 10, "command_s": 900},
    "gate": {"fail_on": ["decode_tps:-5%", "peak_anon_mb:+10%"], "budget": []},
}


def _base(name: str) -> dict[str, Any]:
    path = REPO / "device_profiles" / f"{name}.toml"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    merged: dict[str, Any] = {k: dict(v) for k, v in _DEFAULTS.items()}
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a valid TOML basic string (\" \\ \n \uXXXX escapes)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps_toml(data: dict[str, Any], header: str = "", _prefix: str = "") -> str:
    """Scalars first, then one [table] per dict (nested tables as [a.b])."""
    out = [f"# {line}" for line in header.splitlines()]
    for k, v in data.items():
        if not isinstance(v, dict):
            out.append(f"{_key(k)} = {_toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{_prefix}{_key(k)}"
            out.append("")
            out.append(f"[{name}]")
            body = dumps_toml(v, _prefix=name + ".")
            out.append(body.rstrip("\n"))
    return "\n".join(line for line in out) + "\n"


def _host_cpu(p: dict[str, Any]) -> None:
    """The stand-ins run on this machine: keep threads and affinity within its CPUs."""
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpu = dict(p.get("cpu", {}))
    cpu["threads"] = max(1, min(int(cpu.get("threads", ncpu) or ncpu), ncpu))
    if cpu.get("affinity"):
        cpu["affinity"] = format((1 << ncpu) - 1, "x")
    p["cpu"] = cpu


def _drop(data: dict[str, Any], *keys: str) -> None:
    for k in keys:
        data.pop(k, None)


def rpi5_profile(ssh: dict[str, Any], python: str) -> dict[str, Any]:
    p = _base("rpi5")
    p["name"] = RPI5_NAME
    p["description"] = f"Raspberry Pi 5 stand-in: local OpenSSH server on 127.0.0.1:{ssh['port']} (scripts/targets)"
    p["transport"] = "ssh"
    p["work_dir"] = ssh["work_dir"]
    _drop(p, "match")
    p["ssh"] = {"host": ssh["host"], "port": ssh["port"], "user": ssh["user"],
                "key": ssh["key"], "known_hosts": ssh["known_hosts"]}
    runner = dict(p.get("runner", {}))
    runner.update({"kind": "python", "python": python})
    runner.setdefault("backend", "auto")
    for k in ("binary", "binary_env"):
        runner.pop(k, None)
    p["runner"] = runner
    _host_cpu(p)
    return _ordered(p)


def pixel8_profile(adb: dict[str, Any]) -> dict[str, Any]:
    p = _base("pixel8")
    p["name"] = PIXEL8_NAME
    p["description"] = (f"Pixel 8 stand-in: adb device emulator on 127.0.0.1:{adb['port']} "
                        "behind the real adb server (scripts/targets)")
    p["transport"] = "adb"
    p["work_dir"] = "/data/local/tmp/edgekit"
    _drop(p, "ssh")
    p["match"] = {"serial": adb["serial"], "model": "Pixel 8"}
    runner = dict(p.get("runner", {}))
    runner.update({"kind": "native", "binary": str(COMPAT_BINARY)})
    runner.setdefault("binary_env", "EDGEKIT_LITERT_LM_MAIN")
    runner.setdefault("args", ["--backend=cpu"])
    for k in ("python", "backend"):
        runner.pop(k, None)
    p["runner"] = runner
    _host_cpu(p)
    return _ordered(p)


_ORDER = ["name", "description", "transport", "work_dir", "match", "ssh", "runner",
          "cpu", "sampling", "timeouts", "gate"]


def _ordered(p: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in _ORDER if k in p] + [k for k in p if k not in _ORDER]
    return {k: p[k] for k in keys}


def write_profile(folder: Path, profile: dict[str, Any]) -> Path:
    path = folder / f"{profile['name']}.toml"
    header = "Generated by `scripts/targets up`; rewritten on every `up`. Do not edit."
    atomic_write(path, dumps_toml(profile, header))
    return path
