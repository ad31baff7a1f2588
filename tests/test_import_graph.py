"""The project's import graph (issue 23): no cycles, and the layers import only downwards.

Built from the source with `ast`, not by importing: every `import` and `from ... import` of a project module
is an edge, at module level or inside a function alike (an import inside a function that reaches back up is
still a cycle in the design, only a deferred one).  An edge goes to the module named (`from pkg import mod`
to pkg.mod when mod is a module, else to pkg); a package's own `__init__` running first is not an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dcnn", "trainables", "orchestrator", "search_spaces")
# what each package may import of the others: dcnn ← trainables ← orchestrator; search_spaces reads dcnn only
ALLOWED = {"dcnn": set(), "search_spaces": {"dcnn"}, "trainables": {"dcnn", "search_spaces"},
           "orchestrator": {"dcnn", "search_spaces", "trainables"}}


def project_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the project modules it imports}, module-level and in-function imports alike."""

    def target(name: str) -> str | None:  # the longest project module a dotted name starts with
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package up
                    up = package
                    for _ in range(node.level - 1):
                        up = up.rpartition(".")[0]
                    base = f"{up}.{base}" if base else up
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges.update(t for t in map(target, names) if t and t != module)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one module (every cycle lies within one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


GRAPH = import_graph(project_modules())


def test_the_graph_sees_the_project():
    """A sanity check of the parser: known edges, module-level and in-function, are found."""
    assert "dcnn.registry" in GRAPH["dcnn.train"]
    assert "dcnn.config" in GRAPH["dcnn.registry"]
    assert "dcnn.train" in GRAPH["trainables.dcnn_trainables"]
    assert len(GRAPH) > 60
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(cyclic) == [{"a", "b", "c"}]


def test_no_import_cycles():
    cycles = [sorted(c) for c in strongly_connected(GRAPH)]
    assert not cycles, f"import cycles (module-level or in-function imports): {cycles}"


def test_layers_import_downwards_only():
    """dcnn imports none of the others; search_spaces only dcnn; trainables dcnn and search_spaces (the labels a
    study adds); orchestrator any of them."""
    wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                   if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]])
    assert not wrong, f"imports against the layering dcnn ← search_spaces ← trainables ← orchestrator: {wrong}"


def test_dcnn_core_layers():
    """Inside dcnn: the record (config), the family types and the models know nothing of tasks or the registry;
    only the registry (and what builds on it) dispatches on families."""
    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for w in GRAPH.get(todo.pop(), ()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    for low in ("dcnn.config", "dcnn.families", "dcnn.models", "dcnn.models.plugins"):
        above = {m for m in reaches(low) if m in ("dcnn.registry", "dcnn.tasks", "dcnn.train", "dcnn.plugin_check")
                 or m.endswith((".task", ".family"))}
        assert not above, f"{low} reaches {sorted(above)}"
    assert not any(m.startswith("dcnn.models") for m in reaches("dcnn.config")), "config.py must not import a model"
