"""Which learning rate each model gets, from the stored runs of its grid.

**The rule.** For each model and task, the rate whose runs have the lowest mean validation loss over seeds
(``val_loss``: the cross-entropy of the validation examples' asked targets at the end of the training
budget, a continuous figure on which two runs do not tie), the same rule for every scorer; a run that did
not finish counts as infinitely bad, so it never wins. Accuracy and bits per byte are reported beside it,
never used to choose. Records written before the loss was recorded fall back to their validation score
(accuracy capped at the early-stopping threshold, ties to fewer steps; bits per byte), and the reports
say which rule chose. Ties left after that go to the smaller rate.

**The grid.** When the chosen rate is the largest (or the smallest) of those tried, the optimum may lie
beyond it: the sweep then trains the group again at that edge times 3 (or divided by 3), up to
``lr_extend`` times in each direction, and :func:`next_rate` says which rate comes next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.errors import BenchError
from bench.registry import SCORERS, TASKS
from bench.results.rows import AccuracyRow

GRID_STEP = 3.0  # an extended grid's next rate: the edge times (or divided by) this


@dataclass
class Choice:
    """The learning rate chosen for one model and task, and by which rule."""

    lr: float | None
    rule: str  # "validation loss", "validation score" (older records) or "only rate"
    # per rate, the mean over its runs of what the rule compares (lower is better; inf where a run did not
    # finish or has no value): the mean validation loss under "validation loss"
    means: dict[float, float] = field(default_factory=dict)


def scorer_of(row: AccuracyRow):
    """The Scorer class a record was scored by (the one it names, else its task's), or None where it is
    not known here."""
    try:
        name = row.scoring or getattr(TASKS.get(row.task).load(), "scorer", None) or "distance"
        return SCORERS.get(name).load()
    except BenchError:
        return None


def score_direction(row: AccuracyRow) -> tuple[str, bool]:
    """(the name of the record's validation score, whether higher is better)."""
    if row.score_columns:
        higher = next(iter(row.score_columns.values())).get("higher_is_better", True)
    else:
        scorer = scorer_of(row)
        higher = True if scorer is None else scorer.higher_is_better
    scorer = scorer_of(row)
    return (scorer.metric if scorer is not None else "accuracy"), bool(higher)


def _selection_value(row: AccuracyRow, by_loss: bool) -> float:
    """Lower is better. A run that did not finish is infinitely bad."""
    if not row.ok:
        return math.inf
    if by_loss:
        return row.val_loss if row.val_loss is not None and math.isfinite(row.val_loss) else math.inf
    metric, higher = score_direction(row)
    score = row.get(f"val_{metric}", row.get(f"best_val_{metric}"))
    if score is None or not math.isfinite(score):
        return math.inf
    if higher:  # a run that reached the early-stopping threshold stopped there: cap at it
        cap = row.train.threshold
        return -(min(score, cap) if cap is not None else score)
    return score


def choose_lrs(rows: list[AccuracyRow]) -> dict[tuple[str, str], Choice]:
    """(label, task_label) -> the chosen learning rate (see the module docstring)."""
    groups: dict[tuple[str, str], list[AccuracyRow]] = {}
    for row in rows:
        groups.setdefault((row.label, row.task_label), []).append(row)
    choices = {}
    for key, group in groups.items():
        lrs = sorted({r.lr for r in group if r.lr is not None})
        if len(lrs) <= 1:
            choices[key] = Choice(lrs[0] if lrs else None, "only rate")
            continue
        by_loss = all(r.val_loss is not None for r in group if r.ok)
        scores = {}
        for lr in lrs:
            runs = [r for r in group if r.lr == lr]
            values = [_selection_value(r, by_loss) for r in runs]
            steps = sum(r.steps_run or 0 for r in runs) / len(runs)
            mean = sum(values) / len(values) if all(math.isfinite(v) for v in values) else math.inf
            scores[lr] = (mean, 0 if by_loss else steps, lr)
        best = min(lrs, key=lambda lr: scores[lr])
        means = {lr: score[0] for lr, score in scores.items()}
        choices[key] = Choice(best, "validation loss" if by_loss else "validation score", means)
    return choices


def is_chosen(row: AccuracyRow, choices: dict[tuple[str, str], Choice]) -> bool:
    choice = choices.get((row.label, row.task_label))
    return choice is None or choice.lr is None or row.lr == choice.lr


def grid_rate(lr: float) -> float:
    """A rate of an extended grid, rounded to 3 significant digits so that the same rate has the same key
    in every run (0.003 * 3 is 0.009000000000000001)."""
    return float(f"{lr:.3g}")


def next_rate(rows: list[AccuracyRow], initial: list[float], extend: int) -> float | None:
    """The rate to train next for one model and task, given its runs so far (every seed of every rate
    tried), the sweep's grid ``initial`` and at most ``extend`` steps beyond it in each direction: the
    chosen rate's neighbour beyond the edge where the chosen rate sits at one, else None (the grid
    brackets the choice, or it cannot grow further, or a run has not finished yet)."""
    if extend < 1 or len(initial) < 2 or not rows:
        return None
    choice = choose_lrs(rows).get((rows[0].label, rows[0].task_label))
    if choice is None or choice.lr is None:
        return None
    if not math.isfinite(choice.means.get(choice.lr, 0.0)) and any(
        r.status not in ("ok", "diverged") for r in rows if r.lr == choice.lr
    ):
        return None  # every rate failed, and not by diverging (OOM, crash, timeout): a new rate would too
    tried = sorted({r.lr for r in rows if r.lr is not None})
    low, high = min(initial), max(initial)
    if choice.lr == tried[-1]:
        steps = sum(1 for lr in tried if lr > high)
        return grid_rate(tried[-1] * GRID_STEP) if steps < extend else None
    if choice.lr == tried[0]:
        steps = sum(1 for lr in tried if lr < low)
        return grid_rate(tried[0] / GRID_STEP) if steps < extend else None
    return None


def grid_edge(rows: list[AccuracyRow], initial: list[float]) -> str | None:
    """Where the chosen rate sits in what was tried: "upper edge" / "lower edge", or None when the rates
    tried bracket it (with ``initial``: the sweep's grid, to tell an extended grid apart)."""
    if not rows:
        return None
    choice = choose_lrs(rows).get((rows[0].label, rows[0].task_label))
    tried = sorted({r.lr for r in rows if r.lr is not None})
    if choice is None or choice.lr is None or len(tried) < 2:
        return None
    return "upper edge" if choice.lr == tried[-1] else "lower edge" if choice.lr == tried[0] else None
