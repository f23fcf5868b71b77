"""Exit codes live in one table (edgekit/errors.py EXIT_CODES): README's codes are each
defined once there, every error kind and the CLI take their code from it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgekit import errors
from edgekit.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def readme_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$", section, flags=re.M)
    return {int(code): meaning for code, meaning in rows}


def literal_exit_constants() -> list[tuple[str, str, int]]:
    """Every `EXIT_* = <integer>` in edgekit/: (file, name, code)."""
    found = []
    for path in sorted((ROOT / "edgekit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                if isinstance(value, ast.Constant) and type(value.value) is int:
                    for t in targets:
                        if isinstance(t, ast.Name) and t.id.startswith("EXIT_"):
                            found.append((str(path.relative_to(ROOT)), t.id, value.value))
    return found


def test_readme_table_is_read():
    codes = readme_codes()
    assert {0, 1, 2, 10, 130} <= set(codes)
    assert len(codes) == 12


def test_every_readme_code_is_defined_once_in_the_errors_table():
    # edgekit/runtime/ runs on the device without the rest of edgekit (docs/contracts.md
    # "Layering"), so the runner keeps its own process codes; they must be codes of the table
    everywhere = literal_exit_constants()
    runtime = [(f, n, c) for f, n, c in everywhere if f.startswith("edgekit/runtime/")]
    assert runtime and all(c in errors.EXIT_CODES for _, _, c in runtime), runtime
    constants = [row for row in everywhere if row not in runtime]
    for code in readme_codes():
        defined = [(f, n) for f, n, c in constants if c == code]
        assert defined and len(defined) == 1, (code, defined)
        assert defined[0][0] == "edgekit/errors.py", (code, defined)
        assert code in errors.EXIT_CODES
    # the table holds README's codes and the internal-error code the CLI uses for a bug
    assert set(errors.EXIT_CODES) == set(readme_codes()) | {errors.EXIT_INTERNAL}
    assert len({c for _, _, c in constants}) == len(constants) == len(errors.EXIT_CODES)


def _kinds(cls=errors.EdgekitError):
    yield cls
    for sub in cls.__subclasses__():
        yield from _kinds(sub)


def test_every_error_kind_takes_its_code_from_the_table():
    kinds = list(_kinds())
    assert len(kinds) > 15
    for kind in kinds:
        assert kind.exit_code in errors.EXIT_CODES, kind
    tree = ast.parse((ROOT / "edgekit" / "errors.py").read_text(encoding="utf-8"))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert len(classes) == len(kinds)
    for cls in classes:
        for kw in cls.keywords:  # class StorageFull(DeviceError, exit_code=EXIT_..., kind=..., hint=...)
            if kw.arg == "exit_code":
                assert isinstance(kw.value, ast.Name) and kw.value.id in vars(errors), (cls.name, ast.dump(kw))
        for stmt in cls.body:
            value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
            targets = [getattr(t, "id", None) for t in getattr(stmt, "targets", [getattr(stmt, "target", None)])]
            if "exit_code" in targets:
                assert isinstance(value, ast.Name) and value.id in vars(errors), (cls.name, ast.dump(stmt))


def test_the_cli_main_has_no_literal_exit_code():
    tree = ast.parse((ROOT / "edgekit" / "cli" / "main.py").read_text(encoding="utf-8"))
    indices = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    literals = [(n.lineno, n.value) for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and type(n.value) is int and id(n) not in indices]
    assert literals == []


def test_the_help_lists_the_readme_codes():
    doc = cli_main.cli.help
    listed = {int(c) for c in re.findall(r"(\d+) [a-z]", doc.split("Exit codes:", 1)[1])}
    assert listed == set(readme_codes())


@pytest.mark.parametrize("raised, code", [
    (errors.InspectionFailed("x"), errors.EXIT_INSPECTION),
    (errors.TransportTimeout("x"), errors.EXIT_DEVICE),
    (RuntimeError("boom"), errors.EXIT_INTERNAL),
    (KeyboardInterrupt(), errors.EXIT_INTERRUPTED),
], ids=["inspection", "device", "internal", "interrupted"])
def test_main_maps_exceptions_to_the_tables_codes(monkeypatch, capsys, raised, code):
    def boom(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli_main.cli, "main", boom)
    assert cli_main.main(["devices"]) == code
    assert capsys.readouterr().err.startswith("error: ")


def test_usage_errors_and_success_keep_their_codes(capsys):
    assert cli_main.main(["--no-such-option"]) == errors.EXIT_USAGE == 2
    assert cli_main.main(["--help"]) == errors.EXIT_OK == 0
    assert errors.EXIT_INTERNAL == 70 and errors.EXIT_INTERRUPTED == 130
