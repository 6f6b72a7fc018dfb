"""Run a sweep: check the models, expand the spec into cells, write the manifest, and hand the cells to an
executor, which measures each (one process per cell by default) and appends each result as it finishes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bench import results
from bench.device import resolve_device
from bench.errors import BenchError
from bench.registry import list_models
from bench.results.outputs import REPORT_FILES, Folder, claim_folder
from bench.running import environment, machine_load, slurm
from bench.running.driver_lock import LOCK, sole_driver
from bench.running.executors import run_local, run_ray
from bench.running.grid import grid_extensions
from bench.running.isolation import shutdown
from bench.running.ledger import Ledger, round_order
from bench.running.preflight import check_calls, check_models
from bench.spec.cells import expand
from bench.spec.config import ModelEntry, SweepSpec
from bench.spec.flags import field_text

RUN_FILES = (results.MANIFEST, "spec.json", LOCK)  # the lock too: a file of that name is rewritten


def new_run_dir(spec: SweepSpec, out: str | None, report: bool = True) -> Path:
    """Where a new run goes, checked against the write policy now (bench/results/outputs.py); the folder is
    created when the work starts, so that a failed start leaves nothing."""
    if out:
        run_dir = Path(out)
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{spec.name}-{stamp}"
    claim_run_dir(run_dir, False, report)
    if (run_dir / results.RESULTS).exists():
        raise BenchError(
            f"{run_dir} already holds results; use --resume {run_dir} to finish it, or choose another --out"
        )
    return run_dir


def claim_run_dir(run_dir: Path, resume: bool, report: bool = True):
    """The run's folder under the write policy: a resumed run must be one this harness wrote; the files a
    run (and its report) write must be its own where they exist."""
    if resume:
        folder = claim_folder(
            run_dir, "--resume", own_only=True, instead="start a new run with --out instead"
        )
    else:
        folder = claim_folder(run_dir, "--out")
    folder.check_replaceable(RUN_FILES + (REPORT_FILES if report else ()))
    return folder


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
    statuses: dict[str, int]  # status -> count over every cell and round of the run (earlier invocations too)


def run_sweep(
    spec: SweepSpec,
    run_dir: Path,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    command: str | None = None,
    report: bool = True,
) -> SweepOutcome:
    # Everything that can be wrong with the input is found before the run directory is touched.
    folder = claim_run_dir(run_dir, resume, report)
    if resume:
        spec_path = run_dir / "spec.json"
        if spec_path.exists():
            try:
                before = json.loads(spec_path.read_bytes())
            except (OSError, ValueError) as err:
                raise BenchError(f"--resume: {str(spec_path)!r} cannot be read ({err})") from None
            if not isinstance(before, dict):
                raise BenchError(f"--resume: {str(spec_path)!r} is not a sweep spec")
            after = json.loads(spec.model_dump_json())
            differs = changed_fields(before, after)
            if differs:
                raise BenchError(
                    f"{run_dir} was started with a different sweep spec: "
                    + "; ".join(field_text(f, before, after) for f in differs)
                    + "; resume it with the same one"
                )
    if spec.executor == "slurm":
        slurm.check_available()
        device = slurm.slurm_device(spec)  # the compute nodes', not this login node's
    else:
        device = resolve_device(spec.device)
    models = spec.models or _every_model(run_dir, resume)
    check_models(spec, models)
    cells = expand(spec, models, device)
    check_calls(cells)
    folder.create()
    folder.record(results.RESULTS, LOCK)
    with sole_driver(run_dir):
        return _drive(spec, cells, run_dir, folder, device, resume, retry_failed, progress, command)


def _every_model(run_dir: Path, resume: bool) -> list[ModelEntry]:
    """A sweep that names no models runs every registered one; resumed, the ones its first invocation
    found (its manifest's ``models``), so that a plug-in installed since is not trained into an old run."""
    stored = results.read_manifest(run_dir).get("models") if resume else None
    if isinstance(stored, list) and stored and all(isinstance(n, str) for n in stored):
        return [ModelEntry(name=n) for n in stored]
    return [ModelEntry(name=n) for n in list_models()]


def _drive(
    spec: SweepSpec,
    cells: list,
    run_dir: Path,
    folder: Folder,
    device: str,
    resume: bool,
    retry_failed: bool,
    progress: bool,
    command: str | None,
) -> SweepOutcome:
    """The run itself, under its lock: the manifest, the rounds, the grids' growth."""
    ledger = Ledger(cells, run_dir / results.RESULTS, resume, retry_failed)
    manifest = environment.collect(seed=spec.seed)
    before = machine_load.sample()  # a busy machine shows in the report
    manifest["load_average_start"] = before["load_average"]
    manifest["busy_cores_start"] = before["busy_cores"]
    if command:
        manifest["command"] = command
    manifest.update(
        name=spec.name,
        device=device,
        n_cells=len(cells),
        rounds=spec.rounds,
        executor=spec.executor,
        run_id=ledger.run_id,  # each record names the invocation that measured it
        models=list(dict.fromkeys(c.model for c in cells)),  # what a sweep naming no models found registered
    )
    folder.write_text(results.MANIFEST, results.manifest_text(run_dir, manifest, resume))
    folder.write_text("spec.json", spec.model_dump_json(indent=2))

    # Rounds re-time the timing cells; an accuracy cell trains the same seed to the same result, so it runs
    # in the first round only.
    timed = [c for c in cells if c.mode != "accuracy"]
    total = len(cells) + len(timed) * (spec.rounds - 1)
    try:
        with (
            stop_on_signals(),
            tqdm(total=total, desc=spec.name, unit="cell", disable=not progress, dynamic_ncols=True) as bar,
        ):
            for round_index in range(spec.rounds):
                ordered = round_order(cells if round_index == 0 else timed, round_index, spec.seed)
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
        after = machine_load.sample()
        manifest["load_average_end"] = after["load_average"]
        manifest["busy_cores_end"] = after["busy_cores"]
        folder.write_text(results.MANIFEST, results.manifest_text(run_dir, manifest, resume))
    # every round counts: a cell ok in its first round and crashed in a later one is a failure, as the
    # report (its latest record) and compare both say
    statuses = Counter(ledger.done.values())
    return SweepOutcome(run_dir, dict(statuses))
