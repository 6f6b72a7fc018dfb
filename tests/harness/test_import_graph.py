"""The project's structure, read from the source: imports point one way, down the layers below, and there
are no import cycles at all, function-level imports included (they hide cycles, they do not remove them).

    bench.cli, bench.__main__                    the command line
    bench.commands                               one module per command
    bench.running | bench.analysis               running a sweep | reading stored results
    bench.measure | bench.train                  measuring a timing cell | training (and scoring) a model
    bench.results                                the results store and its typed rows
    bench.spec                                   what a sweep runs
    bench.tasks                                  the tasks
    bench.scoring | bench.plugins                how a task's examples are scored | a model's own errors
    bench.registry, bench, bench.device, ...     names -> objects; the device; failures
    bench.errors
    models, baselines                            the model zoo: imports nothing of the harness

Sideways: baselines use the shared modules of models; measure uses train's public functions only (the
optimizer and the precision recipe a timed training step shares with training), through ``bench.train``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "models", "baselines")

# (layer, group) by module-name prefix; the longest matching prefix wins.
LAYERS = {
    "models": (0, "models"),
    "baselines": (0, "baselines"),
    "bench.errors": (1, "bench.errors"),
    "bench.registry": (2, "bench.registry"),
    "bench": (2, "bench.registry"),  # the package's public API: build, list_models, register
    "bench.device": (2, "bench.device"),
    "bench.failures": (2, "bench.failures"),
    "bench.scoring": (3, "bench.scoring"),
    "bench.plugins": (3, "bench.plugins"),
    "bench.tasks": (4, "bench.tasks"),
    "bench.spec": (5, "bench.spec"),
    "bench.results": (6, "bench.results"),
    "bench.measure": (7, "bench.measure"),
    "bench.train": (7, "bench.train"),
    "bench.running": (8, "bench.running"),
    "bench.analysis": (8, "bench.analysis"),
    "bench.commands": (9, "bench.commands"),
    "bench.cli": (10, "bench.cli"),
    "bench.__main__": (10, "bench.cli"),
}
# Imports between different groups of one layer that are allowed: the baselines use the shared modules;
# measuring a training step uses train's public functions (the package itself, never its modules).
SIDEWAYS = {("baselines", "models"): None, ("bench.measure", "bench.train"): {"bench.train"}}


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
            allowed = SIDEWAYS.get((my_group, their_group), ())
            sideways = (
                theirs == mine and their_group != my_group and not (allowed is None or target in allowed)
            )
            if theirs > mine or sideways:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_models_never_import_baselines():
    assert not [
        (n, t) for n, ts in graph().items() if n.startswith("models") for t in ts if t.startswith("baselines")
    ]


def test_the_model_zoo_imports_nothing_of_the_harness():
    """models/ and baselines/ describe themselves as plain data (models.modules.catalog); the harness
    finds them. Read from every import in their source, function-level ones included."""
    zoo = [n for n in graph() if n.startswith(("models", "baselines"))]
    assert len(zoo) > 20
    assert not [(n, t) for n in zoo for t in graph()[n] if t == "bench" or t.startswith("bench.")]


def test_a_sideways_import_into_a_stage_is_refused():
    """measure may use bench.train (its public functions), not a module inside it."""
    assert layer("bench.measure.cell") == layer("bench.measure.timing")
    mine, group = layer("bench.measure.cell")
    for target, ok in (("bench.train", True), ("bench.train.loop", False)):
        theirs, their_group = layer(target)
        allowed = SIDEWAYS.get((group, their_group), ())
        assert theirs == mine and (allowed is None or target in allowed) == ok


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
