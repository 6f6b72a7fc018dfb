"""Whether a run's training can rank the models, said at the head of every accuracy section: how the
learning rates were chosen and whether the grid brackets each choice, which runs were still improving
when their budget ended, and whether the run's calibration model passed its bar."""

from __future__ import annotations

import math

from bench.analysis.text import lr_text
from bench.results import AccuracyRow
from bench.results.lr_choice import choose_lrs, grid_edge, is_chosen, score_direction
from bench.train.loop import CHECK_AT, STILL_IMPROVING, STILL_IMPROVING_NATS


def at_ceiling(row: AccuracyRow) -> bool:
    """Whether the run ended with its validation score at the early stop's threshold: it solved what the
    task asks (a loss still falling there only makes its right answers more confident)."""
    metric, higher = score_direction(row)
    score, threshold = row.get(f"val_{metric}"), row.train.threshold
    return higher and threshold is not None and score is not None and score >= threshold


def still_learning(row: AccuracyRow) -> bool:
    """Whether the run was still learning when its budget ended: its validation loss still falling
    (``still_improving``, as recorded) and its score below the ceiling. Such a figure ranks how fast the
    model learns, not what it can learn; at the ceiling there is nothing left to learn, so a falling loss
    there does not count."""
    return bool(row.still_improving) and not at_ceiling(row)


def fitted_fall(row: AccuracyRow) -> tuple[float, float, int] | None:
    """The fall of the validation loss over the last 20% of the steps the run took, read off a least-squares
    line through every validation there rather than off its two ends; the line's value where that stretch
    starts; and the number of validations. None with fewer than 3. Between two validations a loss moves by
    its noise as well as by what the model learned (byte-level LM at 2,400-6,000 steps: by 1-2% of
    its value), as much as the 1% the recorded check asks."""
    points = [(s, v) for s, v in row.val_loss_curve if v is not None and math.isfinite(v)]
    if not points:
        return None
    end = points[-1][0]
    window = [(s, v) for s, v in points if s >= CHECK_AT * end]
    if len(window) < 3:
        return None
    mean_s = sum(s for s, _ in window) / len(window)
    mean_v = sum(v for _, v in window) / len(window)
    spread = sum((s - mean_s) ** 2 for s, _ in window)
    if spread == 0:
        return None
    slope = sum((s - mean_s) * (v - mean_v) for s, v in window) / spread
    start = mean_v + slope * (CHECK_AT * end - mean_s)
    return -slope * (1 - CHECK_AT) * end, start, len(window)


def stopped_by_noise(row: AccuracyRow) -> str | None:
    """For a run the recorded check calls stopped (and below the ceiling): why that verdict is not
    decisive, when the line through its last 20%'s validations still falls by more than the check's
    thresholds; None when the line agrees (or cannot be drawn)."""
    if row.still_improving is not False or at_ceiling(row):
        return None
    fit = fitted_fall(row)
    if fit is None:
        return None
    fall, start, n = fit
    if fall > STILL_IMPROVING * start and fall > STILL_IMPROVING_NATS:
        return f"seed {row.seed}: a line through its last {n} validations falls {fall / start:.1%}"
    return None


def _groups(rows: list[AccuracyRow]) -> dict[tuple[str, str], list[AccuracyRow]]:
    out: dict[tuple[str, str], list[AccuracyRow]] = {}
    for row in rows:
        out.setdefault((row.label, row.task_label), []).append(row)
    return out


def _by_rate(group: list[AccuracyRow]) -> dict[float, list[AccuracyRow]]:
    """One group's runs by learning rate."""
    out: dict[float, list[AccuracyRow]] = {}
    for r in group:
        out.setdefault(r.lr, []).append(r)
    return out


