"""The Slurm executor (``--executor slurm``): a sweep's cells as Slurm job-array tasks, through submitit.

One array task per *group* of cells (a model's lengths in one mode, batch size and dtype), not per cell:

- the OOM skip rule needs a group's lengths measured shortest first, one at a time; inside one task they
  are, as in the local executor, with no trip back through the queue between two lengths (on a busy
  cluster each trip can wait for hours);
- a task pays the queue wait, the interpreter and torch's import once for its group, not once per cell;
- each cell is still measured in a fresh process with the sweep's timeout (``slurm_task.run_task``), so
  OOMs, crashes and timeouts get the local executor's statuses, and outcomes come back one cell at a time.

Groups run in parallel, up to ``[slurm] array_parallelism``. The driver waits on the tasks' directories for
outcomes (files only) and asks ``squeue`` every ``poll_s`` how its jobs stand (``slurm_queue``): a job that
ended without an outcome for its cell in flight (time limit, cgroup OOM, preemption, scancel, node failure)
gets that cell recorded as timeout / oom / preempted / crashed; its cells not yet started go back to the
queue in a new task. ``--retry-failed`` resubmits failed cells, nothing else does.

Under the run directory, ``slurm/`` is submitit's folder (each task's pickled call, ``<job>_submitted.pkl``,
its script and logs) and ``slurm/tasks/<token>/`` each task's reports. ``--resume`` reads the pickled calls
back: outcomes a killed driver never recorded are recorded, jobs still queued or running are waited on
again instead of being submitted twice. SIGINT / SIGTERM cancel every job of the run (``scancel --name``)
and wait until none is left in the queue.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import shlex
import shutil
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import results
from bench.errors import BenchError
from bench.running import slurm_queue
from bench.running.ledger import AnyCell, Ledger
from bench.running.slurm_task import CANCELLED, DONE, OUTCOME, STARTED, read_json, run_task, write_whole
from bench.spec.cells import cell_from_json
from bench.spec.config import SweepSpec

FOLDER = "slurm"
SUBMITTED = "_submitted.pkl"  # submitit's name for a task's pickled call: <job id>_submitted.pkl
TICK_S = 0.5  # how often the tasks' directories are read for outcomes
GRACE_S = 3.0  # after Slurm says a job ended: outcomes it wrote may still be on their way (shared disks)
UNSEEN_S = 30.0  # a job squeue does not list this long after its submission has left squeue's memory
MAX_SUBMISSIONS = 3  # a cell whose jobs keep ending before it starts is recorded, not resubmitted forever
STOP_WAIT_S = 60.0
ROOT = Path(__file__).resolve().parents[2]


def check_available() -> None:
    """Before anything is written: submitit importable and Slurm's commands on the PATH."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise BenchError("--executor slurm needs submitit: pip install 'titans-bench[slurm]'") from None
    missing = [tool for tool in ("sbatch", "srun", "squeue", "scancel") if shutil.which(tool) is None]
    if missing:
        raise BenchError(
            f"--executor slurm: {', '.join(missing)} not found; run it where jobs are submitted to a Slurm "
            "cluster (scripts/slurm/single_node.py starts one on this machine)"
        )


def slurm_device(spec: SweepSpec) -> str:
    """The cells' device, decided for the compute nodes, not for this (often GPU-less) login node:
    "auto" is CUDA when this machine has it or the sweep asks for GPUs per cell."""
    if spec.device != "auto":
        return spec.device
    import torch

    return "cuda" if torch.cuda.is_available() or (spec.slurm.gpus_per_cell or 0) > 0 else "cpu"


