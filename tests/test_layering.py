"""The package's import structure: no circle inside pruning/, no private name imported across modules,
dependencies one way (pruning <- callbacks <- cli; models, modules and data never import callbacks)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "px_lightning"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """``(imported module, [names])`` of every import in ``path``, at module level or inside functions."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target, names in _imports(path):
            if target not in modules:
                continue
            edges.add(target)
            # ``from .scorers import px`` imports the submodule scorers.px too.
            edges.update(f"{target}.{n}" for n in names if f"{target}.{n}" in modules)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ()) & nodes):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(nodes):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_among_pruning_modules():
    graph = _graph()
    # A package's __init__ re-exports its modules, so the edge to a package's own __init__ is not a circle.
    pruning = {n for n in graph if n.startswith("px_lightning.pruning")}
    acyclic = {n: {t for t in e if not n.startswith(t + ".")} for n, e in graph.items()}
    assert _cycle(acyclic, pruning) is None


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}, {"a", "b"}) is None


def test_no_module_imports_a_private_name_of_another():
    offences = []
    for path in PACKAGE.rglob("*.py"):
        for target, names in _imports(path):
            if not target.startswith("px_lightning"):
                continue
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                offences.append(f"{_module_name(path)} imports {private} from {target}")
    assert offences == []


def test_dependencies_point_one_way():
    graph = _graph()
    offences = []
    for name, edges in graph.items():
        for target in edges:
            if name.startswith("px_lightning.pruning") and not target.startswith("px_lightning.pruning"):
                offences.append((name, target))
            lower = ("px_lightning.models", "px_lightning.modules", "px_lightning.data")
            if name.startswith(lower) and target.startswith(("px_lightning.callbacks", "px_lightning.cli")):
                offences.append((name, target))
            if name.startswith("px_lightning.callbacks") and target.startswith("px_lightning.cli"):
                offences.append((name, target))
    assert offences == []
    for path in (PACKAGE / "pruning").rglob("*.py"):
        assert not any(t.startswith("lightning") for t, _ in _imports(path)), path
