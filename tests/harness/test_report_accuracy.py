"""The accuracy report: the learning rate chosen by validation, the mean and interval over seeds, the
beyond-training-length columns, the seconds cap shown as such, the smoke-test label and the difficulty
sweep, from records made by hand (and one real capped cell)."""

import itertools

import pandas as pd
import pytest

from bench.analysis.report import accuracy_sections
from bench.analysis.sections.recall import difficulty_axis, smoke_note, table, time_text
from bench.analysis.selection import by_length, choose_lrs, summarize, training_table
from bench.analysis.stats import t_interval, wilson_interval
from bench.results import parse_row
from bench.train.cell import run_accuracy_cell
from tests.helpers import accuracy_cell, stored

KEYS = itertools.count()


def record(label, lr, seed, val, acc, beyond=None, status="ok", steps=100, task="mqar", **extra):
    """A stored accuracy record: trained at 32, evaluated at 32 and 64 (``acc``, ``beyond`` at 64)."""
    entries = [
        {"eval_len": 32, "accuracy": acc[0], "n_examples": 100, "state_bytes": 10, "by_distance": []},
        {
            "eval_len": 64,
            "accuracy": acc[1],
            "beyond_train": beyond,
            "n_examples": 100,
            "beyond_train_examples": 80,
            "state_bytes": 20,
            "by_distance": [
                {"max_distance": 32, "correct": 10, "total": 20},
                {"max_distance": 64, "correct": 0, "total": 80},
            ],
        },
    ]
    if status != "ok":
        entries = [{**e, "accuracy": None} for e in entries]
    return parse_row(
        {
            "key": f"k{next(KEYS)}",
            "mode": "accuracy",
            "label": label,
            "model": label,
            "model_args": {},
            "task": "mqar",
            "task_label": task,
            "task_args": {"num_kv_pairs": 4},
            "seq_len": 32,
            "d_model": 64,
            "n_layers": 2,
            "status": status,
            "train": {"lr": lr, "steps": 600},
            "seed": seed,
            "val_accuracy": val if status == "ok" else None,
            "steps_run": steps,
            "stop_reason": "steps",
            "cap_bound": False,
            "accuracy_by_len": entries,
            "train_seconds": 1.0,
            "final_loss": 0.1,
            "n_params": 1000,
            "state_bytes": 10,
            **extra,
        }
    )


def test_without_a_validation_loss_the_learning_rate_is_chosen_by_mean_validation_accuracy():
    """Records written before the validation loss was recorded keep the rule they were made under."""
    cells = [
        # lr 1e-3 has the best single run (0.99) but the worse mean (0.6); 3e-3 wins on the mean
        record("a", 1e-3, 0, 0.99, (0.99, 0.5)),
        record("a", 1e-3, 1, 0.21, (0.2, 0.1)),
        record("a", 3e-3, 0, 0.80, (0.8, 0.7), beyond=0.6),
        record("a", 3e-3, 1, 0.90, (0.9, 0.6), beyond=0.5),
        # both reached the early-stopping threshold (0.99): a tie, to the rate that got there first
        record("b", 1e-3, 0, 1.0, (1.0, 0.9), steps=300, train={"lr": 1e-3, "threshold": 0.99}),
        record("b", 1e-2, 0, 0.992, (1.0, 0.4), steps=150, train={"lr": 1e-2, "threshold": 0.99}),
        # a diverged run counts as 0, never as a missing value that would let its rate win
        record("c", 1e-2, 0, None, (None, None), status="diverged"),
        record("c", 1e-3, 0, 0.3, (0.3, 0.2)),
    ]
    choices = choose_lrs(cells)
    assert [(label, c.lr) for (label, _), c in choices.items()] == [("a", 3e-3), ("b", 1e-2), ("c", 1e-3)]
    assert {c.rule for c in choices.values()} == {"validation score"}
    summary = summarize(by_length(cells)).set_index(["label", "eval_len"])
    a = summary.loc[("a", 64)]
    assert a["accuracy"] == pytest.approx(0.65) and a["seeds"] == 2  # the mean over seeds
    _, low, high = t_interval([0.7, 0.6])  # wider than Wilson's over the 200 examples: t decides
    assert (a["accuracy_low"], a["accuracy_high"]) == pytest.approx((max(0, low), min(1, high)))
    assert low < wilson_interval(130, 200)[0]
    assert a["beyond_train"] == pytest.approx(0.55)
    b = summary.loc[("b", 64)]  # one seed: Wilson over the examples
    assert (b["accuracy_low"], b["accuracy_high"]) == pytest.approx(wilson_interval(40, 100))
    assert pd.isna(b["beyond_train"]) and pd.isna(b["beyond_train_low"])  # no beyond figure stored

    text = table(by_length(cells))
    assert "| model | mqar T=32 | mqar T=64 | mqar T=64, d>32 | context | lr |" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert "| 65.0 [1–100] | 55.0 [0–100] | – | 3e-3 |" in lines["a"]  # two seeds: t(1) = 12.7, wide
    assert "| 40.0 [31–50] | – | – | 1e-2 |" in lines["b"]
    # Seeds that agree exactly: the interval is Wilson's over their examples pooled, not zero-wide.
    same = [record("d", 1e-3, s, 1.0, (1.0, 1.0)) for s in (0, 1)]
    d = summarize(by_length(same)).iloc[0]
    assert (d["accuracy_low"], d["accuracy_high"]) == pytest.approx(wilson_interval(200, 200))
    training = "\n".join(training_table(cells, "accuracy"))
    assert training.count("✓") == 3 and len(training.splitlines()) == 2 + 6  # a row per model and rate
    assert "| a | mqar | 32 | 3e-3 | ✓ | 2 | ok ×2 | – | 85 |" in training