def edge_choices(rows: list[AccuracyRow]) -> dict[tuple[str, str], str]:
    """(label, task) -> "upper edge" / "lower edge", for the groups of more than one rate whose chosen rate
    still sits at an edge of the rates tried."""
    grid = sorted({r.lr for r in rows if r.lr is not None and r.lr_origin == "grid"})
    out = {}
    for key, group in _groups(rows).items():
        edge = grid_edge(group, grid)
        if edge and len({r.lr for r in group}) > 1:
            out[key] = edge
    return out


def lr_lines(rows: list[AccuracyRow]) -> list[str]:
    """The rule, the grid, the groups whose grid was extended, and the choices left at an edge."""
    choices = choose_lrs(rows)
    rules = {c.rule for c in choices.values()}
    grid = sorted({r.lr for r in rows if r.lr is not None and r.lr_origin == "grid"})
    if rules <= {"only rate"}:
        return [
            f"**Learning rate**: one rate per model ({', '.join(map(lr_text, grid)) or '–'}), not chosen."
        ]
    if "validation score" in rules:
        rule = (
            "the rate with the best mean validation score over seeds (these records have no validation "
            "loss: accuracy capped at the early-stopping threshold, ties to fewer steps)"
        )
    else:
        rule = (
            "the rate with the lowest mean validation loss over seeds at the end of the training budget "
            "(accuracy and bits per byte are reported, never used to choose)"
        )
    out = [f"**Learning rates**: chosen per model and task as {rule}, from the grid "
           f"{', '.join(map(lr_text, grid))}, grown x3 beyond an edge where the choice sat, as many times "
           "as the sweep's `lr_extend` allows."]  # fmt: skip
    if any(r.stop_reason == "converged" for r in rows):
        out[0] += (
            " The early stop ended a run only once its validation accuracy was at the threshold and its "
            "validation loss had stopped falling (the convergence check below), so a stopped run's loss "
            "is the one it had settled at."
        )
    extended = []
    for (label, task), group in _groups(rows).items():
        added = sorted({r.lr for r in group if r.lr_origin == "extended"})
        if added:
            extended.append(f"{label} on {task} (+{', '.join(map(lr_text, added))})")
    edges = [
        f"{label} on {task} ({lr_text(choices[(label, task)].lr)}, {edge})"
        for (label, task), edge in edge_choices(rows).items()
    ]
    out.append("Grids extended: " + ("; ".join(extended) if extended else "none") + ".")
    stopped = early_stopped_choices(rows)
    if stopped:
        out.append(
            "**Chosen among rates whose runs the early stop ended** (validation accuracy reached the "
            "threshold, each run at its own step): "
            + "; ".join(stopped)
            + ". Their validation losses come from different points of training, the chosen rate's from "
            "fewer steps than the others', so there the choice ranks how fast a rate reaches the ceiling, "
            "not the loss at the end of one budget."
        )
    untold = untold_choices(rows)
    if untold:
        out.append(
            "**Rates the training length does not tell apart** (mean validation losses within "
            f"{STILL_IMPROVING_NATS} nats of the chosen rate's, the convergence tolerance) whose accuracy "
            f"past it, at the longest length evaluated, differs by {100 * BEYOND_SPREAD:.0f} points or more: "
            + "; ".join(untold)
            + ". There a model's figure past L depends on a choice the validation at L does not make."
        )
    if edges:
        out.append(
            "**Still at an edge of the rates tried** (`lr_extend` allowed no further growth): "
            + "; ".join(edges)
            + ". The best rate may lie beyond; these models are not ranked on a bracketed choice."
        )
    return out


BEYOND_SPREAD = 0.10  # rates whose scores past L differ by this much make the choice matter there


def _beyond(runs: list[AccuracyRow]) -> float | None:
    """The mean over runs of the accuracy past the training length at the longest length evaluated."""
    values = []
    for r in runs:
        longest = max(r.accuracy_by_len, key=lambda e: e.eval_len, default=None)
        if longest is None or longest.beyond_train is None:
            return None
        values.append(longest.beyond_train)
    return sum(values) / len(values) if values else None


