"""Learning rates chosen by validation loss on a grid that brackets the choice: a real sweep of a model
whose best rate lies far above the sweep's grid grows the grid until the choice is bracketed; rates tied
at 100% validation accuracy are told apart by their loss; the report says what was extended."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.registry import register_task
from bench.results import load_rows
from bench.results.lr_choice import choose_lrs, next_rate
from bench.scoring import Examples
from bench.tasks.base import Task, TaskConfig


class ConstantConfig(TaskConfig):
    vocab_size: int = 8


@register_task("test-constant")
class Constant(Task):
    """Every target is token 0, whatever the inputs."""

    Config = ConstantConfig

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def generate(self, n: int, seq_len: int, seed: int, train_len: int | None = None) -> Examples:
        inputs = torch.randint(
            1, self.vocab_size, (n, seq_len), generator=torch.Generator().manual_seed(seed)
        )
        return Examples(inputs, torch.zeros_like(inputs), torch.ones_like(inputs))


pytestmark = pytest.mark.slow  # real sweeps (in-process), about a minute

SWEEP = """
name = "grid"
models = ["tests.plugins.lr_probe:build"]
modes = ["accuracy"]
device = "cpu"
isolation = "none"
tasks = ["test-constant"]

[accuracy]
train_len = 8
eval_factors = [1]
batch_size = 4
steps = 30
warmup_steps = 3
eval_every = 10
threshold = false
val_samples = 8
eval_samples = 8
lrs = [1e-3, 3e-3, 1e-2]
lr_extend = 5
"""


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    (root / "sweep.toml").write_text(SWEEP)
    assert main(["run", str(root / "sweep.toml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def test_the_grid_extends_until_it_brackets_a_rate_above_it(grid_run):
    rows = load_rows(grid_run)
    tried = sorted(r.lr for r in rows)
    # x3 a step from the grid's top edge until a step is worse: 0.81 loses to 0.27, and there it stops.
    assert tried == [1e-3, 3e-3, 1e-2, 0.03, 0.09, 0.27, 0.81]
    assert [r.lr_origin for r in sorted(rows, key=lambda r: r.lr)] == ["grid"] * 3 + ["extended"] * 4
    choice = choose_lrs(rows)[("tests.plugins.lr_probe:build", "test-constant")]
    assert choice.lr == 0.27 and choice.rule == "validation loss"
    assert next_rate(rows, [1e-3, 3e-3, 1e-2], 5) is None  # bracketed: nothing left to try
    report = (grid_run / "REPORT.md").read_text()
    assert (
        "Grids extended: tests.plugins.lr_probe:build on test-constant (+3e-2, 9e-2, 3e-1, 8e-1)." in report
    )
    assert "Still at an edge" not in report


def test_a_tie_in_accuracy_is_broken_by_validation_loss(grid_run):
    rows = {r.lr: r for r in load_rows(grid_run)}
    tied = [rows[lr] for lr in (0.09, 0.27, 0.81)]
    assert all(r.val_accuracy == 1.0 for r in tied)  # every target right at all three rates
    losses = [r.val_loss for r in tied]
    assert len(set(losses)) == 3 and min(losses) == rows[0.27].val_loss  # the loss tells them apart


def test_a_capped_extension_is_reported_at_the_edge(tmp_path):
    (tmp_path / "sweep.toml").write_text(SWEEP.replace("lr_extend = 5", "lr_extend = 1"))
    assert main(["run", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    rows = load_rows(tmp_path / "run")
    assert sorted(r.lr for r in rows) == [1e-3, 3e-3, 1e-2, 0.03]
    report = (tmp_path / "run" / "REPORT.md").read_text()
    assert "**Still at an edge of the rates tried** (`lr_extend` allowed no further growth)" in report
    assert "on test-constant (3e-2, upper edge)" in report
    # resuming finds the extension done: the same cells, nothing added twice
    assert main(["run", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(x)["key"] for x in lines}) == 4


def test_the_grid_grows_past_divergence_but_not_past_failures_a_rate_does_not_cause():
    """Every rate failed: when they diverged, a smaller rate may train, so the grid grows downward; when
    they ran out of memory, crashed or timed out, a new rate would fail the same way, so it does not."""
    from tests.harness.test_report_accuracy import record

    def runs(status):
        return [record("m", lr, seed, None, (0.0, 0.0), status=status, lr_origin="grid")
                for lr in (1e-3, 3e-3, 1e-2) for seed in range(3)]  # fmt: skip

    assert next_rate(runs("diverged"), [1e-3, 3e-3, 1e-2], 1) == 3.33e-4  # 1e-3 / 3, to 3 digits
    for status in ("oom", "crashed", "timeout"):
        assert next_rate(runs(status), [1e-3, 3e-3, 1e-2], 1) is None, status
