"""The SDK's import graph has no cycle: every import statement counts (module level,
inside functions, under TYPE_CHECKING, relative, and ``from chalkcompute import x``
where x is a submodule). Generated code (chalkcompute/_proto) is left out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import chalkcompute

pytestmark = pytest.mark.timeout(30)

ROOT = Path(chalkcompute.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py") if "_proto" not in p.relative_to(ROOT).parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("chalkcompute._proto"):
                continue  # generated code, outside the graph
            # the deepest known module the name refers to
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_sdk_import_graph_has_no_cycle():
    mods = _modules()
    known = set(mods)
    graph = {n: _imports(n, p, known) for n, p in mods.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle in the SDK: " + " -> ".join(cycle)


def test_the_graph_sees_function_level_and_type_checking_imports(tmp_path):
    # The checker itself: a cycle made only by a function-level import is found.
    graph = {"a": {"b"}, "b": {"a"}}
    assert _cycle(graph) == ["a", "b", "a"]
    mods = _modules()
    calls = _imports("chalkcompute.calls", mods["chalkcompute.calls"], set(mods))
    assert "chalkcompute._client" in calls
