"""Asking Slurm about a run's jobs, and what a job's end means for the cell it was measuring.

The executor needs no accounting database: ``squeue --states=all`` lists finished jobs too, with the
state they ended in (TIMEOUT, OUT_OF_MEMORY, PREEMPTED, CANCELLED, NODE_FAIL, ...), for ``MinJobAge``
seconds after their end (300 by default). Only a job that has left squeue's memory is looked up with
``sacct``, where the cluster keeps accounting; without it such a job's end is recorded as unknown.
Every call has a time limit, and a failed call means "no news", never "the job is gone".
"""

from __future__ import annotations

import getpass
import subprocess
from dataclasses import dataclass

CALL_TIMEOUT_S = 60

# States in which a job may still run its cells (squeue's long names).
LIVE = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD",
})  # fmt: skip

# A job that ended without an outcome for the cell it was measuring: that cell's status and why.
VERDICTS = {
    "TIMEOUT": ("timeout", "reached its time limit"),
    "DEADLINE": ("timeout", "reached its deadline"),
    "OUT_OF_MEMORY": ("oom", "ran out of memory (killed at its memory limit)"),
    "PREEMPTED": ("preempted", "was preempted"),
    "CANCELLED": ("crashed", "was cancelled"),
    "NODE_FAIL": ("crashed", "lost its node (node failure)"),
    "BOOT_FAIL": ("crashed", "could not boot its node"),
    "FAILED": ("crashed", "failed"),
    "COMPLETED": ("crashed", "ended without an outcome for this cell"),
}
UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class JobState:
    state: str
    node: str | None = None
    partition: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE


def verdict(state: str) -> tuple[str, str]:
    if state in VERDICTS:
        return VERDICTS[state]
    if state == UNKNOWN:
        return "crashed", (
            "left the queue without an outcome for this cell, and without accounting (sacct) Slurm no "
            "longer says how it ended"
        )
    return "crashed", f"ended in state {state}"


def _run(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CALL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _parse(text: str) -> dict[str, JobState]:
    found = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_id, state, node, partition = parts[:4]
        state = state.split()[0] if state.split() else UNKNOWN  # sacct says "CANCELLED by 0"
        found[job_id] = JobState(state, node or None, partition or None)
    return found


def queue_states(job_name: str) -> dict[str, JobState] | None:
    """Every job of this name squeue remembers, array tasks one by one (``123_4``); None if squeue
    could not be asked."""
    text = _run(["squeue", "--noheader", "--array", "--states=all", f"--name={job_name}",
                 "--format=%i|%T|%N|%P"])  # fmt: skip
    return None if text is None else _parse(text)


def accounting_states(job_ids: list[str]) -> dict[str, JobState]:
    """How jobs that left squeue ended, from sacct; empty where the cluster keeps no accounting."""
    if not job_ids:
        return {}
    text = _run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}",
                 "--format=JobID,State,NodeList,Partition"])  # fmt: skip
    return {} if text is None else _parse(text)


def cancel(job_name: str) -> bool:
    """Cancel every job of this name of this user, submitted or still being submitted."""
    return _run(["scancel", "--quiet", f"--name={job_name}", f"--user={getpass.getuser()}"]) is not None
