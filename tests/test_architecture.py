"""The package's shape: no import cycles, and dependencies that point one way, from the CLI down to the MoE layer.

Every `import` in the package is read statically, imports inside functions included (a cycle closed by a deferred
import is still a cycle: it only moves the failure to run time), `if TYPE_CHECKING:` blocks aside. Importing
`a.b.c` from outside `a.b` also runs `a/b/__init__.py`, so such an import depends on the package as well.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adamoe"

# Each sub-package (or top-level module) and its layer: a module may import from its own package and from
# packages of a lower layer, never from a higher one. Entry points (`__main__`) are the CLI's layer.
LAYERS = {
    "adamoe.files": 0,  # atomic writes, file modes, what never goes into a file: standard library only
    "adamoe.moe": 0,  # the MoE layer: config, router, experts, dispatch, balance loss, block, statistics
    "adamoe.patching": 1,  # transformers integration: per-family specs, moeify, stored config, strict loading
    "adamoe.tasks": 1,  # the six tasks: data, preprocessing, metrics
    "adamoe.trainer": 2,  # the Trainer subclass, curriculum, timing, checkpoints
    "adamoe.run": 3,  # one run: recipe, run config, output folder, model card, provenance
    "adamoe.analysis": 4,
    "adamoe.bench": 4,
    "adamoe.smoke": 4,
    "adamoe.reproduce": 5,
    "adamoe.cli": 6,
    "adamoe": 7,  # the root package only re-exports, lazily
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that `name` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    type_checking = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("adamoe") and target != name:
                found.add(target)
    return found


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(name, path, modules):
            edges.add(target)
            parent = target.rpartition(".")[0]
            # Importing a.b.c from outside a.b runs a/b/__init__.py first; from inside it, that has already run.
            while parent and not name.startswith(parent + "."):
                edges.add(parent)
                parent = parent.rpartition(".")[0]
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in graph:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _layer_of(name: str) -> tuple[str, int]:
    if name.endswith(".__main__"):  # an entry point, as the CLI is
        return "adamoe.cli", LAYERS["adamoe.cli"]
    for package in sorted(LAYERS, key=len, reverse=True):
        if name == package or name.startswith(package + "."):
            return package, LAYERS[package]
    raise AssertionError(f"{name} is in no layer of LAYERS: add its package there.")


def test_the_graph_is_read():
    """The walk finds edges of every kind: a relative import, an import deferred into a function, a parent."""
    graph = _graph()
    assert "adamoe.moe.dispatch" in graph["adamoe.moe.experts"]  # from .dispatch import ...
    assert "adamoe.run.recipe" in graph["adamoe.cli.run"]  # inside a command function
    assert "adamoe.trainer" in graph["adamoe.run.recipe"]  # from ..trainer.checkpointing import ...: its package too


def test_the_cycle_finder_finds_a_cycle_closed_by_a_deferred_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(dict(_graph())) == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_dependencies_point_down(name):
    package, layer = _layer_of(name)
    upward = []
    for target in sorted(_graph()[name]):
        target_package, target_layer = _layer_of(target)
        if target_package != package and target_layer >= layer and not name.startswith(target + "."):
            upward.append(f"{target} (layer {target_layer})")
    assert not upward, f"{name} (layer {layer}, {package}) imports {upward}"


def test_the_moe_layer_imports_only_torch_and_the_standard_library():
    for path in (PACKAGE / "moe").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            third_party = {root for root in roots if root not in sys.stdlib_module_names and root != "torch"}
            assert not third_party, f"{path.name} imports {third_party}"
