"""The early stop of bench/train/loop.py: under the "converged" rule a run at the accuracy ceiling goes on
until its validation loss has stopped falling, so the loss it leaves (what the learning rate is chosen by)
is not the loss at whichever step it first reached the ceiling; the "ceiling" rule stops at once."""

from contextlib import nullcontext

import torch

from bench.scoring import Examples, Validation
from bench.spec.config import TrainSettings
from bench.train.loop import train


def scripted_run(validations: list[tuple[float, float]], **settings) -> dict:
    """Train a one-layer model whose validations return ``validations`` in turn ((loss, accuracy) at
    steps 10, 20, ...; the last repeats)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8))
    calls = iter(range(10**6))

    def next_batch() -> Examples:
        x = torch.randint(0, 8, (4, 6))
        return Examples(x, x, torch.zeros_like(x))

    def validate() -> Validation:
        loss, acc = validations[min(next(calls), len(validations) - 1)]
        return Validation(loss, acc)

    s = TrainSettings(steps=200, eval_every=10, warmup_steps=1, threshold=0.99, **settings)
    return train(model, next_batch, validate, s, nullcontext, True, "accuracy", True)


# At the ceiling from step 30 on; the loss keeps falling fast until step 100 and is flat from there.
AT_CEILING_STILL_LEARNING = (
    [(1.0, 0.5), (0.5, 0.9)] + [(0.4 - 0.05 * i, 0.995) for i in range(8)] + [(0.02, 1.0)]
)


def test_the_converged_rule_runs_on_past_the_ceiling_until_the_loss_settles():
    out = scripted_run(AT_CEILING_STILL_LEARNING)
    assert out["stop_reason"] == "converged"
    # The loss reached 0.02 at step 110; the check compares a validation at 80% of the steps run with the
    # last one, so the stop comes once both are on the flat part: not before step 110 (~110 / 0.8).
    assert 110 < out["steps_run"] < 200
    assert out["val_loss"] == 0.02 and out["still_improving"] is False
    assert out["val_loss_drop_last_20pct"] <= 0.01


def test_the_ceiling_rule_stops_at_the_first_validation_at_the_ceiling():
    out = scripted_run(AT_CEILING_STILL_LEARNING, stop_rule="ceiling")
    assert out["stop_reason"] == "threshold" and out["steps_run"] == 30
    assert out["val_loss"] == 0.4  # the loss the "converged" rule would not have stopped at


def test_a_run_below_the_ceiling_trains_its_whole_budget():
    out = scripted_run([(1.0 - 0.001 * i, 0.5) for i in range(30)])
    assert out["stop_reason"] == "steps" and out["steps_run"] == 200


def test_the_ceiling_reached_at_the_last_step_is_the_budget_ending_and_its_convergence_is_checked():
    """Under the "ceiling" rule a run first at the ceiling on its very last step used its whole budget: its
    stop is the budget's, and whether it was still learning is measured, not assumed."""
    falling = [(1.0 - 0.04 * i, 0.5) for i in range(19)] + [(0.2, 0.995)]  # steps 10..190 below, 200 at it
    out = scripted_run(falling, stop_rule="ceiling")
    assert out["stop_reason"] == "steps" and out["steps_run"] == 200
    assert out["still_improving"] is True and out["val_loss_drop_last_20pct"] > 0.1
