"""The package's shape, which a learner relies on when reading it: no import circles, commands that
never import each other, kernels.py as the one checked interface to two backends of the same API."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from support import compiled_kernels

import simple_llm
from simple_llm import cli, fallback, kernels

PACKAGE = Path(simple_llm.__file__).parent
MODULES = {p.stem: p for p in PACKAGE.glob("*.py")}
COMMANDS = {*cli.COMMANDS.values(), "demo"}  # the modules behind `python -m simple_llm [CMD]`


def _imported(tree: ast.AST) -> set[str]:
    """The simple_llm modules a module imports when it runs (`if TYPE_CHECKING:` blocks left out)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("simple_llm")):
            parts = (node.module or "").split(".")
            module = parts[0] if node.level == 1 else (parts[1] if len(parts) > 1 else "")
            found |= {module} if module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("simple_llm.")}
    return found & set(MODULES)


GRAPH = {name: _imported(ast.parse(path.read_text(encoding="utf-8"))) for name, path in MODULES.items()}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_circle_finder_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_is_read():
    assert GRAPH["model"] >= {"kernels", "activations", "checkpoint"}  # relative imports
    assert "model" not in GRAPH["generation"]  # the type-only import of GPT does not count
    assert "kernels" in GRAPH["cli"]  # an import inside a function counts


def test_no_import_circles():
    assert _circle(GRAPH) is None, f"import circle: {' -> '.join(_circle(GRAPH) or [])}"


def test_commands_never_import_each_other_or_the_dispatcher():
    assert set(MODULES) >= COMMANDS and len(COMMANDS) == 9
    for name in COMMANDS:
        assert not GRAPH[name] & (COMMANDS | {"cli"}) - {name}, f"{name} imports {GRAPH[name] & COMMANDS}"


def _public_functions(module) -> dict[str, object]:
    return {
        n: f
        for n, f in vars(module).items()
        if not n.startswith("_") and callable(f) and f.__module__ == module.__name__
    }


def test_kernels_py_is_the_checked_interface_to_both_backends_and_nothing_else():
    checked, twin = _public_functions(kernels), _public_functions(fallback)
    assert len(checked) >= 12
    assert set(checked) == set(twin)
    for name, f in checked.items():
        assert list(inspect.signature(f).parameters) == list(inspect.signature(twin[name]).parameters), name
    compiled = compiled_kernels()
    assert {n for n in dir(compiled) if not n.startswith("_") and callable(getattr(compiled, n))} >= set(checked)
