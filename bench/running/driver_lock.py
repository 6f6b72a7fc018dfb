"""One driver per run, whatever the executor: two would measure the same cells, append the same records
and share the machine's cores (which spoils every timing), or submit the same Slurm jobs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bench.errors import BenchError

LOCK = ".bench-driver.lock"  # hidden: a run folder's visible files are its results, report and specs


@contextlib.contextmanager
def sole_driver(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock while the run goes on. The lock dies with its process, so a driver killed
    with SIGKILL never blocks the --resume that follows."""
    with open(run_dir / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise BenchError(
                f"{run_dir} is being run by another invocation (pid {lock.read().strip() or '?'}); wait for "
                "it or stop it, or give --out another folder"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield
