"""The package layout: a folder per concept, no import circles, lower layers never reach up."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kernelenv"
TESTS = Path(__file__).resolve().parent

# Lower layers, and what they must not import (every import counts: top level, inside
# functions and under TYPE_CHECKING). A prefix bans the module and everything below it.
ABOVE_THE_CORE = ["kernelenv.sandbox", "kernelenv.runtime", "kernelenv.tasks",
                  "kernelenv.episodes", "kernelenv.tools", "kernelenv.env", "kernelenv.server"]
FORBIDDEN = {
    "kernelenv.models": ABOVE_THE_CORE,
    "kernelenv.errors": ABOVE_THE_CORE,
    "kernelenv.sandbox": ABOVE_THE_CORE[1:],
    "kernelenv.runtime": ABOVE_THE_CORE[2:],
    "kernelenv.wire": ABOVE_THE_CORE,
    # The client speaks the wire format; it never needs the kernels or the server's code.
    "kernelenv.client": ["kernelenv.runtime", "kernelenv.env", "kernelenv.server.app",
                         "kernelenv.server.ws", "kernelenv.server.sessions"],
}

# Module paths the README and the notebooks document.
DOCUMENTED = [
    "kernelenv.integrations.gym",
    "kernelenv.integrations.trl",
    "kernelenv.integrations.transforms",
    "kernelenv.runtime.ray",
    "kernelenv.episodes.replay",
    "kernelenv.episodes.compare",
    "kernelenv.episodes.journal",
    "kernelenv.episodes.export",
    "kernelenv.tasks.library",
    "kernelenv.tools",
    "kernelenv.sandbox",
    "kernelenv.client",
    "kernelenv.server",
]


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the kernelenv modules it imports, anywhere in its source."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in files and c != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_few_top_level_modules_and_a_folder_per_concept():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert len(modules) <= 12, modules
    assert {"runtime", "sandbox", "tasks", "episodes", "tools", "server", "client",
            "integrations"} <= set(packages)


def test_no_import_circles():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_lower_layers_do_not_reach_up(lower):
    graph = import_graph()
    def within(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    reached = {
        (module, target)
        for module, targets in graph.items()
        if within(module, lower)
        for target in targets
        if any(within(target, banned) for banned in FORBIDDEN[lower])
    }
    assert not reached


def test_tests_mirror_the_package():
    test_folders = {p.name for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    # tests/docs/ mirrors the documentation site (docs/), not a package.
    assert test_folders - {"docs"} <= packages, test_folders - packages
    top_level_tests = {p.stem.removeprefix("test_") for p in TESTS.glob("test_*.py")}
    assert not top_level_tests & packages  # a package's tests live in its folder


@pytest.mark.parametrize("module", DOCUMENTED)
def test_documented_module_paths_import(module):
    if module.endswith(".gym"):
        pytest.importorskip("gymnasium")
    if module.endswith(".ray"):
        pytest.importorskip("ray")
    assert importlib.import_module(module).__doc__
