"""Writing TOML. Python reads TOML with the standard library's ``tomllib`` but has no writer;
this is the one writer edgekit and its scripts use (quantization schemes, the stand-ins'
device profiles). Standard library only: scripts/targets imports it without the venv.

``dumps(data, header)`` writes scalars and arrays first, then one ``[table]`` per dict
(nested as ``[a.b]``) and one ``[[name]]`` per element of a non-empty list of dicts,
in the order of ``data``. ``tomllib.loads(dumps(d)) == d`` for every value written.
"""

from __future__ import annotations

import json
from typing import Any

_BARE_KEY = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def toml_str(s: str) -> str:
    """A literal string ('...', regexes stay readable) when that is exact, else a basic string."""
    if "'" not in s and "\n" not in s and "\r" not in s and all(ord(c) >= 0x20 or c == "\t" for c in s) \
            and "\x7f" not in s:
        return "'" + s + "'"
    out = []
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_key(k: str) -> str:
    """A bare key when it is one, else a quoted key."""
    return k if k and set(k) <= _BARE_KEY else json.dumps(k)


def toml_value(v: Any) -> str:
    """One TOML value: bool, int, float, str, list/tuple (array), dict (inline table)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(data: dict[str, Any], header: str = "", _prefix: str = "") -> str:
    """TOML text of ``data``; ``header`` lines become ``# `` comments at the top."""
    out = [f"# {line}" for line in header.splitlines()]
    for k, v in data.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{toml_key(k)} = {toml_value(v)}")
    for k, v in data.items():
        name = f"{_prefix}{toml_key(k)}"
        if isinstance(v, dict):
            out += ["", f"[{name}]", dumps(v, _prefix=name + ".").rstrip("\n")]
        elif _is_table_array(v):
            for item in v:
                out += ["", f"[[{name}]]", dumps(item, _prefix=name + ".").rstrip("\n")]
    return "\n".join(out) + "\n"
