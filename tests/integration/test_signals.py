"""SIGTERM and SIGINT to a sweep's driver: within 10 s every process of the sweep is gone, every finished
cell is kept, the exact command that resumes the run is printed, and resuming finishes the rest."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import results
from bench.cli import main
from tests.helpers import TINY_SWEEP

pytestmark = pytest.mark.slow

SWEEP = ["--models", "tests.plugins.faulty:slow", "--modes", "prefill", "--seq-lens", "16,32,64,128",
         *TINY_SWEEP, "--no-report"]  # fmt: skip


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_sweep_cleanly_and_resume_finishes_it(tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *SWEEP, "--out", str(out)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / results.RESULTS).exists() or not results.read_records(out):
        assert proc.poll() is None and time.monotonic() < deadline, "no cell finished"
        time.sleep(0.2)
    time.sleep(0.5)  # the next cell's worker is measuring now
    sweep = {proc.pid} | descendants(proc.pid)
    assert len(sweep) >= 3  # the driver, the forkserver and a worker
    os.kill(proc.pid, sig)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the driver did not stop within 10 s of {sig.name}")
    end = time.monotonic() + 10
    while any(alive(p) for p in sweep) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [p for p in sweep if alive(p)], "processes of the sweep outlived it"
    stderr = proc.stderr.read()
    assert code == 128 + sig and f"python -m bench run --resume {out}" in stderr, stderr

    kept = {r["key"] for r in results.read_records(out)}
    assert 1 <= len(kept) < 4
    assert main(["run", "--resume", str(out), "--no-progress", "--no-report"]) == 0
    records = results.read_records(out)
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}  # each cell exactly once
    assert kept <= {r["key"] for r in records}
