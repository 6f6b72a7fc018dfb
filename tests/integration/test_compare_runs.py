"""`bench compare` on real sweeps of a test plug-in: a slowed model is flagged, identical runs pass when
rounds show it, and one round a side never passes."""

import os
import subprocess
import sys

import pytest

from bench.cli import main
from tests.helpers import tiny_sweep

pytestmark = pytest.mark.slow


def test_end_to_end_a_slowed_model_is_flagged_and_identical_runs_are_not(tmp_path):
    """The CI self-check: three real sweeps of a test-only model; the third made slower by a sleep."""
    args = ["run", "--models", "tests.plugins.faulty:sleepy", "--seq-lens", "16", "--modes", "prefill",
            *tiny_sweep("--repeats", "3", "--rounds", "5"), "--no-report"]  # fmt: skip
    for name, delay in (("a", "0"), ("b", "0"), ("slow", "0.3")):
        env = {**os.environ, "TITANS_BENCH_TEST_DELAY": delay}
        proc = subprocess.run(
            [sys.executable, "-m", "bench", *args, "--out", str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    # A generous ratio threshold keeps a noisy shared CI machine from flagging two identical runs,
    # while a 300 ms sleep per forward is far beyond it.
    strict = ["--threshold", "1.0"]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), *strict]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "slow"), *strict]) == 1
    # the last round alone: its repeats can show a slowdown, never a pass (3 repeats a side reach p = 0.1)
    last = [tmp_path / f"{name}-last.jsonl" for name in ("a", "b")]
    for name, path in zip(("a", "b"), last, strict=True):
        lines = (tmp_path / name / "results.jsonl").read_text().splitlines()
        path.write_text("\n".join(line for line in lines if '"round": 4' in line) + "\n")
    assert main(["compare", str(last[0]), str(last[1]), *strict, "--alpha", "0.2"]) == 4
