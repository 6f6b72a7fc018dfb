"""Executors: how a sweep's cells get measured. Both ask the Ledger what to run and record through it.

- ``run_local``: on this machine, each cell in a fresh process (``isolation = "process"``) or in this one
  (``"none"``, for debugging); timing cells one at a time with nothing else running (they never share the
  device), accuracy cells up to ``parallel`` at a time (each trains on its own threads: on a CPU, give
  each one thread and run as many as there are cores).
- ``run_ray``: cells as Ray tasks, on the cluster named by RAY_ADDRESS or a local Ray instance.
- ``run_slurm`` (``slurm.py``): groups of cells as Slurm job-array tasks, through submitit.

Each Ray task still measures its cell in a fresh process (``run_isolated``) on the node Ray
picked, so the per-cell isolation and time limit hold. Each task asks for a whole GPU on CUDA and a
whole node's CPUs on the CPU, so timing cells never share a device. Within a model/mode/batch/dtype
group, lengths run in ascending order, one at a time, so the OOM skip rule still applies; different
groups run in parallel. Results stream back to this driver, which alone writes the results file.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

from bench.errors import BenchError
from bench.running.isolation import IsolatedRun, run_in_process, run_isolated
from bench.running.ledger import AnyCell, Ledger
from bench.spec.cells import cell_from_json
from bench.spec.config import SweepSpec

POLL_S = 1.0  # how often cells in flight are checked for their time limit


def run_local(cells: list[AnyCell], ledger: Ledger, spec: SweepSpec, bar, round_index: int = 0) -> None:
    if spec.parallel > 1 and spec.isolation == "process":
        return _run_local_parallel(cells, ledger, spec, bar, round_index)
    for cell in cells:
        bar.set_postfix_str(cell.describe, refresh=False)
        if ledger.settle(cell, round_index):
            if spec.isolation == "process":
                outcome = run_isolated(cell, spec.timeout_s)
            else:
                outcome = run_in_process(cell)
            ledger.record(cell, outcome, round_index)
        bar.update()


def _run_local_parallel(cells: list[AnyCell], ledger: Ledger, spec: SweepSpec, bar, round_index: int) -> None:
    """Accuracy cells ``spec.parallel`` at a time; a timing cell waits until nothing else runs, and
    nothing starts beside it. The OOM skip rule reads a group's shorter lengths' outcomes before a longer
    one starts, so a cell waits while a shorter cell of its group is in flight (its other seeds and
    learning rates, of the same length, run beside it)."""
    in_flight: dict[int, IsolatedRun] = {}

    def collect(block: bool) -> None:
        while in_flight:
            ready = wait(list(in_flight), timeout=POLL_S if block else 0)
            finished = [s for s, run in in_flight.items() if s in ready or run.out_of_time()]
            for sentinel in finished:
                run = in_flight.pop(sentinel)
                ledger.record(run.cell, run.outcome(), round_index)
                bar.set_postfix_str(run.cell.describe, refresh=False)
                bar.update()
            if finished or not block:
                return

    try:
        for cell in cells:
            alone = cell.mode != "accuracy"
            while in_flight and (
                alone
                or len(in_flight) >= spec.parallel
                or any(r.cell.group == cell.group and r.cell.length < cell.length for r in in_flight.values())
            ):
                collect(block=True)
            if not ledger.settle(cell, round_index):
                bar.update()
                continue
            if alone:
                ledger.record(cell, run_isolated(cell, spec.timeout_s), round_index)
                bar.update()
                continue
            run = IsolatedRun(cell, spec.timeout_s)
            in_flight[run.sentinel] = run
        while in_flight:
            collect(block=True)
    finally:  # an interrupted sweep (SIGINT, SIGTERM) ends its workers before it goes
        for run in in_flight.values():
            run.kill()


def _measure(cell_json: str, timeout_s: float) -> dict:
    """The Ray task: runs on a worker node."""
    return run_isolated(cell_from_json(cell_json), timeout_s)


def run_ray(
    cells: list[AnyCell],
    ledger: Ledger,
    spec: SweepSpec,
    bar,
    round_index: int = 0,
    cpus_per_cell: int | None = None,
) -> None:
    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'titans-bench[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        # RAY_ADDRESS, when set, makes this join that cluster; otherwise a local instance starts.
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(_python_path())}},
        )
    gpu = cells and cells[0].device == "cuda"
    resources = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": cpus_per_cell or os.cpu_count()}
    task = ray.remote(max_retries=0, **resources)(_measure)

    queues: dict[tuple, deque[AnyCell]] = {}
    for cell in cells:
        queues.setdefault(cell.group, deque()).append(cell)
    in_flight: dict = {}

    def submit_next(group: tuple) -> None:
        queue = queues[group]
        while queue:
            cell = queue.popleft()
            if not ledger.settle(cell, round_index):
                bar.update()
                continue
            in_flight[task.remote(cell.model_dump_json(), spec.timeout_s)] = cell
            return

    try:
        for group in queues:
            submit_next(group)
        _drain(ray, in_flight, ledger, bar, submit_next, round_index)
    finally:
        if started_here:
            ray.shutdown()


def _drain(ray, in_flight: dict, ledger, bar, submit_next, round_index: int) -> None:
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        cell = in_flight.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except Exception as err:  # noqa: BLE001 - a lost node or worker is that cell's crash, not the sweep's
            outcome = {"status": "crashed", "error": f"ray task failed: {type(err).__name__}: {err}"[:2000]}
        ledger.record(cell, outcome, round_index)
        bar.set_postfix_str(cell.describe, refresh=False)
        bar.update()
        submit_next(cell.group)


def _python_path() -> list[str]:
    """Make this checkout importable in Ray's workers, as it is here."""
    root = str(Path(__file__).resolve().parents[2])
    return [root, *(p for p in sys.path if p and p != root)]
