"""The house's rules, checked on the code as it is: imports go one way (faces → read models
→ capabilities → the ground floor), no module imports the package root, no import cycle,
and every package says what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.settings import ROOT

# Floors, lowest first; a module may import its own floor and those below. Capabilities use
# each other's public functions (no cycle, see below); faces never import each other.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        (
            "service.config",
            "service.resources",
            "service.i18n",
            "service.extensions",
            "service.filebroker",
            "service.models",
            "service.jobs",
            "service.telemetry",
            "service.mail",
        ),
    ),
    (
        "capabilities",
        (
            "service.admin",
            "service.subscribers",
            "service.signup",
            "service.digest",
            "service.inbound",
        ),
    ),
    ("read models", ("service.reports",)),
    ("operations", ("service.ops",)),
    ("faces", ("service.web", "service.cli", "worker")),
    ("root", ("service",)),
    # What a process starts from: they build the app with the root's create_app.
    (
        "entry points",
        ("service.wsgi", "service.cli.main", "service.cli.__main__", "worker.celery_app"),
    ),
]
FACES = 4


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*ROOT.glob("service/**/*.py"), *ROOT.glob("worker/**/*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _place(module: str) -> tuple[int, str]:
    """(floor, the prefix that put it there)."""
    best = (-1, -1, "")
    for number, (_name, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), number, prefix))
    assert best[1] >= 0, f"{module} is on no floor: add it to FLOORS"
    return best[1], best[2]


def _floor(module: str) -> int:
    return _place(module)[0]


def test_every_module_is_on_a_floor() -> None:
    for module in MODULES:
        _floor(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module: str) -> None:
    here = _floor(module)
    upward = sorted(
        f"{target} ({FLOORS[_floor(target)][0]})"
        for target in GRAPH[module]
        if _floor(target) > here
        or (here == FACES == _floor(target) and _place(target) != _place(module))
    )
    assert not upward, f"{module} ({FLOORS[here][0]}) imports upward or across faces: {upward}"


def test_no_import_cycle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_every_package_says_what_it_owns() -> None:
    for init in [*ROOT.glob("service/**/__init__.py"), *ROOT.glob("worker/__init__.py")]:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 30, (
            f"{init.relative_to(ROOT)} has no docstring saying what it owns"
        )
