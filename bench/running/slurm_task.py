"""What one Slurm job-array task does, and the files through which it reports to the driver.

A task measures a group's cells (one model, mode, batch size and dtype; its lengths ascending) one after
the other, each in a fresh process with the sweep's timeout, exactly as the local executor does. Each
cell leaves two files in the task's directory, both written whole (rename) so a reader never sees half:

    <i>.started   the job id, node and partition, written before the cell starts
    <i>.json      the cell's outcome, the record the driver appends to results.jsonl
    done          the task went through its cells (after an OOM it stops: the driver skips the rest)
    cancelled     written by the driver before it cancels the task's job (a stopped sweep): what had no
                  outcome then was not a failure, and --resume runs it again

A cell with a ``.started`` file and no outcome was in flight when the job ended: the driver asks Slurm
how the job ended (time limit, out of memory, preemption, cancel, node failure) and records that.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from bench.running.isolation import run_in_process, run_isolated, shutdown
from bench.spec.cells import cell_from_json

STARTED, OUTCOME, DONE, CANCELLED = ".started", ".json", "done", "cancelled"


def write_whole(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def slurm_identity() -> dict:
    """Where this job runs, as Slurm tells its tasks: an array task's id is ARRAYID_INDEX, as squeue shows."""
    env = os.environ
    array, index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {
        "slurm_job_id": f"{array}_{index}" if array and index else env.get("SLURM_JOB_ID"),
        "slurm_node": env.get("SLURMD_NODENAME"),
        "slurm_partition": env.get("SLURM_JOB_PARTITION"),
    }


def oom_kills(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """How many processes of this job's memory cgroup the OOM killer has killed (cgroup v2's
    memory.events, v1's memory.oom_control); None where neither can be read (no cgroup, or
    Slurm's TaskPlugin does not use them)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidate = Path(root) / path.lstrip("/") / "memory.events"
        elif "memory" in controllers.split(","):
            candidate = Path(root) / "memory" / path.lstrip("/") / "memory.oom_control"
        else:
            continue
        try:
            for entry in candidate.read_text().splitlines():
                name, _, value = entry.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


class _Stop(BaseException):
    """Slurm is ending this job: SIGTERM (cancel, preemption, the time limit) or the warning signal that
    the time limit is near. A BaseException, so the cell's process is killed on its way out."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Signals:
    """Raise _Stop only while a cell is measured; between cells just note it, so a finished outcome is
    still written whole and the loop ends before the next cell."""

    def __init__(self):
        self.measuring = False
        self.reason: str | None = None
        # submitit asks Slurm for this signal shortly before the time limit (SUBMITIT_PREEMPT_SIGNAL).
        warning = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        self.previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._handler("stopped")),
            warning: signal.signal(warning, self._handler("time limit")),
        }

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handler(self, reason: str):
        def handle(signum, frame):
            self.reason = self.reason or reason
            if self.measuring:
                raise _Stop(reason)

        return handle


def _killed_by_sigterm(outcome: dict) -> bool:
    return outcome.get("status") == "crashed" and "SIGTERM" in str(outcome.get("error", ""))


def run_task(payload: dict) -> dict:
    """The function submitit runs in the job. ``payload``: the task's directory, the cells (JSON), the
    sweep's timeout and isolation."""
    task_dir = Path(payload["task_dir"])
    where = slurm_identity()
    signals = _Signals()
    measured = 0
    try:
        for i, cell_json in enumerate(payload["cells"]):
            if signals.reason:
                return {"stopped": signals.reason, "measured": measured}
            outcome_path, started_path = task_dir / f"{i}{OUTCOME}", task_dir / f"{i}{STARTED}"
            earlier = read_json(outcome_path)
            if earlier is not None:  # Slurm requeued this task: what it measured before stays
                if earlier.get("status") == "oom":
                    break
                continue
            if started_path.exists():  # in flight when the job was requeued: recorded, never retried here
                before = read_json(started_path) or {}
                write_whole(outcome_path, {
                    "status": "preempted",
                    "error": f"slurm job {before.get('slurm_job_id')} was requeued while measuring this cell",
                    "wall_s": 0.0, **before,
                })  # fmt: skip
                continue
            write_whole(started_path, where)
            cell = cell_from_json(cell_json)
            kills = oom_kills()
            signals.measuring = True
            try:
                if payload["isolation"] == "process":
                    outcome = run_isolated(cell, payload["timeout_s"])
                else:
                    outcome = run_in_process(cell)
            except _Stop as stop:
                if stop.reason != "time limit":
                    return {"stopped": stop.reason, "measured": measured}
                error = "the Slurm job's time limit came first"
                write_whole(outcome_path, {"status": "timeout", "error": error, "wall_s": 0.0, **where})
                return {"stopped": stop.reason, "measured": measured}
            finally:
                signals.measuring = False
            if _killed_by_sigterm(outcome):
                # Slurm is ending the job (cancel, preemption, time limit); it says which, not this task.
                return {"stopped": "SIGTERM", "measured": measured}
            if outcome.get("status") == "crashed" and kills is not None and (oom_kills() or 0) > kills:
                outcome = {**outcome, "status": "oom", "error": f"killed by the job's memory limit (cgroup); "
                           f"{outcome.get('error', '')}"}  # fmt: skip
            write_whole(outcome_path, {**outcome, **where})
            measured += 1
            if outcome.get("status") == "oom":
                break
        write_whole(task_dir / DONE, {"measured": measured, **where})
        return {"measured": measured}
    finally:
        signals.restore()
        shutdown()
