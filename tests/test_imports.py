"""No import cycle inside the gateway package (issue 14).

The graph is built from the source, not from ``sys.modules``: every ``import`` and ``from … import``
of a module under ``gateway/`` counts, at module level, under ``if TYPE_CHECKING:``, and inside
functions (a deferred import hides a cycle from Python, not from a reader). ``from . import name``
points at the module ``name`` when there is one, else at the package. Run alone with
``python -m pytest -q tests/test_imports.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name → file, for every module of the package (``__init__`` names its package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import ``from {'.' * level}{target} import …``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module → the package's modules it imports, wherever in the file the import is."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                while target and target not in modules:  # ``import gateway.x.y`` names gateway.x.y
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path
    ``a → b → … → a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_within(graph, set(component)) for component in components]


def _path_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a component always has one


def test_the_gateway_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles in gateway/ (TYPE_CHECKING and function-level imports count):\n" + "\n".join(
        "  " + " → ".join(cycle) for cycle in found
    )


def test_the_simulator_package_has_no_import_cycle():
    found = cycles(import_graph(PACKAGE.parent / "gateway_sim"))
    assert not found, "import cycles in gateway_sim/:\n" + "\n".join("  " + " → ".join(c) for c in found)


def test_the_check_sees_every_kind_of_import(tmp_path):
    """The checker itself: a cycle closed by a TYPE_CHECKING import, one closed by an import inside a
    function, and one through ``from . import module`` are each found and named."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .inner import x\n")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import other\n")
    (pkg / "c.py").write_text("import pkg.d\n")
    (pkg / "d.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "inner.py").write_text("from ..e import y\n")
    (pkg / "e.py").write_text("from .sub import inner\n")
    (pkg / "f.py").write_text("from . import a\n")  # into a cycle, not part of one
    found = sorted(cycles(import_graph(pkg)))
    assert found == [
        ["pkg.a", "pkg.b", "pkg.a"],
        ["pkg.c", "pkg.d", "pkg.c"],
        ["pkg.e", "pkg.sub.inner", "pkg.e"],
    ]
