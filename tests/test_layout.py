"""The package's floors (STYLE.md, Layout): model at the bottom, the CLI at the top, no import cycle.

Each room of `sparsecut_core` (a subpackage, or the one top-level module `files.py`)
may import only the rooms listed for it below; a new room must be placed here first.
The package's `__init__.py` (the public API) may import any room; nothing in the core
imports the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room -> the rooms it may import (its own modules always)
ALLOWED = {
    "files": set(),
    "model": set(),
    "data": {"model"},
    "sources": set(),
    "inference": {"files", "model", "data"},
    "training": {"files", "model", "data", "inference"},
    "presets": {"model", "data", "sources", "inference", "training"},
    "evaluation": {"files", "model", "data"},
    "cost": {"model", "data", "presets"},
    "serving": {"files", "model", "data", "inference"},
    "sweep": {"files", "model", "data", "inference", "presets", "training", "evaluation"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path, package: str) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module of the project, line, at module level?) for every import in the file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import module` imports the module; `from module import name` the module itself
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a package: its deepest module we know
                target = target.rpartition(".")[0]
            if target:
                found.append((target, node.lineno, id(node) in top_level))
    return found


def room(module: str) -> str | None:
    """The room of a sparsecut_core module (None: the package's public face)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, list[tuple[str, int, bool]]]:
    modules = {name: path for package in packages for name, path in package_modules(root, package).items()}
    return {name: imports(path, name, modules) for name, path in modules.items()}


def upward_imports(graph, core: str = "sparsecut_core") -> list[str]:
    """Every import from a core room into a room it may not import, as 'importer:line -> imported'."""
    wrong = []
    for module, found in graph.items():
        if not module.startswith(core + "."):
            continue
        here = room(module)
        for target, line, _ in found:
            if not target.startswith(core):
                wrong.append(f"{module}:{line} -> {target} (the core imports the CLI)")
                continue
            there = room(target)
            if there == here:
                continue
            if here not in ALLOWED:
                wrong.append(f"{module}: room {here!r} is on no floor (add it to ALLOWED)")
            elif there is None or there not in ALLOWED[here]:
                wrong.append(f"{module}:{line} -> {target} ({here} may import {sorted(ALLOWED[here]) or 'nothing'})")
    return wrong


def cycles(graph) -> list[list[str]]:
    """The import cycles between modules (strongly connected components of two or more, or a self-import)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _, _ in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or any(t == node for t, _, _ in graph.get(node, [])):
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def deferred_imports(graph, core: str = "sparsecut_core") -> list[str]:
    """Imports of the project's own modules made inside a function of the core (the way cycles get dodged)."""
    return [f"{module}:{line} -> {target}" for module, found in graph.items() if module.startswith(core)
            for target, line, top in found if not top and target.startswith(core)]


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, ("sparsecut_core", "sparsecut_cli"))


def test_every_core_room_imports_only_the_floors_below_it(graph):
    assert upward_imports(graph) == []


def test_the_package_has_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_core_imports_its_own_modules_at_the_top_of_each_file(graph):
    assert deferred_imports(graph) == []


def test_the_shortcut_mechanism_is_one_short_file():
    injection = ROOT / "sparsecut_core" / "model" / "injection.py"
    assert len(injection.read_text().splitlines()) < 150


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_catch_an_upward_import_a_cycle_and_a_deferred_import(tmp_path):
    write_package(tmp_path, {
        "sparsecut_core/__init__.py": "",
        "sparsecut_core/model/__init__.py": "",
        "sparsecut_core/model/modeling.py": "from ..training.loop import train\n",
        "sparsecut_core/training/__init__.py": "",
        "sparsecut_core/training/loop.py": "def train():\n    from ..model import modeling\n",
        "sparsecut_core/data/__init__.py": "",
        "sparsecut_core/data/a.py": "from . import b\n",
        "sparsecut_core/data/b.py": "from .a import x\n",
    })
    graph = import_graph(tmp_path, ("sparsecut_core",))
    assert upward_imports(graph) == [
        "sparsecut_core.model.modeling:1 -> sparsecut_core.training.loop (model may import nothing)"]
    assert cycles(graph) == [["sparsecut_core.data.a", "sparsecut_core.data.b"],
                             ["sparsecut_core.model.modeling", "sparsecut_core.training.loop"]]
    assert deferred_imports(graph) == ["sparsecut_core.training.loop:2 -> sparsecut_core.model.modeling"]
