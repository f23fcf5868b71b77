"""The CLI's surface: every command's --help text, the exit code of --help and of an unknown
option, and the exit-code table, compared with tests/fixtures/cli_surface.txt, so a refactor
can show the CLI unchanged.

When a change to the CLI is meant, regenerate the snapshot and review its diff:
    EDGEKIT_UPDATE_SNAPSHOT=1 .venv/bin/pytest -q tests/unit/test_cli_surface.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from edgekit.cli import main as cli_main
from edgekit.errors import EXIT_CODES

SNAPSHOT = Path(__file__).resolve().parents[1] / "fixtures" / "cli_surface.txt"
UPDATE_ENV = "EDGEKIT_UPDATE_SNAPSHOT"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def surface(capsys) -> str:
    parts = []
    for argv in [["--help"]] + [[name, "--help"] for name in cli_main.COMMANDS]:
        code, out, err = _run(argv, capsys)
        parts.append(f"=== edgekit {' '.join(argv)} (exit {code})\n{out}{err}")
    for name in cli_main.COMMANDS:
        code, _, err = _run([name, "--no-such-option"], capsys)
        parts.append(f"=== edgekit {name} --no-such-option (exit {code})\n{err}")
    table = "".join(f"{code}\t{meaning}\n" for code, meaning in EXIT_CODES.items())
    parts.append(f"=== exit codes (edgekit.errors.EXIT_CODES)\n{table}")
    return "\n".join(parts)


@pytest.fixture
def fixed_width(monkeypatch):
    # click wraps help to the terminal's width; fix it so the text does not depend on the terminal
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)


def test_cli_surface_matches_snapshot(fixed_width, capsys):
    now = surface(capsys)
    if os.environ.get(UPDATE_ENV, "") not in ("", "0"):
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(now, encoding="utf-8")
    assert SNAPSHOT.is_file(), f"no snapshot; generate it with {UPDATE_ENV}=1"
    before = SNAPSHOT.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(before.splitlines(True), now.splitlines(True),
                                        "tests/fixtures/cli_surface.txt", "now"))
    assert now == before, (f"the CLI's surface changed; if that is meant, rerun with {UPDATE_ENV}=1 "
                           f"and commit the snapshot\n{diff}")


def test_snapshot_covers_every_command_and_code():
    text = SNAPSHOT.read_text(encoding="utf-8")
    for name in cli_main.COMMANDS:
        assert f"=== edgekit {name} --help (exit 0)\n" in text
        assert f"=== edgekit {name} --no-such-option (exit 2)\n" in text
    for code in EXIT_CODES:
        assert f"\n{code}\t" in text
