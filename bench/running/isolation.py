"""Run one cell and classify how it ended: ok, oom, crashed, timeout (diverged comes from accuracy runs).

``run_isolated`` runs the cell in a fresh process (asv's model): the peak memory is that cell's own, and
an OOM, a segfault or a hang cannot take the sweep down with it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.failures import free_cuda, is_oom
from bench.measure.cell import measure_cell
from bench.plugins import describe_failure, model_name
from bench.spec.cells import AccuracyCell, TimingCell, cell_from_json
from bench.train.cell import run_accuracy_cell

STDERR_TAIL = 2000


def run_in_process(cell: TimingCell | AccuracyCell, isolated: bool = False) -> dict:
    """Measure a cell here; exceptions become a status, never propagate."""
    start = time.perf_counter()
    try:
        if isinstance(cell, AccuracyCell):
            record = run_accuracy_cell(cell)
        else:
            record = measure_cell(cell, isolated=isolated)
        record.setdefault("status", "ok")
    except Exception as err:  # noqa: BLE001 - any failure of a cell is recorded, the sweep goes on
        record = {
            "status": "oom" if is_oom(err) else "crashed",
            "error": describe_failure(err, model_name(cell.model, cell.label))[:STDERR_TAIL],
            "traceback": traceback.format_exc()[-STDERR_TAIL:],
        }
        if is_oom(err):
            free_cuda()
    record["wall_s"] = time.perf_counter() - start
    return record


_context = None

# How a cell's OpenMP threads wait for each other at the end of a parallel region. By default they spin
# for a while, so when another job holds a core, a thread spins on one core while the partner it waits
# for waits for the other. Measured on the 2-core machine with a CPU-burning job beside it (and other
# load), prefill at T=1024, 2 threads, median over 5-6 rounds of each round's median call (range):
# mamba 698 ms (680-2863) spinning, 75 ms (40-158) passive, 160 ms (40-305) with one thread;
# transformer 1094 ms (703-1876), 28 ms (25-52), 84 ms (48-265). Passive waiting was the fastest and the
# steadiest, and costs a quiet machine only a wake-up per region. A user's own setting is kept; the cell
# records the one it ran under.
THREAD_WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


def _passive_thread_waiting() -> None:
    """OpenMP reads the policy when it starts, in the forkserver's first import of torch: it is set in the
    environment the server inherits, before the server starts."""
    name, value = THREAD_WAIT_POLICY
    os.environ.setdefault(name, value)


def _fork_context():
    """A forkserver that imports torch, the harness and the built-in models once (``preload``): each cell
    is then a fresh process forked from it in milliseconds, instead of a new interpreter that spends
    seconds importing torch. The server runs no torch code, so no thread pool is forked in a locked state."""
    global _context
    if _context is None:
        _passive_thread_waiting()
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["torch", "bench.running.isolation", "bench.running.preload"])
    return _context


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """Ask the kernel to kill this worker when its parent, the forkserver, goes; the forkserver goes when
    the sweep's driver does, so even a SIGKILLed driver leaves no worker measuring on."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the driver's own cleanup still kills the worker
        return
    if os.getppid() == 1:  # the parent was gone before the request took effect
        os._exit(1)


def shutdown() -> None:
    """Stop the forkserver (its workers die with it), e.g. after an interrupted sweep."""
    global _context
    if _context is None:
        return
    # multiprocessing has no public way to stop its forkserver; its own _stop closes the pipe and reaps it.
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)
    if callable(stop):
        stop()
    _context = None


def _child(cell_json: str, out_path: str, stderr_path: str) -> None:
    _die_with_parent()
    # What the forkserver imported lives as long as this process: out of the collector's sight, a full
    # collection between the cell's phases (bench.measure.memory) walks the cell's objects only, about
    # 5 ms instead of 0.25 s over the runtime's.
    gc.freeze()
    # The cell's own stderr goes to a file, so a crash can be reported with its last lines.
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    record = run_in_process(cell_from_json(cell_json), isolated=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, out_path)  # the parent sees a whole result or none


class IsolatedRun:
    """One cell measured in a fresh process with a time limit, started at once and collected later, so
    that an executor may keep several in flight: ``start``, then ``done`` (finished or out of time),
    then ``outcome``; ``kill`` ends it."""

    def __init__(self, cell: TimingCell | AccuracyCell, timeout_s: float):
        self.cell, self.timeout_s = cell, timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-cell-")
        self.out_path = Path(self._tmp.name) / "result.json"
        self.stderr_path = Path(self._tmp.name) / "stderr.txt"
        self.start = time.perf_counter()
        self.proc = _fork_context().Process(
            target=_child, args=(cell.model_dump_json(), str(self.out_path), str(self.stderr_path))
        )
        self.proc.start()

    @property
    def sentinel(self) -> int:
        return self.proc.sentinel

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.start >= self.timeout_s

    def done(self) -> bool:
        return not self.proc.is_alive() or self.out_of_time()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self._tmp.cleanup()

    def outcome(self) -> dict:
        """The cell's result, once ``done``: its record, or how the worker ended without one."""
        try:
            if self.proc.is_alive():  # out of time
                self.proc.kill()
                self.proc.join()
                return {
                    "status": "timeout",
                    "error": f"no result after {self.timeout_s:g} s; killed",
                    "wall_s": time.perf_counter() - self.start,
                }
            self.proc.join()
            if self.out_path.exists():
                return json.loads(self.out_path.read_text())
            code = self.proc.exitcode
            reason = (
                f"killed by signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
            )
            stderr = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
            # The kernel's OOM killer leaves no Python exception behind, only SIGKILL.
            return {
                "status": "crashed",
                "error": f"worker died ({reason}) without a result",
                "stderr_tail": stderr[-STDERR_TAIL:],
                "wall_s": time.perf_counter() - self.start,
            }
        finally:
            self._tmp.cleanup()


def run_isolated(cell: TimingCell | AccuracyCell, timeout_s: float) -> dict:
    """Measure a cell in a fresh process with a time limit."""
    run = IsolatedRun(cell, timeout_s)
    try:
        run.proc.join(timeout_s)
    except BaseException:  # an interrupted sweep (SIGINT, SIGTERM) ends its worker before it goes
        run.kill()
        raise
    return run.outcome()