def untold_choices(rows: list[AccuracyRow]) -> list[str]:
    """The accuracy groups where another rate's mean validation loss is within the convergence tolerance
    (``STILL_IMPROVING_NATS``) of the chosen rate's, so the validation at the training length does not
    tell them apart, yet their accuracy past it differs by ``BEYOND_SPREAD`` or more: "label on task
    (chosen 3e-3: 62%; 9e-3: 79%)", the figures at the longest length evaluated."""
    choices = choose_lrs(rows)
    out = []
    for (label, task), group in _groups(rows).items():
        choice = choices[(label, task)]
        if choice.rule != "validation loss" or score_direction(group[0]) != ("accuracy", True):
            continue
        losses = choice.means  # the mean validation loss per rate the choice compared
        if not math.isfinite(losses.get(choice.lr, math.inf)):
            continue
        by_rate = _by_rate(group)
        tied = [lr for lr in sorted(losses) if losses[lr] - losses[choice.lr] <= STILL_IMPROVING_NATS]
        beyond = {lr: _beyond(by_rate[lr]) for lr in tied}
        known = [v for v in beyond.values() if v is not None]
        if len(tied) < 2 or len(known) < len(tied) or max(known) - min(known) < BEYOND_SPREAD:
            continue
        rates = [f"chosen {lr_text(choice.lr)}: {100 * beyond[choice.lr]:.0f}%"] + [
            f"{lr_text(lr)}: {100 * beyond[lr]:.0f}%" for lr in tied if lr != choice.lr
        ]
        out.append(f"{label} on {task} ({'; '.join(rates)})")
    return out


def early_stopped_choices(rows: list[AccuracyRow]) -> list[str]:
    """The groups where the chosen rate and another rate both had every run stopped by the early-stopping
    threshold, the chosen one's sooner: "label on task (mean steps of the chosen rate's runs against the
    other stopped rates')"."""
    choices = choose_lrs(rows)
    out = []
    for (label, task), group in _groups(rows).items():
        choice = choices[(label, task)]
        if choice.rule != "validation loss":
            continue
        by_rate = _by_rate(group)
        stopped = {
            lr: sum(r.steps_run or 0 for r in runs) / len(runs)
            for lr, runs in by_rate.items()
            if all(r.ok and r.stop_reason == "threshold" for r in runs)
        }
        if choice.lr not in stopped or len(stopped) < 2:
            continue
        rest = [steps for lr, steps in stopped.items() if lr != choice.lr]
        others = sum(rest) / len(rest)
        if stopped[choice.lr] < others:
            out.append(f"{label} on {task} ({stopped[choice.lr]:.0f} steps against {others:.0f})")
    return out


def chosen_still_learning(rows: list[AccuracyRow]) -> tuple[list[AccuracyRow], list[AccuracyRow]]:
    """Of the ok runs at the chosen rates, those whose convergence was checked, and those of them still
    learning when their budget ended (``still_learning``)."""
    choices = choose_lrs(rows)
    checked = [r for r in rows if is_chosen(r, choices) and r.ok and r.still_improving is not None]
    return checked, [r for r in checked if still_learning(r)]


def convergence_lines(rows: list[AccuracyRow]) -> list[str]:
    """The runs at the chosen rate still improving when their budget ended."""
    checked, improving = chosen_still_learning(rows)
    confident = sum(1 for r in checked if r.still_improving and at_ceiling(r))
    rule = (
        f"validation loss still falling by more than {STILL_IMPROVING:.0%} of its value and "
        f"{STILL_IMPROVING_NATS} nats over the last 20% of the budget"
    )
    if any(r.train.threshold is not None for r in checked):
        rule += ", with the validation score below the early stop's threshold"
    if not checked:
        return [f"**Convergence**: not recorded for these runs ({rule} is the check)."]
    text = f"**Convergence** ({rule}): {len(improving)} of {len(checked)} runs at the chosen rates"
    by_model: dict[str, list[int]] = {}
    for r in improving:
        by_model.setdefault(f"{r.label} on {r.task_label}", []).append(r.seed)
    listed = "; ".join(f"{k} ({', '.join(f'seed {s}' for s in sorted(v))})" for k, v in by_model.items())
    if improving:
        text += (
            f" were still improving: {listed}. Their figures rank how fast they learn within this budget, "
            "not what they can learn."
        )
    else:
        text += " were still improving: every model trained to its plateau."
    if confident:
        text += (
            f" Not counted: {confident} run{'s' if confident > 1 else ''} at the threshold whose loss was "
            "still falling (the task solved; the right answers growing more confident)."
        )
    return [text]


