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
    # 20 ms a call: a sub-millisecond call's rounds scatter too widely on a shared machine to rule
    # anything out, which is what a pass needs
    for name, delay in (("a", "0.02"), ("b", "0.02"), ("slow", "0.3")):
        env = {**os.environ, "TITANS_BENCH_TEST_DELAY": delay}
        proc = subprocess.run(
            [sys.executable, "-m", "bench", *args, "--out", str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    # A generous ratio threshold (4x) lets identical runs pass even when a shared CI machine scatters their
    # rounds, while a 300 ms sleep per forward (15x) is far beyond it.
    strict = ["--threshold", "3.0"]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a"), *strict]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), *strict]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "slow"), *strict]) == 1
    # the last round alone: its repeats can show a slowdown, never a pass (3 repeats a side reach p = 0.1)
    last = [tmp_path / f"{name}-last.jsonl" for name in ("a", "b")]
    for name, path in zip(("a", "b"), last, strict=True):
        lines = (tmp_path / name / "results.jsonl").read_text().splitlines()
        path.write_text("\n".join(line for line in lines if '"round": 4' in line) + "\n")
    assert main(["compare", str(last[0]), str(last[1]), *strict, "--alpha", "0.2"]) == 4