def job_name(spec: SweepSpec, run_dir: Path) -> str:
    """One name for every job of a run (the run directory's hash in it), so that squeue and scancel can
    find them all, even one whose submission a killed driver never saw complete."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    return f"bench-{spec.name}-{digest}"


def extra_options(lines: list[str]) -> dict[str, str | bool]:
    """'--constraint=a100' -> {'constraint': 'a100'}, '--exclusive' -> {'exclusive': True}."""
    options: dict[str, str | bool] = {}
    for line in lines:
        name, sep, value = line.removeprefix("#SBATCH").strip().removeprefix("--").partition("=")
        options[name] = value if sep else True
    return options


def sbatch_parameters(spec: SweepSpec, cells: list[AnyCell], cells_per_task: int, name: str) -> dict:
    """submitit's SlurmExecutor parameters for an array of tasks of at most ``cells_per_task`` cells."""
    s = spec.slurm
    cuda = any(c.device == "cuda" for c in cells)
    threads = max((c.threads for c in cells if c.threads), default=None)
    per_cell_min = s.time_per_cell_min or math.ceil(spec.timeout_s / 60) + 1
    params: dict = {
        "job_name": name,
        "time": per_cell_min * cells_per_task + 2,  # + the interpreter's and torch's start
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": s.cpus_per_cell or threads or (4 if cuda else 1),
        # The job imports this checkout's harness, whatever is installed on the node.
        "setup": [f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}", *s.setup],
    }
    gpus = s.gpus_per_cell if s.gpus_per_cell is not None else (1 if cuda else 0)
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.mem_gb:
        params["mem"] = f"{max(1, round(s.mem_gb * 1024))}M"
    params["wckey"] = None  # submitit's default names one, which clusters that enforce wckeys refuse
    if s.extra_sbatch:
        params["additional_parameters"] = extra_options(s.extra_sbatch)
    return params


@contextlib.contextmanager
def _signals_held(deliver: bool = True):
    """SIGINT / SIGTERM wait until the block is over: a submission is never cut between sbatch and the
    bookkeeping of its jobs, nor a cancel half done."""
    caught: list[int] = []
    hold = lambda signum, frame: caught.append(signum)  # noqa: E731
    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught and deliver:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            else:
                os.kill(os.getpid(), caught[0])


@dataclass
class _Task:
    job_id: str
    dir: Path
    cells: list[AnyCell]
    owed: set[int]  # indices of the cells whose outcome this driver still has to record
    submitted_at: float
    ended: tuple[float, str] | None = None  # when squeue first said the job ended, and in what state
    state: str | None = None


class SlurmRun:
    """One round of a sweep on Slurm."""

    def __init__(self, spec: SweepSpec, ledger: Ledger, bar, round_index: int, run_dir: Path):
        self.spec, self.ledger, self.bar, self.round = spec, ledger, bar, round_index
        self.run_dir = run_dir
        self.folder = (run_dir / FOLDER).resolve()
        self.name = job_name(spec, run_dir)
        self.tasks: dict[str, _Task] = {}
        self.counted: set[str] = set()
        self.submissions: Counter[str] = Counter()
        self.manifest = results.read_manifest(run_dir)
        self.placements = [
            {"key": r["key"], "round": r.get("round", 0), "job_id": r["slurm_job_id"],
             "node": r.get("slurm_node"), "partition": r.get("slurm_partition")}
            for r in (results.read_records(run_dir) if (run_dir / results.RESULTS).exists() else [])
            if r.get("slurm_job_id")
        ]  # fmt: skip
        self.manifest_stale = True

    # -- recording ------------------------------------------------------------------------------------

    def _count(self, cell: AnyCell) -> None:
        if cell.key not in self.counted:
            self.counted.add(cell.key)
            self.bar.set_postfix_str(cell.describe, refresh=False)
            self.bar.update()

    def _record(self, cell: AnyCell, outcome: dict) -> None:
        self.ledger.record(cell, outcome, self.round)
        if outcome.get("slurm_job_id"):
            self.placements.append({
                "key": cell.key, "round": self.round, "job_id": outcome["slurm_job_id"],
                "node": outcome.get("slurm_node"), "partition": outcome.get("slurm_partition"),
            })  # fmt: skip
            self.manifest_stale = True
        self._count(cell)

    def _write_manifest(self) -> None:
        if not self.manifest_stale:
            return
        self.manifest["slurm"] = {"job_name": self.name, "folder": str(self.folder), "cells": self.placements}
        results.write_manifest(self.run_dir, self.manifest)
        self.manifest_stale = False

    def _harvest(self, task: _Task) -> None:
        for i in sorted(task.owed):
            outcome = read_json(task.dir / f"{i}{OUTCOME}")
            if outcome is not None:
                task.owed.discard(i)
                self._record(task.cells[i], outcome)

    def _verdict(self, task: _Task, index: int, state: str) -> dict:
        status, why = slurm_queue.verdict(state)
        where = read_json(task.dir / f"{index}{STARTED}") or {"slurm_job_id": task.job_id}
        outcome = {"status": status, "error": f"slurm job {task.job_id} {why} while measuring this cell",
                   "wall_s": 0.0, **where}  # fmt: skip
        if status == "crashed":
            log = self.folder / f"{task.job_id}_0_log.err"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            if tail:
                outcome["stderr_tail"] = tail
        return outcome

    def _finish(self, task: _Task, state: str | None) -> list[AnyCell]:
        """The task's job is over: record what came back, and the verdict on the cell it was measuring
        (on every cell, if it never started one: a job that cannot even start must not be resubmitted);
        return the cells it never started."""
        self._harvest(task)
        self.tasks.pop(task.job_id, None)
        if not (task.dir / DONE).exists():
            started = [i for i in range(len(task.cells)) if (task.dir / f"{i}{STARTED}").exists()]
            for i in sorted(task.owed) if not started else [i for i in started if i in task.owed]:
                task.owed.discard(i)
                self._record(task.cells[i], self._verdict(task, i, state or slurm_queue.UNKNOWN))
        return [task.cells[i] for i in sorted(task.owed)]

    # -- submitting -----------------------------------------------------------------------------------

    def _submit(self, cells: list[AnyCell]) -> None:
        import submitit

        groups: dict[tuple, list[AnyCell]] = {}
        for cell in cells:
            groups.setdefault(cell.group, []).append(cell)
        planned = []
        for group in groups.values():
            task_dir = self.folder / "tasks" / uuid.uuid4().hex[:12]
            task_dir.mkdir(parents=True)
            payload = {
                "task_dir": str(task_dir),
                "round": self.round,
                "cells": [c.model_dump_json() for c in group],
                "timeout_s": self.spec.timeout_s,
                "isolation": self.spec.isolation,
            }
            planned.append((task_dir, group, payload))
        params = sbatch_parameters(self.spec, cells, max(len(g) for g in groups.values()), self.name)
        params["array_parallelism"] = self.spec.slurm.array_parallelism or len(planned)
        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=0)
        try:
            executor.update_parameters(**params)
        except ValueError as err:
            raise BenchError(f"[slurm]: {str(err).splitlines()[0]}") from None
        with _signals_held():
            try:
                with executor.batch():
                    jobs = [executor.submit(run_task, payload) for _, _, payload in planned]
            except Exception as err:  # noqa: BLE001 - sbatch's refusal, in its own words
                lines = [line for line in str(err).splitlines() if "error" in line.lower()] or [str(err)]
                raise BenchError(f"sbatch refused the sweep's jobs: {lines[0].strip()}") from None
            now = time.time()
            for job, (task_dir, group, _) in zip(jobs, planned, strict=True):
                self.tasks[job.job_id] = _Task(job.job_id, task_dir, group, set(range(len(group))), now)
                self.submissions.update(c.key for c in group)

    def _resubmittable(self, cell: AnyCell) -> bool:
        if not self.ledger.settle(cell, self.round):  # the OOM skip rule, as everywhere
            self._count(cell)
            return False
        if self.submissions[cell.key] >= MAX_SUBMISSIONS:
            error = f"its Slurm jobs ended {self.submissions[cell.key]} times before it could be measured"
            self._record(cell, {"status": "crashed", "error": error, "wall_s": 0.0})
            return False
        return True

    # -- finding jobs again (--resume) ------------------------------------------------------------------

    def _adopt(self, known: set[str]) -> None:
        """Tasks of this round submitted by an earlier invocation: outcomes it never recorded are recorded
        now; tasks it cancelled when stopped are done with; the others are waited on like new ones."""
        calls = sorted(self.folder.glob(f"*{SUBMITTED}"), key=lambda p: p.stat().st_mtime) if (
            self.folder.is_dir()) else []  # fmt: skip
        for path in calls:
            try:
                with open(path, "rb") as f:
                    payload = pickle.load(f).args[0]
                cells = [cell_from_json(c) for c in payload["cells"]]
            except Exception:  # noqa: BLE001 - not a call of ours (or torn): nothing to adopt
                continue
            if payload.get("round") != self.round or any(c.key not in known for c in cells):
                continue
            job_id = path.name.removesuffix(SUBMITTED)
            task_dir = self.folder / "tasks" / Path(payload["task_dir"]).name
            owed = {i for i, c in enumerate(cells) if (c.key, self.round) not in self.ledger.done}
            task = _Task(job_id, task_dir, cells, owed, path.stat().st_mtime)
            self._harvest(task)
            taken = {c.key for c in cells}
            for older in self.tasks.values():  # a newer task took over the cells the older never started
                older.owed -= {i for i, c in enumerate(older.cells) if c.key in taken}
            if task.owed and not (task_dir / CANCELLED).exists():
                self.tasks[job_id] = task

    # -- waiting --------------------------------------------------------------------------------------

    def _poll(self) -> None:
        states = slurm_queue.queue_states(self.name)
        if states is None:
            return  # squeue did not answer: no news, not bad news
        now, vanished = time.time(), []
        for task in self.tasks.values():
            state = states.get(task.job_id)
            if state is None:
                if now - task.submitted_at > UNSEEN_S:
                    vanished.append(task)
            elif state.live:
                task.ended, task.state = None, state.state
            elif task.ended is None:
                task.ended = (now, state.state)
        if vanished:
            accounted = slurm_queue.accounting_states([t.job_id for t in vanished])
            for task in vanished:
                known = accounted.get(task.job_id)
                task.ended = task.ended or (now - GRACE_S, known.state if known else slurm_queue.UNKNOWN)
        running = sum(t.state == "RUNNING" and t.ended is None for t in self.tasks.values())
        self.bar.set_postfix_str(f"{running} running, {len(self.tasks) - running} queued", refresh=True)

    def _stop(self) -> None:
        """Cancel every job of the run and wait until the queue holds none; keep what finished."""
        with _signals_held(deliver=False):
            for task in self.tasks.values():
                write_whole(task.dir / CANCELLED, {"at": time.time()})
            slurm_queue.cancel(self.name)
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline:
                states = slurm_queue.queue_states(self.name)
                if states is not None and not any(s.live for s in states.values()):
                    break
                time.sleep(0.5)
            for task in list(self.tasks.values()):
                self._harvest(task)
            self._write_manifest()

    def run(self, cells: list[AnyCell]) -> None:
        self._adopt({c.key for c in cells})
        self.tasks = {job_id: task for job_id, task in self.tasks.items() if task.owed}
        in_flight = {t.cells[i].key for t in self.tasks.values() for i in t.owed}
        pending = []
        for cell in cells:
            if cell.key in in_flight:
                continue
            if self.ledger.settle(cell, self.round):
                pending.append(cell)
            else:
                self._count(cell)
        try:
            if pending:
                self._submit(pending)
            last_poll = -math.inf
            while self.tasks:
                if time.monotonic() - last_poll >= self.spec.slurm.poll_s:
                    self._poll()
                    last_poll = time.monotonic()
                again = []
                for task in list(self.tasks.values()):
                    self._harvest(task)
                    if (task.dir / DONE).exists():
                        again += self._finish(task, None)
                    elif task.ended and time.time() - task.ended[0] >= GRACE_S:
                        again += self._finish(task, task.ended[1])
                again = [c for c in again if self._resubmittable(c)]
                if again:
                    self._submit(again)
                self._write_manifest()
                if self.tasks:
                    time.sleep(TICK_S)
        except BaseException:
            self._stop()
            raise
        self._write_manifest()


def cells_in_flight(run_dir: Path) -> dict[str, str]:
    """Cell key -> Slurm job id of every cell a task has started and not yet reported on (tasks a
    stopped driver cancelled left aside)."""
    found = {}
    for path in (Path(run_dir) / FOLDER).glob(f"*{SUBMITTED}"):
        with open(path, "rb") as f:
            payload = pickle.load(f).args[0]
        task_dir = Path(run_dir) / FOLDER / "tasks" / Path(payload["task_dir"]).name
        if (task_dir / CANCELLED).exists():
            continue
        for i, cell_json in enumerate(payload["cells"]):
            if (task_dir / f"{i}{STARTED}").exists() and not (task_dir / f"{i}{OUTCOME}").exists():
                found[cell_from_json(cell_json).key] = path.name.removesuffix(SUBMITTED)
    return found


def run_slurm(
    cells: list[AnyCell], ledger: Ledger, spec: SweepSpec, bar, round_index: int, run_dir: Path
) -> None:
    SlurmRun(spec, ledger, bar, round_index, run_dir).run(cells)  # run_sweep holds the run's lock
