"""The CI gate under load (issue 12's acceptance): with a CPU-burning process beside it on a 2-core
machine, `bench compare` flags a 30% slowdown in at least 9 of 10 base/head pairs and at most 1 of 10
pairs of identical runs, with the settings the README's CI recipe uses (6 rounds of 5 repeats)."""

import subprocess
import sys

import pytest

from bench.cli import main

pytestmark = pytest.mark.slow

BASE_DELAY = 0.020  # seconds per forward call: the "model"
PAIRS = 10


@pytest.fixture
def cpu_burner():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    proc.kill()
    proc.wait()


def test_a_30_percent_slowdown_is_caught_and_identical_runs_pass(tmp_path, cpu_burner):
    delay = tmp_path / "delay"
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        f"""
        modes = ["prefill"]
        seq_lens = [16]
        device = "cpu"
        threads = 1
        d_model = 16
        n_layers = 1
        vocab_size = 32
        repeats = 5
        rounds = 6
        [[models]]  # last: the keys after a table header belong to it
        name = "tests.plugins.faulty:sleepy"
        label = "sleepy"
        args = {{ delay_file = "{delay}" }}
        """
    )

    def run(name: str, seconds: float) -> str:
        delay.write_text(str(seconds))
        out = tmp_path / name
        assert main(["run", str(spec), "--out", str(out), "--no-progress", "--no-report"]) == 0
        return str(out)

    flagged_slow = flagged_same = 0
    for i in range(PAIRS):
        base = run(f"base-{i}", BASE_DELAY)
        flagged_slow += main(["compare", base, run(f"slow-{i}", 1.3 * BASE_DELAY)]) == 1
        flagged_same += main(["compare", base, run(f"same-{i}", BASE_DELAY)]) == 1
    print(f"30% slowdown flagged in {flagged_slow}/{PAIRS} pairs; identical runs in {flagged_same}/{PAIRS}")
    assert flagged_slow >= 9, f"a 30% slowdown was caught in {flagged_slow} of {PAIRS} pairs"
    assert flagged_same <= 1, f"identical runs were flagged in {flagged_same} of {PAIRS} pairs"
