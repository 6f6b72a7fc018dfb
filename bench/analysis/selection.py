"""Accuracy cells read together: what each model's seeds add up to at its chosen learning rate (the
rule: bench/results/lr_choice.py), with a 95% interval (Student's t over the seeds, never narrower than
Wilson's over their examples pooled; Wilson over the examples for one seed), how many seeds solved the
task, and each seed's figure where they split.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.analysis.plotting import model_styles, plt, save
from bench.analysis.quality import still_learning
from bench.analysis.stats import t_interval, wilson_interval
from bench.analysis.text import fmt, lr_text, span, table
from bench.errors import BenchError
from bench.registry import context_argument
from bench.results import AccuracyRow
from bench.results.lr_choice import Choice, choose_lrs, is_chosen, scorer_of

__all__ = ["Choice", "choose_lrs", "is_chosen", "scorer_of"]

FAILED = {"diverged": "div."}


def context_of(row: AccuracyRow) -> str:
    """What a model's attention can see, in words: the record's own statement, or for older records what
    its family declares ("window 8", "full"); "–" for a model without attention."""
    if row.context is not None:
        return row.context
    try:
        declared = context_argument(row.model)
    except BenchError:  # a plug-in that is not importable here
        declared = None
    if declared is None:
        return "–"
    name, default = declared
    value = row.model_args.get(name, default)
    return "full" if value is None else f"{name} {value}"


def by_length(rows: list[AccuracyRow]) -> pd.DataFrame:
    """One row per (cell, evaluation length): label, task_label, train_len, eval_len, accuracy,
    beyond_train, the counts behind them, state_bytes, status, lr, seed, chosen, context, cap_bound, and
    the entry itself (``entry``). A cell that did not train (crashed, timed out) still gets its rows, with
    no accuracy."""
    choices = choose_lrs(rows)
    out = []
    for row in rows:
        entries = row.accuracy_by_len or [None for _ in (row.eval_lens or [row.train_len])]
        lengths = [e.eval_len for e in row.accuracy_by_len] or (row.eval_lens or [row.train_len])
        for length, e in zip(lengths, entries, strict=True):
            out.append(
                {
                    "label": row.label,
                    "task_label": row.task_label,
                    "train_len": row.train_len,
                    "eval_len": length,
                    "accuracy": e.accuracy if e else None,
                    "beyond_train": e.beyond_train if e else None,
                    "n_examples": e.n_examples if e else None,
                    "beyond_train_examples": e.beyond_train_examples if e else None,
                    "longest_prefix_90": e.longest_prefix_90 if e else None,
                    "state_bytes": e.state_bytes if e else None,
                    "nonfinite": e.nonfinite if e else 0.0,
                    "status": row.status,
                    "lr": row.lr,
                    "seed": row.seed,
                    "chosen": is_chosen(row, choices),
                    "context": context_of(row),
                    "cap_bound": row.cap_bound,
                    "entry": e,
                }
            )
    frame = pd.DataFrame(out)
    for column in ("accuracy", "beyond_train", "state_bytes"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["column"] = frame["task_label"] + " T=" + frame["eval_len"].astype(str)
    return frame


def interval(values: list[float], n: float | None) -> tuple[float, float] | None:
    """95% interval of the mean of ``values`` (one per seed, each over ``n`` examples): Student's t over
    the seeds when there are several, else Wilson over the examples. Seeds that happen to agree (all at
    100%, say) give a t interval of zero width, which would claim more than the examples can show, so the
    interval over seeds is never narrower than Wilson's over all the examples pooled."""
    if not values:
        return None
    mean = sum(values) / len(values)
    pooled = wilson_interval(mean * n * len(values), n * len(values)) if n else None
    if len(values) == 1:
        return pooled
    _, low, high = t_interval(values)
    low, high = max(0.0, low), min(1.0, high)
    return (min(low, pooled[0]), max(high, pooled[1])) if pooled else (low, high)


SOLVED = 0.9  # a seed solved a task when it is at least this accurate at the training length
SPLIT = 0.5  # seeds whose figures span more than this (a fraction) are shown one by one


