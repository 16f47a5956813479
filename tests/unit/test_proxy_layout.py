"""The package's import graph and the proxy's layout (issue #21): no import cycle anywhere; the proxy in small
modules along its own seams, and no import into it from the layers below. Computed from the source, imports
inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import runpod_manager

PACKAGE = Path(runpod_manager.__file__).resolve().parent
PROXY = "runpod_manager.proxy"
MAX_LINES = 600
# What may start or run the proxy from outside it: the CLI, the demo, and the process start (control.py, and
# ports.py's ProcessProxy, the real ProxyPort).
ENTRY_POINTS = frozenset({"runpod_manager.cli", "runpod_manager.demo", "runpod_manager.control",
                          "runpod_manager.ports"})
# The application's handler modules: the state object, a plain holder, imports none of them.
HANDLERS = frozenset(f"{PROXY}.{name}" for name in (
    "app", "middleware", "accounting", "v1", "models", "relay", "targets", "services", "ops", "manage"))


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Each module → the runpod_manager modules it imports, at any depth of its code."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name].update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        graph[name].add(f"{target}.{alias.name}")
                    elif target in modules:
                        graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root, imported in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(imported)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _in_proxy(name: str) -> bool:
    return name == PROXY or name.startswith(PROXY + ".")


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere_in_the_package() -> None:
    # Issue #21: zero cycles in runpod_manager, imports inside functions included (create↔lifecycle and
    # report↔report_html were the last ones outside the proxy).
    assert [sorted(component) for component in cycles(import_graph())] == []


def test_no_import_cycle_goes_through_the_proxy() -> None:
    through_proxy = [sorted(component) for component in cycles(import_graph())
                     if any(_in_proxy(name) for name in component)]
    assert through_proxy == []


def test_only_the_entry_points_import_the_proxy() -> None:
    upward = sorted(f"{name} imports {target}" for name, targets in import_graph().items() if not _in_proxy(name)
                    for target in targets if _in_proxy(target) and name not in ENTRY_POINTS)
    assert upward == []


def test_the_proxy_state_imports_no_handler() -> None:
    assert import_graph()[f"{PROXY}.state"] & HANDLERS == set()


def test_no_proxy_module_is_over_600_lines() -> None:
    long = {name: count for name, path in _modules().items() if _in_proxy(name)
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