def calibration(rows: list[AccuracyRow], metric: str, higher_is_better: bool) -> tuple[str, str] | None:
    """The run's calibration model (``[accuracy.calibration]``) judged task by task: its verdict over all
    tasks ("PASS" or "FAIL") and the report's line that says it; None when the run names none."""
    spec = next((r.calibration for r in rows if r.calibration), None)
    if not spec:
        return None
    choices = choose_lrs(rows)
    chosen = [r for r in rows if is_chosen(r, choices)]
    bar, must_converge = spec.get("min_score"), spec.get("converged", True)
    verdicts, parts = [], []
    for task in dict.fromkeys(r.task_label for r in rows):
        runs = [r for r in chosen if r.task_label == task]
        label = spec["model"]
        if label == "best":
            losses: dict[str, list[float]] = {}
            for r in runs:
                losses.setdefault(r.label, []).append(r.val_loss if r.val_loss is not None else math.inf)
            label = min(losses, key=lambda k: sum(losses[k]) / len(losses[k])) if losses else "–"
        mine = [r for r in runs if r.label == label]
        scores = [e.get(metric) for r in mine if r.ok for e in r.accuracy_by_len if e.eval_len == r.train_len]
        scores = [s for s in scores if s is not None]
        score = sum(scores) / len(scores) if scores else None
        ok = bool(mine) and len(scores) == len(mine)
        if bar is not None:
            ok = ok and score is not None and (score >= bar if higher_is_better else score <= bar)
        improving = sorted(r.seed for r in mine if still_learning(r))
        seeds = sorted(mine, key=lambda r: r.seed)
        undecided = [why for r in seeds if (why := stopped_by_noise(r))] if must_converge else []
        if must_converge:
            ok = ok and not improving and not undecided and all(r.still_improving is not None for r in mine)
        verdicts.append(ok)
        shown = "–" if score is None else (f"{100 * score:.1f}%" if metric == "accuracy" else f"{score:.3f}")
        detail = f"{task}: {label} {shown} at the training length over {len(mine)} seeds"
        if improving:
            detail += f", still improving in seed(s) {', '.join(map(str, improving))}"
        if undecided:
            detail += f", not shown to have stopped ({'; '.join(undecided)})"
        parts.append(detail + (" ✓" if ok else " ✗"))
    bar_text = "" if bar is None else (f" ≥ {100 * bar:.0f}%" if metric == "accuracy" else f" ≤ {bar}")
    wanted = f"{spec['model']}{bar_text}" + (", converged" if must_converge else "")
    verdict = "PASS" if verdicts and all(verdicts) else "FAIL"
    return verdict, f"**Calibration ({wanted}): {verdict}** — " + "; ".join(parts) + "."


def calibration_lines(rows: list[AccuracyRow], metric: str, higher_is_better: bool) -> list[str]:
    """PASS or FAIL for the run's calibration model, task by task (no line when it names none)."""
    judged = calibration(rows, metric, higher_is_better)
    return [] if judged is None else [judged[1]]


def quality_section(rows: list[AccuracyRow], metric: str, higher_is_better: bool = True) -> list[str]:
    """The lines that head an accuracy section, each a paragraph."""
    lines = [
        *calibration_lines(rows, metric, higher_is_better),
        *lr_lines(rows),
        *convergence_lines(rows),
    ]
    return [x for line in lines for x in (line, "")]