def summarize(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task, evaluation length) at the chosen learning rate: the mean over seeds of
    the overall and the beyond-training-length accuracy, each with its 95% interval and its per-seed
    values (``accuracy_seeds``, ``beyond_train_seeds``), and how many seeds solved the task (at least
    90% at the training length: ``solved``, on the rows at the training length)."""
    rows = []
    keys = ["label", "task_label", "eval_len"]
    for (label, task, length), g in long[long["chosen"]].groupby(keys, sort=False, dropna=False):
        ok = g[(g["status"] == "ok") & g["accuracy"].notna()]
        row = {
            "label": label,
            "task_label": task,
            "eval_len": length,
            "train_len": g["train_len"].iloc[0],
            "column": g["column"].iloc[0],
            "context": g["context"].iloc[0],
            "lr": g["lr"].iloc[0],
            "seeds": len(g),
            "ok_seeds": len(ok),
            "status": "ok" if len(ok) else g["status"].iloc[-1],
            "nonfinite": g["nonfinite"].max(),
            "cap_bound": bool(g["cap_bound"].any()),
            "state_bytes": g["state_bytes"].mean(),
        }
        for name, n_name in (("accuracy", "n_examples"), ("beyond_train", "beyond_train_examples")):
            values = ok[name].dropna().tolist()
            counts = ok[n_name].dropna()
            n = float(counts.iloc[0]) if len(counts) else None
            row[name] = sum(values) / len(values) if values else None
            bounds = interval(values, n)
            row[f"{name}_low"], row[f"{name}_high"] = bounds if bounds else (None, None)
            row[f"{name}_seeds"] = values
        at_train = length == row["train_len"]
        row["solved"] = sum(v >= SOLVED for v in row["accuracy_seeds"]) if at_train else None
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_split(seeds: list[float], solved: float | None) -> bool:
    """Whether a cell's seeds split (some solved and some not, or figures more than SPLIT apart), so that
    each seed's figure must be shown beside their mean."""
    return len(seeds) > 1 and (max(seeds) - min(seeds) > SPLIT or 0 < (solved or 0) < len(seeds))


def cell_text(row, name: str = "accuracy", intervals: bool = True) -> str:
    """A summary row's figure in percent, with its interval and what went wrong."""
    if row["status"] != "ok":
        return FAILED.get(row["status"], row["status"])
    value = row.get(name)
    if value is None or pd.isna(value):
        return "–"
    text = f"{100 * value:.1f}"
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    if intervals and low is not None and not pd.isna(low):
        text += f" [{100 * low:.0f}–{100 * high:.0f}]"
    seeds = row.get(f"{name}_seeds")
    seeds = seeds if isinstance(seeds, list) else []
    solved = row.get("solved") if name == "accuracy" else None
    if solved is not None and not pd.isna(solved) and len(seeds) > 1:
        text += f", {int(solved)} of {len(seeds)} solved"
    if seeds_split(seeds, solved):
        text += " (seeds " + " / ".join(f"{100 * v:.1f}" for v in seeds) + ")"  # a split: never just a mean
    if row.get("ok_seeds", 1) < row.get("seeds", 1):
        text += f" ({row['seeds'] - row['ok_seeds']} of {row['seeds']} seeds failed)"
    if row.get("nonfinite", 0) > 0:
        text += f" (NaN {100 * row['nonfinite']:.0f}%)"
    if row.get("cap_bound"):
        text += " (cap)"
    return text


def distance_grid(long: pd.DataFrame) -> pd.DataFrame:
    """Accuracy by (model, task, distance bin, evaluation length), pooled over the seeds of the chosen
    learning rate: one row per non-empty bin."""
    rows = []
    for _, r in long[long["chosen"] & (long["status"] == "ok")].iterrows():
        for b in r["entry"].by_distance if r["entry"] is not None else []:
            rows.append(
                {
                    "label": r["label"],
                    "task_label": r["task_label"],
                    "train_len": r["train_len"],
                    "eval_len": r["eval_len"],
                    "max_distance": b.max_distance,
                    "correct": b.correct,
                    "total": b.total,
                }
            )
    if not rows:
        return pd.DataFrame()
    keys = ["label", "task_label", "train_len", "eval_len", "max_distance"]
    grid = pd.DataFrame(rows).groupby(keys, sort=False, as_index=False)[["correct", "total"]].sum()
    grid = grid[grid["total"] > 0]
    return grid.assign(accuracy=grid["correct"] / grid["total"])


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _counts(values: list[str], n: int) -> str:
    counted = pd.Series(values).value_counts()
    return ", ".join(f"{k} ×{v}" if n > 1 else str(k) for k, v in counted.items()) or "–"


