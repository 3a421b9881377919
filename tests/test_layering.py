"""The package's floors (docs/map.md): every import of a dm_lightning module, at module level or
inside a function, goes to a lower floor, and no two modules import each other, directly or
round a longer loop (relative and function-level imports included; ``if TYPE_CHECKING:``
imports, which never run, only in the floors). Read from the source with ``ast``; nothing is
imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dm_lightning"

# Top-level module or subpackage -> floor; an import must go to a lower floor.
FLOORS = {
    "errors": 0,
    "plurals": 0,
    "atomic": 1,
    "output_folders": 1,
    "tool_cli": 1,
    "cli_errors": 1,
    "targets": 1,
    "losses": 1,
    "visualize": 1,
    "models": 2,
    "data": 2,
    "evaluation": 3,
    "testing": 3,
    "inference": 4,
    "hub": 4,
    "training": 5,
    "baselines": 6,
    "cli": 7,
    "recipes": 8,
    "gpu_check": 9,
    "__init__": 10,
    "__main__": 10,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never run: annotations only)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return found


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported dm_lightning module, run at import or call time?) of one file: imports at
    module level or inside a function, relative ones resolved against the file's package;
    those under ``if TYPE_CHECKING:`` are not run. ``from P import a`` counts ``P`` and
    ``P.a`` (a submodule, if there is one; the package root only as ``P.a``: its names are
    its submodules and its own ``__init__`` is the top floor)."""
    tree = ast.parse(path.read_text())
    type_only = _type_only(tree)
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from .. import z
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module != "dm_lightning" and not module.startswith("dm_lightning."):
                continue
            names += [module] if module != "dm_lightning" else []
            names += [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Import):
            names += [
                alias.name
                for alias in node.names
                if alias.name == "dm_lightning" or alias.name.startswith("dm_lightning.")
            ]
        found += [(module, id(node) not in type_only) for module in names]
    return found


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _floor_of(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_folder_has_a_floor():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _files()}
    assert tops <= set(FLOORS), f"give these a floor: {sorted(tops - set(FLOORS))}"


def test_imports_go_down_the_floors():
    upward = []
    for path in _files():
        source = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module, _ in _imports(path):  # type-only imports too: a floor is a dependency
            target = _floor_of(module)
            if target != source and FLOORS.get(target, 99) >= FLOORS[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not upward, "imports up or across a floor:\n" + "\n".join(upward)


def test_no_module_import_cycle():
    modules = {_module_name(p): p for p in _files()}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for module, runs in _imports(path):  # a type-only import cannot make a loop
            if runs and module in modules and module != name:
                graph[name].add(module)
    # Tarjan's strongly connected components: a component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_this_check_sees_an_upward_import(tmp_path, monkeypatch):
    # The check itself: a models module importing training is reported.
    fake = tmp_path / "dm_lightning"
    (fake / "models").mkdir(parents=True)
    (fake / "training").mkdir()
    (fake / "models" / "bad.py").write_text(
        "def f():\n    from dm_lightning.training.base import DepthMasterTask\n"
    )
    (fake / "training" / "base.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError) as err:
        test_imports_go_down_the_floors()
    assert "dm_lightning/models/bad.py imports dm_lightning.training.base" in str(err.value)


def test_this_check_sees_a_cycle_through_a_function_level_import(tmp_path, monkeypatch):
    # The check itself: a relative module-level import one way and an import inside a
    # function the other way make a cycle, reported with both modules.
    fake = tmp_path / "dm_lightning"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "__init__.py").write_text("")
    (fake / "models" / "pipe.py").write_text("from .tiles import run\n")
    (fake / "models" / "tiles.py").write_text(
        "def run():\n    from dm_lightning.models import pipe\n"
    )
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError) as err:
        test_no_module_import_cycle()
    assert "['dm_lightning.models.pipe', 'dm_lightning.models.tiles']" in str(err.value)