def test_failed_seeds_and_the_seconds_cap_are_shown_as_such():
    cells = [
        record("a", 1e-3, 0, 0.9, (0.9, 0.5)),
        record("a", 1e-3, 1, None, (None, None), status="diverged"),
        record("b", 1e-3, 0, 0.3, (0.3, 0.1), cap_bound=True, stop_reason="max_seconds"),
    ]
    lines = {line.split("|")[1].strip(): line for line in table(by_length(cells)).splitlines()[2:]}
    assert "90.0 [" in lines["a"] and "(1 of 2 seeds failed)" in lines["a"]
    assert "30.0 [" in lines["b"] and lines["b"].count("(cap)") == 2
    assert "| max_seconds | – | **1** |" in "\n".join(training_table(cells, "accuracy"))
    timed = [
        c.model_copy(update={"wall_s": wall, "train_seconds": 100.0, "train_cpu_seconds": cpu})
        for c, wall, cpu in zip(cells, (120.0, 60.0, 60.0), (50.0, 25.0, 100.0), strict=True)
    ]
    assert time_text(timed) == (
        "3 cells, 4 minutes of wall clock in all, about 2 on a quiet core (each cell's wall clock times the "
        "share of the CPU its training got)."
    )


def test_a_capped_cell_says_so_and_its_final_model_is_validated():
    cell = accuracy_cell(
        "tests.plugins.window_recall:build",
        "mqar",
        {"vocab_size": 16, "num_kv_pairs": 2, "random_non_queries": False},
        16,
        steps=1000,
        max_seconds=1e-6,
        threshold=None,
    )
    rec = run_accuracy_cell(cell)
    assert rec["stop_reason"] == "max_seconds" and rec["cap_bound"] is True and rec["steps_run"] == 1
    assert rec["val_curve"] == [[1, rec["val_accuracy"]]]  # validated once more after the cap
    assert "(cap)" in table(by_length([stored(cell, rec, label="w")]))
    # A cap passed on the last step did not bind: the budget was run in full.
    done = run_accuracy_cell(cell.model_copy(update={"train": cell.train.model_copy(update={"steps": 1})}))
    assert done["cap_bound"] is False and done["stop_reason"] == "steps" and done["steps_run"] == 1