def training_table(rows: list[AccuracyRow], metric: str) -> list[str]:
    """One row per model, task and learning rate (its seeds together, means over them); ✓ marks the
    chosen rate. ``metric``: the scorer's validation figure ("accuracy" in percent, "bpb")."""
    choices = choose_lrs(rows)
    groups: dict[tuple, list[AccuracyRow]] = {}
    for row in rows:
        groups.setdefault((row.label, row.task_label, row.lr), []).append(row)
    header = ["model", "task", "T train", "lr", "chosen", "seeds", "status", "val loss", f"val {metric}"]
    header += ["steps", "stopped by", "still improving", "cap bound", "seconds", "CPU s", "tokens/s"]
    header += ["final loss", "params"]
    lines = []
    for (label, task, lr), g in groups.items():
        ok = [r for r in g if r.ok]
        score = _mean(getattr(r, f"val_{metric}", None) for r in ok)
        capped = sum(r.cap_bound for r in g)
        lines.append(
            [
                label,
                task,
                g[0].train_len,
                lr_text(lr),
                "✓" if is_chosen(g[0], choices) else "",
                len(g),
                _counts([r.status for r in g], len(g)),
                fmt(_mean(r.val_loss for r in ok), ".3f"),
                fmt(None if score is None else (100 * score if metric == "accuracy" else score), ".3g"),
                span([r.steps_run for r in g], ".0f"),
                _counts([r.stop_reason for r in g if r.stop_reason], len(g)),
                _improving(g),
                f"**{capped}**" if capped else "0",
                fmt(_mean(r.train_seconds for r in g), ".1f"),
                fmt(_mean(r.train_cpu_seconds for r in g), ".1f"),
                fmt(_mean(r.train_tokens_per_s for r in g), ",.0f"),
                fmt(_mean(r.final_loss for r in g), ".3g"),
                fmt(_mean(r.n_params for r in g), ",.0f"),
            ]
        )
    return table(header, lines, "llrrcrlrrrlrrrrrrr")


def _improving(runs: list[AccuracyRow]) -> str:
    """How many of a rate's runs were still improving at the end: "**2 of 3**", "0 of 3", "–"."""
    checked = [r for r in runs if r.still_improving is not None]
    if not checked:
        return "–"
    count = sum(still_learning(r) for r in checked)
    return f"**{count} of {len(checked)}**" if count else f"0 of {len(checked)}"


def plot_curves(rows: list[AccuracyRow], path, score_label: str, score_scale: float = 1.0) -> None:
    """Training loss (top) and the validation score (bottom) against step, one column per task: every
    seed at the chosen learning rate."""
    choices = choose_lrs(rows)
    rows = [r for r in rows if is_chosen(r, choices)]
    tasks = list(dict.fromkeys(r.task_label for r in rows))
    styles = model_styles([r.label for r in rows])
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6), squeeze=False, sharex="col")
    for j, task in enumerate(tasks):
        seen = set()
        for r in (r for r in rows if r.task_label == task):
            for i, points in enumerate((r.loss_curve, r.val_curve)):
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    x, y = zip(*points, strict=True)
                    first = (r.label, i) not in seen
                    seen.add((r.label, i))
                    style = styles[r.label]
                    axes[i][j].plot(
                        x, [v * (score_scale if i else 1) for v in y], color=style.color, ls=style.linestyle,
                        label=r.label if first else None, lw=1,
                    )  # fmt: skip
        axes[0][j].set_title(task)
        axes[0][j].set_yscale("log")
        axes[1][j].set_xlabel("step")
    axes[0][0].set_ylabel("training loss (nats per token)")
    axes[1][0].set_ylabel(score_label)
    if axes[1][-1].get_legend_handles_labels()[0]:
        axes[1][-1].legend(title="model", loc="best", fontsize=7)
    fig.tight_layout()
    save(fig, path)
