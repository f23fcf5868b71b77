#!/usr/bin/env python3
"""Checks the import layering of edgekit/ and scripts/ (docs/contracts.md "Layering").

Reads every module with ``ast``; nothing is imported or run. Four rules fail the check:

- upward import: a module imports one on a higher floor (``FLOORS``; scripts/ stands
  above every floor of edgekit/). Imports inside functions and under ``if TYPE_CHECKING:``
  count too: they are dependencies in the same direction, only later.
- runtime: ``edgekit/runtime/`` is run on a device that has only the runtime's packages, so it
  imports only the standard library, numpy, ai_edge_litert, litert_lm and edgekit.runtime.
  flatbuffers counts as part of ai_edge_litert (it is a requirement of ai-edge-litert, and
  docs/contracts.md names it for ``read_header``). ``edgekit/__init__.py`` is held to the same
  rule, since importing ``edgekit.runtime`` runs it; so importing ``edgekit`` itself adds nothing.
- click outside ``edgekit/cli/``.
- import cycle among the modules of edgekit/ and scripts/, on the module-level graph: the
  imports that run while a module is being loaded (module body, including ``if``/``try``
  blocks and class bodies). An import inside a function runs when the function is called,
  after both modules finished loading, so it cannot meet a half-initialised module; such
  imports, and those under ``if TYPE_CHECKING:`` (never run), are left out of the cycle graph
  (and checked for direction only). Cycles they would close are listed as ``deferred``
  information (``--verbose``), not failures. A submodule import does not add
  an edge to its parent packages (a package's ``__init__`` importing its own submodules is
  not a cycle).

Module names: edgekit modules by their dotted name, scripts by their path from the
repository (``scripts/bench/fidelity.py`` is ``scripts.bench.fidelity``; ``scripts/targets``,
a Python file without a suffix, is ``scripts.targets``). A script's bare import (``import
_common``) is looked up beside the script and then in its parent folders up to scripts/,
as the scripts put their own folder on ``sys.path``. Imports inside string literals (code
handed to a subprocess) are not imports of the module and are not read.

Usage: ``scripts/check_layering.py [--root DIR] [--verbose]``; exit 0 clean, 1 violations.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

# docs/contracts.md "Layering": a module imports only from floors below (or its own room).
FLOORS: dict[str, int] = {
    "edgekit.cli": 6,
    "edgekit.__main__": 6,
    "edgekit.builder": 5,
    "edgekit.bundle": 4,
    "edgekit.schemes": 3,
    "edgekit.bench": 3,
    "edgekit.report": 3,
    "edgekit.results": 2,
    "edgekit.devices": 2,
    "edgekit.models": 2,
    "edgekit.quality": 2,
    "edgekit.runtime": 1,
    "edgekit.errors": 1,
    "edgekit.fsutil": 1,
    "edgekit.tomlio": 1,
    # not in the contract's table: data files only, and the package's own __init__ (a version)
    "edgekit.data": 1,
    "edgekit": 0,
    "scripts": 7,
}
RUNTIME_ROOMS = ("edgekit.runtime",)
# flatbuffers: installed with ai-edge-litert (one of its requirements)
RUNTIME_THIRD_PARTY = frozenset({"numpy", "ai_edge_litert", "litert_lm", "flatbuffers"})
CLI_ROOM = "edgekit.cli"


@dataclass(frozen=True)
class Import:
    importer: str          # dotted module name of the importing module
    path: str              # its file, relative to the root
    line: int
    target: str            # the imported name, relative imports made absolute
    resolved: str | None   # the module of the tree it loads, or None (outside the tree)
    deferred: bool         # inside a function: runs when called, not when loaded
    type_only: bool        # under `if TYPE_CHECKING:`

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Report:
    modules: dict[str, Path]
    imports: list[Import]
    violations: list[str]
    cycles: list[list[str]]           # module-level cycles (failures)
    deferred_cycles: list[list[str]]  # closed only by function-level / TYPE_CHECKING imports (information)
    sideways: list[Import]            # same floor, another room (information)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.cycles


def _is_python_script(path: Path) -> bool:
    if path.suffix == ".py":
        return True
    if path.suffix or not path.is_file():
        return False
    try:
        with path.open("rb") as fh:
            first = fh.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def module_files(root: Path) -> dict[str, Path]:
    """Every module of edgekit/ and scripts/ by dotted name (packages by their own name)."""
    found: dict[str, Path] = {}
    for top in ("edgekit", "scripts"):
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            if not _is_python_script(path):
                continue
            parts = list(rel.with_suffix("").parts) if path.suffix == ".py" else list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """Import statements with their context (function depth, TYPE_CHECKING block)."""

    def __init__(self) -> None:
        self.found: list[tuple[int, int, str | None, list[str], bool, bool]] = []
        self._depth = 0
        self._type_only = 0

    def _enter_function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = _enter_function
    visit_AsyncFunctionDef = _enter_function
    visit_Lambda = _enter_function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._type_only += 1
        for child in node.body:
            self.visit(child)
        self._type_only -= 1
        for child in node.orelse:
            self.visit(child)

    def _add(self, line: int, level: int, module: str | None, names: list[str]) -> None:
        self.found.append((line, level, module, names, self._depth > 0, self._type_only > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, 0, alias.name, [])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._add(node.lineno, node.level, node.module, [a.name for a in node.names])


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(name: str, importer: str, importer_path: Path, modules: dict[str, Path]) -> str | None:
    """The module of the tree that `import name` loads from `importer`, or None."""
    if name in modules:
        return name
    if importer.startswith("scripts"):
        # a script's own folder is on sys.path, then (for a package under scripts/) its parents
        folder = _package_of(importer, importer_path) if importer_path.name == "__init__.py" \
            else importer.rpartition(".")[0]
        while folder:
            candidate = f"{folder}.{name}"
            if candidate in modules:
                return candidate
            if folder == "scripts":
                break
            folder = folder.rpartition(".")[0]
    return None


def collect_imports(root: Path, modules: dict[str, Path]) -> tuple[list[Import], list[str]]:
    imports: list[Import] = []
    errors: list[str] = []
    for name, path in modules.items():
        rel = str(path.relative_to(root))
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        except (SyntaxError, UnicodeDecodeError) as exc:
            errors.append(f"{rel}: cannot be parsed ({exc})")
            continue
        collector = _Collector()
        collector.visit(tree)
        for line, level, module, names, deferred, type_only in collector.found:
            if level:
                package = _package_of(name, path)
                for _ in range(level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{module}" if module else package
            else:
                base = module or ""
            targets = [base] if not names else [f"{base}.{n}" for n in names if n != "*"] or [base]
            for target in targets:
                resolved = _resolve(target, name, path, modules)
                if resolved is None and names:
                    # `from pkg import attr`: attr is not a module, pkg is what is loaded
                    target = base
                    resolved = _resolve(base, name, path, modules)
                imports.append(Import(name, rel, line, target, resolved, deferred, type_only))
    # one row per (importer, line, target)
    return sorted(set(imports), key=lambda i: (i.path, i.line, i.target)), errors


def _in_room(module: str, room: str) -> bool:
    # the package itself holds only its own __init__; every other module has a room of its own
    return module == room or (room != "edgekit" and module.startswith(room + "."))


def floor_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for room, floor in FLOORS.items():
        if _in_room(module, room):
            if best is None or len(room) > best[0]:
                best = (len(room), floor)
    return None if best is None else best[1]


def room_of(module: str) -> str:
    best = ""
    for room in FLOORS:
        if _in_room(module, room) and len(room) > len(best):
            best = room
    return best


def _in(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of two or more modules, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def _graph(imports: list[Import], *, module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.resolved is None or imp.resolved == imp.importer:
            continue
        if module_level_only and (imp.deferred or imp.type_only):
            continue
        graph.setdefault(imp.importer, set()).add(imp.resolved)
    return graph


def _cycle_edges(component: list[str], imports: list[Import], *, module_level_only: bool) -> list[str]:
    members = set(component)
    rows = []
    for imp in imports:
        if imp.importer in members and imp.resolved in members and imp.resolved != imp.importer:
            if module_level_only and (imp.deferred or imp.type_only):
                continue
            kind = " (in a function)" if imp.deferred else ""
            rows.append(f"{imp.where} {imp.importer} -> {imp.resolved}{kind}")
    return rows


def check(root: Path) -> Report:
    root = Path(root)
    modules = module_files(root)
    imports, violations = collect_imports(root, modules)
    sideways: list[Import] = []
    for name, path in modules.items():
        if floor_of(name) is None:
            violations.append(f"{path.relative_to(root)}: module {name} has no floor "
                              f"(give its room one in docs/contracts.md and FLOORS)")
    for imp in imports:
        src_floor = floor_of(imp.importer)
        target = imp.resolved or imp.target
        top = target.split(".")[0]
        when = " (in a function)" if imp.deferred else " (type checking only)" if imp.type_only else ""
        if top == "click" and not _in(imp.importer, CLI_ROOM):
            violations.append(f"{imp.where}: click imported outside edgekit/cli/ by {imp.importer}{when}")
        if any(_in(imp.importer, room) for room in RUNTIME_ROOMS) or imp.importer == "edgekit":
            allowed = (top in sys.stdlib_module_names or top in RUNTIME_THIRD_PARTY
                       or target == "edgekit" or any(_in(target, room) for room in RUNTIME_ROOMS))
            if not allowed:
                violations.append(f"{imp.where}: {imp.importer} imports {target}{when}; the runtime uses only the "
                                  f"standard library, numpy, ai_edge_litert, litert_lm and edgekit.runtime")
        if top not in ("edgekit", "scripts") or src_floor is None:
            continue
        dst_floor = floor_of(target)
        if dst_floor is None:
            continue
        if dst_floor > src_floor:
            violations.append(f"{imp.where}: upward import {imp.importer} (floor {src_floor}) -> "
                              f"{target} (floor {dst_floor}){when}")
        elif dst_floor == src_floor and room_of(target) != room_of(imp.importer) and top == "edgekit":
            sideways.append(imp)
    full = _strongly_connected(_graph(imports, module_level_only=False))
    cycles = _strongly_connected(_graph(imports, module_level_only=True))
    cycle_sets = [set(c) for c in cycles]
    deferred = [c for c in full if not any(set(c) <= s for s in cycle_sets)]
    return Report(modules, imports, violations, cycles, deferred, sideways)


def format_report(report: Report, root: Path, *, verbose: bool = False) -> str:
    lines = [f"{len(report.modules)} modules, {len(report.imports)} imports read"]
    lines += [f"violation: {v}" for v in report.violations]
    for component in report.cycles:
        lines.append(f"cycle: {' <-> '.join(component)}")
        lines += [f"  {row}" for row in _cycle_edges(component, report.imports, module_level_only=True)]
    if verbose:
        for component in report.deferred_cycles:
            lines.append(f"deferred cycle (closed only by imports inside functions or under TYPE_CHECKING): "
                         f"{' <-> '.join(component)}")
            lines += [f"  {row}" for row in _cycle_edges(component, report.imports, module_level_only=False)]
        for imp in report.sideways:
            lines.append(f"sideways (same floor, another room): {imp.where} {imp.importer} -> "
                         f"{imp.resolved or imp.target}")
    lines.append("layering: ok" if report.ok else
                 f"layering: {len(report.violations)} violation(s), {len(report.cycles)} cycle(s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root (holds edgekit/ and scripts/)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also list deferred cycles and same-floor imports between rooms")
    args = parser.parse_args(argv)
    report = check(args.root)
    print(format_report(report, args.root, verbose=args.verbose))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
