"""The CI gate under load (issues 12 and 24): with a CPU-burning process beside it on a 2-core machine,
`bench compare` never passes a 30% slowdown (it is a regression, or inconclusive: exit 1 or 4) in at
least 9 of 10 base/head pairs, and calls identical runs a regression in at most 1 of 10, with the
settings the README's CI recipe uses (6 rounds of 5 repeats). How often identical runs pass is printed:
that is what the load costs, the gate's honesty is what is asserted."""

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

    slow, same = [], []
    for i in range(PAIRS):
        base = run(f"base-{i}", BASE_DELAY)
        slow.append(main(["compare", base, run(f"slow-{i}", 1.3 * BASE_DELAY)]))
        same.append(main(["compare", base, run(f"same-{i}", BASE_DELAY)]))
    print(
        f"30% slowdown: regression {slow.count(1)}, inconclusive {slow.count(4)}, pass {slow.count(0)} of "
        f"{PAIRS}; identical: regression {same.count(1)}, inconclusive {same.count(4)}, pass {same.count(0)}"
    )
    assert set(slow + same) <= {0, 1, 4}, f"a comparison could not be made: exit codes {slow}, {same}"
    flagged = slow.count(1) + slow.count(4)
    assert flagged >= 9, f"a 30% slowdown passed in {PAIRS - flagged} of {PAIRS} pairs (exit codes {slow})"
    assert same.count(1) <= 1, f"identical runs were called a regression in {same.count(1)} of {PAIRS} pairs"
