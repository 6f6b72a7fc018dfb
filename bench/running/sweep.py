"""Run a sweep: check the models, expand the spec into cells, write the manifest, and hand the cells to an
executor, which measures each (one process per cell by default) and appends each result as it finishes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from bench import results
from bench.device import resolve_device
from bench.errors import BenchError
from bench.registry import build, list_models
from bench.running import environment, slurm
from bench.running.executors import run_local, run_ray
from bench.running.grid import grid_extensions
from bench.running.isolation import shutdown
from bench.running.ledger import Ledger, round_order
from bench.spec.cells import expand
from bench.spec.config import ACCURACY_MODE, TIMING_MODES, ModelEntry, SweepSpec


def check_models(spec: SweepSpec, models: list[ModelEntry]) -> None:
    """Build each model once on the meta device (no memory, no compute) at every shape the sweep uses, so
    that an unknown name, an unknown argument or an impossible shape is reported before any cell runs."""
    labels = [m.display for m in models]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise BenchError(
            f"model label(s) used twice in the sweep: {', '.join(duplicates)}; give each a label"
        )
    shapes = []
    if any(m in TIMING_MODES for m in spec.modes):
        shapes.append((spec.d_model, spec.n_layers, "the sweep's shape"))
    if ACCURACY_MODE in spec.modes:
        acc = spec.accuracy
        shapes.append((acc.d_model or spec.d_model, acc.n_layers or spec.n_layers, "the accuracy shape"))
    for entry in models:
        for d_model, n_layers, where in dict.fromkeys(shapes):
            try:
                with torch.device("meta"):
                    model = build(
                        entry.name,
                        vocab_size=spec.vocab_size,
                        d_model=d_model,
                        n_layers=n_layers,
                        **entry.args,
                    )
            except BenchError:
                raise
            except (ValueError, TypeError) as err:
                raise BenchError(
                    f"model {entry.display!r} cannot be built at {where} (d_model {d_model}, {n_layers} "
                    f"layers): {err}"
                ) from None
            if entry.state_passing and not getattr(model, "supports_state_passing", False):
                raise BenchError(
                    f"model {entry.display!r} sets state_passing but cannot continue from a state with "
                    "gradients (its mixers lack forward_from, or its backend's kernels do)"
                )


def new_run_dir(spec: SweepSpec, out: str | None) -> Path:
    """Where a new run goes (created when its first file is written, so a failed start leaves nothing)."""
    if out:
        run_dir = Path(out)
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{spec.name}-{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise BenchError(f"--out {str(run_dir)!r} is a file, not a directory")
    if (run_dir / results.RESULTS).exists():
        raise BenchError(
            f"{run_dir} already holds results; use --resume {run_dir} to finish it, or choose another --out"
        )
    return run_dir


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"cannot write the run directory {str(run_dir)!r}: {err.strerror}") from None


class Interrupted(Exception):
    """The sweep was stopped by a signal; finished cells are saved."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM end the sweep cleanly: the worker in flight is killed, the forkserver stopped,
    finished cells stay; the driver raises Interrupted instead of dying mid-write."""

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def execute(spec: SweepSpec, cells: list, ledger: Ledger, bar, round_index: int, run_dir: Path) -> None:
    """Hand ``cells`` to the sweep's executor."""
    if spec.executor == "ray":
        run_ray(cells, ledger, spec, bar, round_index, spec.ray_cpus_per_cell)
    elif spec.executor == "slurm":
        slurm.run_slurm(cells, ledger, spec, bar, round_index, run_dir)
    else:
        run_local(cells, ledger, spec, bar, round_index)


# How the cells are sent out, not what they measure: a run may be resumed with other values.
NOT_MEASURED = ("executor", "ray_cpus_per_cell", "slurm", "parallel", "out")


def changed_fields(before: dict, after: dict, prefix: str = "") -> list[str]:
    """The fields (dotted paths) whose values differ between two specs, leaving out NOT_MEASURED."""
    out = []
    for name in sorted(set(before) | set(after)):
        if not prefix and name in NOT_MEASURED:
            continue
        a, b = before.get(name), after.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(prefix + name)
    return out


@dataclass
class SweepOutcome:
    run_dir: Path
    statuses: dict[str, int]  # status -> count, over every cell of the run (earlier invocations too)


def run_sweep(
    spec: SweepSpec,
    run_dir: Path,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> SweepOutcome:
    # Everything that can be wrong with the input is found before the run directory is touched.
    if spec.executor == "slurm":
        slurm.check_available()
        device = slurm.slurm_device(spec)  # the compute nodes', not this login node's
    else:
        device = resolve_device(spec.device)
    models = spec.models or [ModelEntry(name=n) for n in list_models()]
    check_models(spec, models)
    cells = expand(spec, models, device)
    if resume:
        spec_path = run_dir / "spec.json"
        if spec_path.exists():
            differs = changed_fields(json.loads(spec_path.read_text()), json.loads(spec.model_dump_json()))
            if differs:
                raise BenchError(
                    f"{run_dir} was started with a different sweep spec ({', '.join(differs)} differ); "
                    "resume it with the same one"
                )
    _make_run_dir(run_dir)
    ledger = Ledger(cells, run_dir / results.RESULTS, resume, retry_failed)
    manifest = environment.collect(seed=spec.seed)
    manifest["load_average_start"] = os.getloadavg()  # a busy machine shows in the report
    if command:
        manifest["command"] = command
    manifest.update(
        name=spec.name, device=device, n_cells=len(cells), rounds=spec.rounds, executor=spec.executor
    )
    results.write_manifest(run_dir, manifest)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))

    total = len(cells) * spec.rounds
    try:
        with (
            stop_on_signals(),
            tqdm(total=total, desc=spec.name, unit="cell", disable=not progress, dynamic_ncols=True) as bar,
        ):
            for round_index in range(spec.rounds):
                ordered = round_order(cells, round_index, spec.seed)
                execute(spec, ordered, ledger, bar, round_index, run_dir)
            # Learning-rate grids that do not bracket their choice grow, a step at a time.
            while extra := grid_extensions(spec, cells, run_dir / results.RESULTS):
                cells += extra
                ledger.add(extra)
                bar.total += len(extra)
                bar.refresh()
                execute(spec, extra, ledger, bar, 0, run_dir)
    finally:
        shutdown()
        manifest["load_average_end"] = os.getloadavg()
        results.write_manifest(run_dir, manifest)
    statuses = Counter(status for (key, r), status in ledger.done.items() if r == 0)
    return SweepOutcome(run_dir, dict(statuses))
