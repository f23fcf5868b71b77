"""Calibration prompts for static int8 activations.

A calibration file is UTF-8 text: prompts separated by one or more blank lines (a prompt
may span several lines), lines starting with ``#`` are comments. The shipped set
(``edgekit/schemes/data/calibration.txt``) is a few dozen English paragraphs taken from
the *training* split of the offline corpus (``scripts/tiny_corpus.py``), never from the
held-out text used for evaluation; :func:`select_calibration_prompts` is the exact
procedure that produced it.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgekit.errors import ConfigError

DEFAULT_CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration.txt"
_BLANK = re.compile(r"\n[ \t]*\n")


def parse_calibration(text: str) -> list[str]:
    """Prompts of a calibration text (blank-line separated, ``#`` comment lines dropped)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = "\n".join("" if line.startswith("#") else line.rstrip() for line in text.split("\n"))
    return [block.strip("\n") for block in _BLANK.split(kept) if block.strip()]


def load_calibration(path: str | Path | None = None) -> list[str]:
    """The prompts of ``path`` (default: the shipped set); ConfigError when unusable."""
    p = Path(path) if path is not None else DEFAULT_CALIBRATION
    hint = "pass --calibration FILE: UTF-8 text, prompts separated by blank lines"
    if not p.exists():
        raise ConfigError(f"calibration file {p} does not exist", hint=hint)
    if p.is_dir():
        raise ConfigError(f"calibration file {p} is a folder", hint=hint)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"calibration file {p}: cannot read ({exc.strerror})", hint=hint) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"calibration file {p}: not UTF-8 (invalid byte at offset {exc.start})", hint=hint) from exc
    if "\x00" in text:
        raise ConfigError(f"calibration file {p}: contains NUL bytes (binary file?)", hint=hint)
    prompts = parse_calibration(text.lstrip("\ufeff"))
    if not prompts:
        raise ConfigError(f"calibration file {p} holds no prompts", hint=hint)
    return prompts


def select_calibration_prompts(train_text: str, heldout_text: str = "", n: int = 40) -> list[str]:
    """Deterministically pick ``n`` prose paragraphs of the training text, spread evenly.

    Paragraphs of 250-700 characters that read as English prose (no code, doctest or
    markup characters, start upper-case, end with a period) and do not occur in the
    held-out text.
    """
    paras = [p.strip() for p in _BLANK.split(train_text.replace("\r\n", "\n"))]

    def prose(p: str) -> bool:
        if not (250 <= len(p) <= 700):
            return False
        if any(line.lstrip().startswith((">>>", "...", "#", "-", "*", "|", "=", "+")) for line in p.splitlines()):
            return False
        if sum(c.isalpha() or c.isspace() for c in p) / len(p) < 0.93:
            return False
        if re.search(r"[{}\[\]<>_`=\\]", p):
            return False
        return p[0].isupper() and p.endswith(".") and p not in heldout_text

    candidates = [p for p in paras if prose(p)]
    step = max(1, len(candidates) // n)
    return ["\n".join(line.rstrip() for line in p.splitlines()) for p in candidates[::step][:n]]


def write_calibration_file(prompts: list[str], path: str | Path = DEFAULT_CALIBRATION,
                           header: str = "") -> Path:
    from edgekit.fsutil import atomic_write_text

    head = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return atomic_write_text(path, head + ("\n" if head else "") + "\n\n".join(prompts) + "\n")
