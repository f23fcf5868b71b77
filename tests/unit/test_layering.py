"""The import layering of edgekit/ and scripts/ (docs/contracts.md "Layering"), checked by
scripts/check_layering.py: no upward import, the runtime's short list, click only in the CLI,
no import cycle on the module-level graph. The checker is also run on copies of the tree with
a violation written in, so a clean result cannot come from a checker that reads nothing."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_layering", ROOT / "scripts" / "check_layering.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


L = _load_checker()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of every module the checker reads (edgekit/ and scripts/), nothing else."""
    for path in L.module_files(ROOT).values():
        dest = tmp_path / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    return tmp_path


def _append(path: Path, text: str) -> int:
    """Appends text to a module; returns the line number of its first line."""
    old = path.read_text(encoding="utf-8")
    if not old.endswith("\n"):
        old += "\n"
    path.write_text(old + text, encoding="utf-8")
    return old.count("\n") + 1


def test_tree_has_no_upward_import_no_cycle_and_click_only_in_cli():
    report = L.check(ROOT)
    assert report.ok, L.format_report(report, ROOT)


def test_checker_reads_every_module_and_resolves_both_import_styles():
    report = L.check(ROOT)
    on_disk = {p for p in (ROOT / "edgekit").rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk <= set(report.modules.values())
    for name in ("edgekit.cli.main", "edgekit.runtime.runner", "scripts.bench.fidelity", "scripts.targets",
                 "scripts.targetlib.stand"):
        assert name in report.modules
    edges = {(i.importer, i.resolved) for i in report.imports}
    assert ("edgekit.cli.main", "edgekit.errors") in edges                 # absolute, from-import
    assert ("scripts.bench.fidelity", "scripts.bench._common") in edges    # a script's bare import
    assert ("scripts.targetlib.stand", "scripts.targetlib.common") in edges  # relative import
    assert ("scripts.targets", "scripts.targetlib.stand") in edges        # a Python file without .py
    assert any(i.deferred for i in report.imports if i.importer == "scripts.targetlib.stand")


def test_floors_are_the_contracts_floors():
    text = (ROOT / "docs" / "contracts.md").read_text(encoding="utf-8")
    section = text.split("## Layering", 1)[1].split("\n## ", 1)[0]
    table = section.split("\n", 1)[1].split("`edgekit/runtime/` uses only", 1)[0]
    documented: dict[str, int] = {}
    for chunk in table.split("·"):
        match = re.match(r"\s*(\d+)\s", chunk)
        assert match, chunk
        for path in re.findall(r"`(edgekit/[^`]+)`", chunk):
            documented[path.rstrip("/").removesuffix(".py").replace("/", ".")] = int(match.group(1))
    assert len(documented) == 14
    checked = {room: floor for room, floor in L.FLOORS.items()
               if room.startswith("edgekit.") and room not in ("edgekit.__main__", "edgekit.data")}
    assert checked == documented


@pytest.mark.parametrize("in_function", [False, True], ids=["module-level", "in-a-function"])
def test_an_injected_upward_import_is_caught(tree: Path, in_function: bool):
    assert L.check(tree).ok
    text = "def _later():\n    import edgekit.builder.pipeline\n" if in_function else "import edgekit.builder.pipeline\n"
    line = _append(tree / "edgekit" / "errors.py", text) + (1 if in_function else 0)
    report = L.check(tree)
    assert not report.ok
    assert [v for v in report.violations if f"edgekit/errors.py:{line}: upward import" in v
            and "edgekit.builder.pipeline (floor 5)" in v], report.violations
    assert L.main(["--root", str(tree)]) == 1


def test_an_injected_cycle_in_edgekit_is_caught(tree: Path):
    report = L.check(tree)
    # an existing module-level import inside one room: importing back the other way is no
    # upward import, so only the cycle rule can catch it
    a, b = next((i.importer, i.resolved) for i in report.imports
                if i.resolved and i.importer.startswith("edgekit.") and not i.deferred and not i.type_only
                and i.resolved != i.importer and L.room_of(i.importer) == L.room_of(i.resolved)
                and report.modules[i.resolved].name != "__init__.py" and L.room_of(i.importer) != "edgekit")
    _append(report.modules[b], f"import {a}\n")
    after = L.check(tree)
    assert not after.violations
    assert any({a, b} <= set(c) for c in after.cycles), (a, b, after.cycles)
    assert not after.ok
    assert "cycle: " in L.format_report(after, tree)


def test_an_injected_cycle_in_scripts_is_caught(tree: Path):
    bench = tree / "scripts" / "bench"
    (bench / "zz_one.py").write_text("import zz_two\n")
    (bench / "zz_two.py").write_text("from zz_one import thing\n")
    report = L.check(tree)
    assert ["scripts.bench.zz_one", "scripts.bench.zz_two"] in report.cycles
    assert not report.ok


def test_a_cycle_closed_inside_a_function_is_listed_not_failed(tree: Path):
    bench = tree / "scripts" / "bench"
    (bench / "zz_one.py").write_text("import zz_two\n")
    (bench / "zz_two.py").write_text("def later():\n    import zz_one\n")
    report = L.check(tree)
    assert report.ok
    assert ["scripts.bench.zz_one", "scripts.bench.zz_two"] in report.deferred_cycles
    assert "deferred cycle" in L.format_report(report, tree, verbose=True)


def test_click_outside_the_cli_is_caught(tree: Path):
    line = _append(tree / "edgekit" / "report" / "html.py", "import click\n")
    report = L.check(tree)
    assert any(v.startswith(f"edgekit/report/html.py:{line}: click imported outside") for v in report.violations)


@pytest.mark.parametrize("statement", ["from edgekit.errors import EdgekitError", "import torch"])
def test_the_runtime_importing_beyond_its_list_is_caught(tree: Path, statement: str):
    line = _append(tree / "edgekit" / "runtime" / "signatures.py", statement + "\n")
    report = L.check(tree)
    assert [v for v in report.violations if v.startswith(f"edgekit/runtime/signatures.py:{line}:")
            and "the runtime uses only" in v], report.violations


def test_a_module_outside_every_floor_is_caught(tree: Path):
    (tree / "edgekit" / "newroom.py").write_text('"""no floor yet"""\n')
    report = L.check(tree)
    assert any("edgekit.newroom has no floor" in v for v in report.violations)


def test_type_checking_imports_count_for_direction_not_for_cycles(tree: Path):
    bench = tree / "scripts" / "bench"
    (bench / "zz_one.py").write_text("import zz_two\n")
    (bench / "zz_two.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import zz_one\n")
    line = _append(tree / "edgekit" / "fsutil.py",
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgekit.bundle.manifest import x\n")
    report = L.check(tree)
    assert report.cycles == []
    assert [v for v in report.violations if v.startswith(f"edgekit/fsutil.py:{line + 2}: upward import")
            and v.endswith("(type checking only)")], report.violations