def test_difficulty_axis_and_smoke_test_note(tmp_path):
    pairs = [
        record(m, 1e-3, 0, 0.9, (acc, acc / 2), beyond=0.1, task=f"mqar-p{n}", task_args={"num_kv_pairs": n})
        for n, accs in ((2, (1.0, 0.9)), (8, (0.9, 0.4)))
        for m, acc in zip(("x", "y"), accs, strict=True)
    ]
    cells = pairs
    assert difficulty_axis(cells) == ("num_kv_pairs", {"mqar-p2": 2, "mqar-p8": 8})
    mixed = [pairs[0], pairs[2].model_copy(update={"task": "niah-pk"})]
    assert difficulty_axis(mixed) is None
    text = "\n".join(accuracy_sections(cells, tmp_path))
    assert "At the hardest setting (num_kv_pairs = 8, task mqar-p8)" in text
    assert "best x 90.0%, worst y 40.0% (spread 50.0 points)" in text
    assert "Smoke test" not in text and smoke_note(cells) == []
    assert (tmp_path / "accuracy_vs_difficulty.png").stat().st_size > 1000
    assert (tmp_path / "accuracy_by_distance.png").stat().st_size > 1000
    smoke = smoke_note([c.model_copy(update={"smoke_test": True}) for c in cells])[0]
    assert smoke.startswith("**Smoke test.** Every model trained for the same 100 steps")
    assert "--preset cpu-recall" in smoke


def test_seeds_that_split_are_shown_one_by_one_with_how_many_solved():
    cells = [record("m", 1e-3, s, 0.5, (acc, acc), val_loss=0.1) for s, acc in enumerate((1.0, 0.99, 0.008))]
    line = table(by_length(cells)).splitlines()[-1]
    assert "66.6 [" in line and ", 2 of 3 solved (seeds 100.0 / 99.0 / 0.8)" in line
    agree = [record("n", 1e-3, s, 0.5, (1.0, 1.0), val_loss=0.1) for s in range(3)]
    assert "3 of 3 solved |" in table(by_length(agree)).splitlines()[-1]  # no split: no per-seed list


def test_calibration_and_convergence_are_checked_from_the_records():
    from bench.analysis.quality import calibration_lines, convergence_lines

    calibration = {"model": "transformer", "min_score": 0.95, "converged": True}
    rows = [
        record("transformer", 1e-3, 0, 1.0, (0.97, 0.5), val_loss=0.1, still_improving=False,
               calibration=calibration),
        record("transformer", 1e-3, 0, 1.0, (0.99, 0.5), val_loss=0.1, still_improving=True, task="mqar-b",
               calibration=calibration),
        record("other", 1e-3, 0, 1.0, (0.2, 0.1), val_loss=2.0, still_improving=False,
               calibration=calibration),
    ]  # fmt: skip
    [line] = calibration_lines(rows, "accuracy", True)
    assert line.startswith("**Calibration (transformer ≥ 95%, converged): FAIL**")
    assert "mqar: transformer 97.0% at the training length over 1 seeds ✓" in line
    assert (
        "mqar-b: transformer 99.0% at the training length over 1 seeds, still improving in seed(s) 0 ✗"
        in line
    )
    passed = [r for r in rows if r.task_label == "mqar"]
    assert "): PASS**" in calibration_lines(passed, "accuracy", True)[0]
    [text] = convergence_lines(rows)
    assert "1 of 3 runs at the chosen rates were still improving: transformer on mqar-b (seed 0)" in text


def test_a_run_at_the_ceiling_whose_loss_still_falls_counts_as_converged():
    """At the early stop's threshold the task is solved; its loss still falling is confidence growing,
    not learning left to do: the calibration passes and the convergence line says what it left out."""
    from bench.analysis.quality import calibration_lines, convergence_lines

    calibration = {"model": "transformer", "min_score": 0.95, "converged": True}
    ceiling = {"lr": 1e-3, "steps": 600, "threshold": 0.99}
    rows = [
        record("transformer", 1e-3, 0, 0.995, (0.99, 0.5), val_loss=0.02, still_improving=True,
               stop_reason="steps", train=ceiling, calibration=calibration),
        record("other", 1e-3, 0, 0.9, (0.9, 0.1), val_loss=0.3, still_improving=True,
               stop_reason="steps", train=ceiling, calibration=calibration),
    ]  # fmt: skip
    [line] = calibration_lines(rows, "accuracy", True)
    assert "): PASS**" in line and "still improving" not in line
    [text] = convergence_lines(rows)
    assert "with the validation score below the early stop's threshold" in text
    assert "1 of 2 runs at the chosen rates were still improving: other on mqar (seed 0)" in text
    assert "Not counted: 1 run at the threshold whose loss was still falling" in text


