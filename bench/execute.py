"""Run one cell and classify how it ended: ok, oom, crashed, timeout (diverged comes from accuracy runs).

``run_isolated`` runs the cell in a fresh Python process (asv's model): the peak memory is that cell's
own, and an OOM, a segfault or a hang cannot take the sweep down with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.cells import Cell

STDERR_TAIL = 2000


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def run_in_process(cell: Cell, isolated: bool = False) -> dict:
    """Measure a cell here; exceptions become a status, never propagate."""
    from bench.measure import measure_cell

    start = time.perf_counter()
    try:
        if cell.mode == "accuracy":
            from bench.accuracy import run_accuracy_cell

            record = run_accuracy_cell(cell)
        else:
            record = measure_cell(cell, isolated=isolated)
        record.setdefault("status", "ok")
    except Exception as err:  # noqa: BLE001 - any failure of a cell is recorded, the sweep goes on
        record = {
            "status": "oom" if _is_oom(err) else "crashed",
            "error": f"{type(err).__name__}: {err}"[:STDERR_TAIL],
            "traceback": traceback.format_exc()[-STDERR_TAIL:],
        }
        if _is_oom(err):
            _free_cuda()
    record["wall_s"] = time.perf_counter() - start
    return record


def _free_cuda() -> None:
    try:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def run_isolated(cell: Cell, timeout_s: float) -> dict:
    """Measure a cell in a fresh process with a time limit."""
    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp:
        out_path = Path(tmp) / "result.json"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", str(out_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        try:
            _, stderr = proc.communicate(cell.model_dump_json(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {
                "status": "timeout",
                "error": f"no result after {timeout_s:g} s; killed",
                "wall_s": time.perf_counter() - start,
            }
        if out_path.exists():
            return json.loads(out_path.read_text())
        if proc.returncode < 0:
            reason = f"killed by signal {signal.Signals(-proc.returncode).name}"
        else:
            reason = f"exit code {proc.returncode}"
        # The kernel's OOM killer leaves no Python exception behind, only SIGKILL.
        return {
            "status": "crashed",
            "error": f"worker died ({reason}) without a result",
            "stderr_tail": (stderr or "")[-STDERR_TAIL:],
            "wall_s": time.perf_counter() - start,
        }
