"""The engine's modules import one another without loops, and never import a UI library.

Imports inside functions count: a function-level import that closes a loop is still a loop
(it only hides it from Python until the function runs). Walks the source with ``ast``; no
module is imported, so the test is instant.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "garage_tui")
UI_LIBRARIES = ("textual", "rich", "plotext")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never imported at run time)."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                pending.extend(child.orelse)
                continue
            pending.append(child)
    return nodes


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``path`` imports at run time (at any depth of the file), as dotted names.

    ``from engine.build import plan`` counts as importing ``engine.build.plan`` only, the way
    import linters read it; ``from engine.build.plan import Plan`` as ``engine.build.plan``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: {dep for dep in _imports(path, name, known) if dep in known and dep != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop in ``graph`` (as a path back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (loop := visit(dep)) is not None:
                return loop
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)) is not None:
            return loop
    return None


def test_the_walker_sees_function_level_imports_and_loops() -> None:
    graph = _graph()
    # engine.run imports engine.hooks at the top; stats reads its runner inside a function
    assert "engine.hooks" in graph["engine.run"]
    assert "engine.run" in graph["engine.stats"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_engine_and_app_modules() -> None:
    loop = _cycle(_graph())
    assert loop is None, "import loop: " + " -> ".join(loop or [])


def test_engine_never_imports_a_ui_library() -> None:
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("engine"):
            continue
        for dep in _imports(path, name, set()):
            if dep.split(".")[0] in UI_LIBRARIES:
                offenders.append(f"{name} imports {dep}")
    assert not offenders, offenders
