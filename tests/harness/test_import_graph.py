"""The project's structure, read from the source: imports point one way, down the layers below, and there
are no import cycles at all, function-level imports included (they hide cycles, they do not remove them).

    bench.cli, bench.__main__                    the command line
    bench.commands                               one module per command
    bench.running | bench.analysis               measuring cells | reading stored results
    bench.spec, bench.results                    what a sweep runs | the results file
    models, baselines, bench.tasks               the models' public interface, the tasks
    bench.registry, bench                        names -> objects
    bench.errors
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "models", "baselines")

# (layer, group) by module-name prefix; the longest matching prefix wins.
LAYERS = {
    "bench.errors": (0, "bench.errors"),
    "bench.registry": (1, "bench.registry"),
    "bench": (1, "bench.registry"),  # the package's public API: build, list_models, register
    "models": (2, "models"),
    "baselines": (2, "baselines"),
    "bench.tasks": (2, "bench.tasks"),
    "bench.spec": (3, "bench.spec"),
    "bench.results": (3, "bench.results"),
    "bench.running": (4, "bench.running"),
    "bench.analysis": (4, "bench.analysis"),
    "bench.commands": (5, "bench.commands"),
    "bench.cli": (6, "bench.cli"),
    "bench.__main__": (6, "bench.cli"),
}
# Imports between different groups of one layer that are allowed: the baselines use the shared modules.
SIDEWAYS = {("baselines", "models")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from package import submodule` imports the submodule, not only the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` where a.b.c is an attribute
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def layer(name: str) -> tuple[int, str]:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert len(edges) > 40  # every module of the three packages
    assert "bench.running.ledger" in edges["bench.running.executors"]
    assert "models.modules.attention" in edges["models.titans.model"]
    # a function-level import is an edge too
    assert "bench.analysis.report" in edges["bench.commands.run"]


def test_no_import_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_a_cycle_would_be_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_point_down_the_layers():
    upward = []
    for name, targets in graph().items():
        mine, my_group = layer(name)
        for target in targets:
            theirs, their_group = layer(target)
            sideways = theirs == mine and their_group != my_group and (my_group, their_group) not in SIDEWAYS
            if theirs > mine or sideways:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_models_never_import_baselines():
    assert not [
        (n, t) for n, ts in graph().items() if n.startswith("models") for t in ts if t.startswith("baselines")
    ]


def test_the_harness_defines_no_layer():
    """Neural building blocks live in models.modules; no class in bench/ is a torch module."""
    layers = []
    for path in (ROOT / "bench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                if bases & {"nn.Module", "torch.nn.Module", "Mixer", "LanguageModel", "Module"}:
                    layers.append(f"{path.name}:{node.name}")
    assert not layers, layers
