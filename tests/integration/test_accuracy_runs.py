"""Accuracy cells that really train: a Transformer learns MQAR, and an accuracy sweep runs end to end
through the command line into its report."""

import math

import pytest

from bench import results
from bench.cli import main
from bench.train.cell import run_accuracy_cell
from tests.helpers import TINY_MODEL, accuracy_cell

pytestmark = pytest.mark.slow


def test_transformer_learns_mqar():
    """A real training run: a 2-layer Transformer must learn MQAR far past chance (~0.25 after the
    plateau). Recall appears suddenly; with this recipe (a long warm-up matters: without one, lr 3e-3
    stalls at the plateau) 12 seeds reached 0.99 validation accuracy after 225-325 steps, one after 600.
    Seed 0 takes 275 steps (~15 s on 2 shared cores); the 1,000-step budget leaves a wide margin."""
    task_args = {"vocab_size": 16, "num_kv_pairs": 4, "random_non_queries": False}
    settings = dict(steps=1000, lr=3e-3, warmup_steps=300, eval_every=25, val_samples=128, max_seconds=600)
    record = run_accuracy_cell(accuracy_cell("transformer", "mqar", task_args, 64, **settings))
    assert record["status"] == "ok" and record["stop_reason"] == "converged", record["val_curve"]
    assert record["accuracy"] >= 0.95 and record["steps_run"] < 1000
    assert record["acc_T64"] == record["accuracy"] and not math.isnan(record["acc_T128"])
    losses = [loss for _, loss in record["loss_curve"]]
    assert losses[-1] < 0.1 * min(losses[: len(losses) // 2])


def test_accuracy_sweep_through_the_cli(tmp_path):
    spec = tmp_path / "acc.toml"
    spec.write_text(
        """
        models = ["transformer", "tests.plugins.unstable:build"]
        modes = ["accuracy"]
        device = "cpu"
        threads = 1
        tasks = [{ name = "mqar", args = { vocab_size = 16, num_kv_pairs = 2 } }]
        [accuracy]
        train_len = 16
        eval_factors = [1, 2]
        batch_size = 8
        steps = 6
        warmup_steps = 1
        eval_every = 3
        val_samples = 16
        eval_samples = 16
        """
    )
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), *TINY_MODEL]) == 0
    frame = results.load(out).set_index("label")
    ok, bad = frame.loc["transformer"], frame.loc["tests.plugins.unstable:build"]
    assert ok["status"] == "ok" and bad["status"] == "diverged"  # the sweep went on
    assert ok["mode"] == "accuracy" and ok["task"] == "mqar" and ok["train_len"] == 16
    assert ok["vocab_size"] == 16 and ok["steps_run"] == 6 and ok["stop_reason"] == "steps"
    # validated every 3 steps and at 80% of the budget, for the convergence check
    assert [step for step, _ in ok["val_curve"]] == [3, 5, 6] and len(ok["loss_curve"]) == 6
    assert [e["eval_len"] for e in ok["accuracy_by_len"]] == [16, 32]
    assert all(0 <= e["accuracy"] <= 1 and e["state_bytes"] > 0 for e in ok["accuracy_by_len"])
    assert ok["accuracy_by_len"][1]["state_bytes"] == 2 * ok["accuracy_by_len"][0]["state_bytes"]  # KV cache
    assert ok["acc_T16"] == ok["accuracy"] and ok["n_params"] > 0 and ok["backend"] == "sdpa-flash"
    assert "nan" in bad["error"]

    report = (out / "REPORT.md").read_text()
    assert "## Accuracy: synthetic recall, trained from scratch" in report
    assert "| model | mqar T=16 | mqar T=32 |" in report
    assert "| tests.plugins.unstable:build | div. | div. |" in report
    assert "| accuracy: mqar | 16 | 8 | diverged |" in report  # among the cells that did not finish
    for png in ("accuracy_heatmap.png", "training_curves.png", "accuracy_vs_state.png"):
        assert (out / png).stat().st_size > 1000
    assert "Training throughput" not in report  # an accuracy-only run has no timing section


def test_a_grid_of_learning_rates_and_seeds_through_the_cli(tmp_path):
    """Every run of the grid is kept; the report shows the chosen rate, the mean over seeds with its
    interval, the beyond-training-length columns and the distance heatmap. The models recall exactly what
    lies 4 or 64 tokens back (tests/plugins/window_recall.py), so the numbers are known."""
    spec = tmp_path / "grid.toml"
    spec.write_text(
        """
        models = [
            { name = "tests.plugins.window_recall:build", label = "reach-4", args = { reach = 4 } },
            { name = "tests.plugins.window_recall:build", label = "reach-64", args = { reach = 64 } },
        ]
        modes = ["accuracy"]
        device = "cpu"
        tasks = [{ name = "mqar", args = { vocab_size = 16, num_kv_pairs = 2, random_non_queries = false } }]
        [accuracy]
        train_len = 16
        eval_factors = [1, 2, 4]
        batch_size = 8
        steps = 4
        warmup_steps = 1
        eval_every = 2
        val_samples = 16
        eval_samples = 32
        lrs = [1e-3, 3e-3]
        lr_extend = 0  # the grid as given (its growth beyond an edge: tests/harness/test_lr_grid.py)
        seeds = [0, 1]
        threads = 1
        """
    )
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), *TINY_MODEL]) == 0
    frame = results.load(out)
    assert len(frame) == 8 and frame["key"].nunique() == 8  # 2 models x 2 rates x 2 seeds, all kept
    assert sorted({(c["lr"], s) for c, s in zip(frame["train"], frame["seed"], strict=True)}) == [
        (1e-3, 0),
        (1e-3, 1),
        (3e-3, 0),
        (3e-3, 1),
    ]
    near = frame[frame["label"] == "reach-4"].iloc[0]
    beyond = [e["beyond_train"] for e in near["accuracy_by_len"]]
    assert beyond == [None, 0.0, 0.0]  # nothing beyond 16 tokens back
    report = (out / "REPORT.md").read_text()
    assert (
        "| model | mqar T=16 | mqar T=32 | mqar T=32, d>16 | mqar T=64 | mqar T=64, d>16 | context | lr |"
        in report
    )
    # Two seeds that agree at 100%: the t interval has no width, so Wilson's over the 2 x 32 examples shows
    assert "| reach-64 | 100.0 [94–100], 2 of 2 solved | 100.0 [94–100] | 100.0 [94–100] |" in report
    assert report.count("| ✓ |") == 2 and "Student's t over the 2 seeds" in report
    assert (out / "accuracy_by_distance.png").stat().st_size > 1000