def test_a_stop_that_the_validations_noise_made_does_not_pass_the_calibration():
    """The recorded check compares two validations; one noisy end can call a falling loss stopped. Here
    the loss falls by 5% over the last 20% but its last validation sits above the one at 80%: the
    calibration says the stop is not shown and fails."""
    from bench.analysis.quality import calibration_lines, fitted_fall

    calibration = {"model": "best", "converged": True}
    falling = [[1920, 2.04], [1980, 2.12], [2040, 2.10], [2100, 2.08], [2160, 2.06], [2220, 2.04],
               [2280, 2.02], [2340, 2.00], [2400, 2.05]]  # fmt: skip
    flat = [[1920, 2.04], [1980, 2.06], [2040, 2.02], [2100, 2.05], [2160, 2.03], [2220, 2.05],
            [2280, 2.03], [2340, 2.04], [2400, 2.04]]  # fmt: skip

    def run(curve):
        return record("m", 1e-3, 0, 0.5, (0.5, 0.4), val_loss=curve[-1][1], still_improving=False,
                      val_loss_curve=curve, calibration=calibration)  # fmt: skip

    fall, start, n = fitted_fall(run(falling))
    assert n == 9 and fall / start > 0.03
    [line] = calibration_lines([run(falling)], "accuracy", True)
    assert "FAIL" in line
    assert "not shown to have stopped (seed 0: a line through its last 9 validations falls" in line
    [line] = calibration_lines([run(flat)], "accuracy", True)
    assert "PASS" in line and "not shown" not in line


def test_rates_the_validation_cannot_tell_apart_are_named_where_they_differ_past_l():
    from bench.analysis.quality import lr_lines, untold_choices

    def run(label, lr, seed, loss, beyond):
        return record(label, lr, seed, 1.0, (1.0, beyond), beyond=beyond, val_loss=loss)

    rows = [
        # losses 0.002 apart (within the 0.01-nat tolerance), 30 points apart past L: named
        *(run("m", 1e-3, s, 0.004, 0.5) for s in range(3)),
        *(run("m", 3e-3, s, 0.002, 0.8) for s in range(3)),
        # as close at L, as close past L: the choice does not matter there
        *(run("n", 1e-3, s, 0.004, 0.79) for s in range(3)),
        *(run("n", 3e-3, s, 0.002, 0.8) for s in range(3)),
        # far apart at L: validation decides
        *(run("o", 1e-3, s, 0.5, 0.1) for s in range(3)),
        *(run("o", 3e-3, s, 0.002, 0.8) for s in range(3)),
    ]
    assert untold_choices(rows) == ["m on mqar (chosen 3e-3: 80%; 1e-3: 50%)"]
    assert any("does not tell apart" in line and "m on mqar" in line for line in lr_lines(rows))


def test_a_choice_between_rates_the_early_stop_ended_says_it_ranks_speed_to_the_ceiling():
    from bench.analysis.quality import early_stopped_choices, lr_lines

    def run(lr, seed, loss, steps, stop, label="m"):
        return record(label, lr, seed, 0.99, (0.99, 0.5), val_loss=loss, steps=steps, stop_reason=stop)

    rows = [
        # both rates reach the threshold: the larger sooner, with the lower loss at its stop
        *(run(1e-3, s, 0.05, 300, "threshold") for s in range(3)),
        *(run(3e-3, s, 0.01, 100, "threshold") for s in range(3)),
        # here the other rate ran its whole budget without reaching it: no such comparison
        *(run(1e-3, s, 0.05, 300, "threshold", "n") for s in range(3)),
        *(run(3e-3, s, 0.90, 600, "steps", "n") for s in range(3)),
    ]
    assert early_stopped_choices(rows) == ["m on mqar (100 steps against 300)"]
    assert any("ranks how fast a rate reaches the ceiling" in line for line in lr_lines(rows))
    # The "converged" rule's stops (the loss settled first) are not such a choice, and the rule says so.
    settled = [r.model_copy(update={"stop_reason": "converged"}) for r in rows if r.label == "m"]
    assert early_stopped_choices(settled) == []
    assert "a stopped run's loss is the one it had settled at" in lr_lines(settled)[0]
