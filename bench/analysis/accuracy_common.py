"""What the accuracy report's sections share (recall, state tracking, language modelling): the runs with
their chosen learning rate, one row per evaluation length, means over seeds with 95% intervals, the cells'
text, the training table and the training curves.

The learning rate of each model and task is the one with the best mean validation accuracy of the final
model over seeds (at the training length, on held-out validation examples, never the test examples), as
Zoology picks the best rate per model; a run that reached the early-stopping threshold counts as the
threshold, and ties go to fewer steps, then to the smaller rate. Results at the chosen rate are the mean
over seeds, with a t interval over seeds when there are several and a Wilson interval over the evaluation
examples when there is one.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.analysis.stats import t_interval, wilson_interval  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.registry import TASKS  # noqa: E402

FAILED = {"diverged": "div."}


def _is_list(x) -> bool:
    return isinstance(x, list)


def _is_dict(x) -> bool:
    return isinstance(x, dict)


def _flag(x) -> bool:
    """A stored boolean, False where missing (NaN or None in older records)."""
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and bool(x)


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def scoring(row) -> str:
    """How a cell's task is scored: "distance" (recall: MQAR, S-NIAH), "position" (a running state) or
    "loss" (language modelling), as its record says, else as its task says."""
    stored = row.get("scoring")
    if isinstance(stored, str):
        return stored
    try:
        task = TASKS.get(row["task"]).load()  # the class: its scoring needs no arguments (nor a corpus)
    except BenchError:
        return "distance"
    return "loss" if task.loss_scored else "position" if task.scored_by_position else "distance"


def context_text(row) -> str:
    """The attention a model's mixers see: a window, a segment, everything, or none (recurrent)."""
    args = row.get("model_args") if _is_dict(row.get("model_args")) else {}
    if args.get("window") is not None:
        return f"window {args['window']}"
    if args.get("segment") is not None:
        return f"segment {args['segment']}"
    return "full" if row.get("model") == "transformer" else "–"


def runs(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with the columns the section works with: ``lr``, ``val`` (validation accuracy of the
    final model; 0 for a run that did not finish, so that it never wins the learning-rate choice),
    ``val_choice`` (the same, at most the early-stopping threshold), ``context`` and ``chosen`` (the run
    is at its model's chosen learning rate)."""
    cells = cells.copy().reset_index(drop=True)
    train = cells["train"] if "train" in cells else pd.Series([None] * len(cells))
    cells["lr"] = [t.get("lr") if _is_dict(t) else None for t in train]
    if "seed" not in cells:
        cells["seed"] = 0
    val = cells["val_accuracy"] if "val_accuracy" in cells else pd.Series([None] * len(cells))
    best = cells["best_val_accuracy"] if "best_val_accuracy" in cells else pd.Series([None] * len(cells))
    cells["val"] = [
        0.0 if status != "ok" else (_num(v) if _num(v) is not None else (_num(b) or 0.0))
        for status, v, b in zip(cells["status"], val, best, strict=True)
    ]
    # Runs that reached the early-stopping threshold stopped there: what they score above it is noise of
    # the validation set, so they tie, and the tie goes to fewer steps.
    thresholds = [_num(t.get("threshold")) if _is_dict(t) else None for t in train]
    cells["val_choice"] = [
        v if t is None else min(v, t) for v, t in zip(cells["val"], thresholds, strict=True)
    ]
    cells["context"] = [context_text(row) for _, row in cells.iterrows()]
    steps = cells["steps_run"] if "steps_run" in cells else pd.Series([0] * len(cells))
    cells["steps"] = pd.to_numeric(steps, errors="coerce").fillna(0)
    cells["chosen"] = False
    for _, group in cells.groupby(["label", "task_label"], sort=False, dropna=False):
        if group["lr"].isna().all():
            cells.loc[group.index, "chosen"] = True
            continue
        score = group.groupby("lr").agg(val=("val_choice", "mean"), steps=("steps", "mean")).reset_index()
        best_lr = score.sort_values(["val", "steps", "lr"], ascending=[False, True, True]).iloc[0]["lr"]
        cells.loc[group.index[group["lr"] == best_lr], "chosen"] = True
    return cells


def by_length(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, evaluation length): label, task_label, eval_len, accuracy, beyond_train, the
    counts behind them, state_bytes, status, lr, seed, chosen. A cell that did not train (crashed, timed
    out) still gets its rows, with no accuracy."""
    rows = []
    for _, cell in runs(cells).iterrows():
        entries = cell.get("accuracy_by_len")
        if not _is_list(entries):
            lens = cell.get("eval_lens") if _is_list(cell.get("eval_lens")) else [cell["seq_len"]]
            entries = [{"eval_len": n} for n in lens]
        for e in entries:
            rows.append(
                {
                    "label": cell["label"],
                    "task_label": cell["task_label"],
                    "train_len": cell["seq_len"],
                    "eval_len": e["eval_len"],
                    "accuracy": e.get("accuracy"),
                    "beyond_train": e.get("beyond_train"),
                    "n_examples": e.get("n_examples"),
                    "beyond_train_examples": e.get("beyond_train_examples"),
                    "by_distance": e.get("by_distance"),
                    "longest_prefix_90": e.get("longest_prefix_90"),
                    "state_bytes": e.get("state_bytes"),
                    "status": cell["status"],
                    "nonfinite": e.get("nonfinite") or 0.0,
                    "lr": cell["lr"],
                    "seed": cell["seed"],
                    "chosen": cell["chosen"],
                    "context": cell["context"],
                    "cap_bound": _flag(cell.get("cap_bound")),
                }
            )
    frame = pd.DataFrame(rows)
    for column in ("accuracy", "beyond_train", "state_bytes"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["column"] = frame["task_label"] + " T=" + frame["eval_len"].astype(str)
    return frame


def _interval(values: list[float], n: float | None) -> tuple[float, float] | None:
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


def summarize(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task, evaluation length) at the chosen learning rate: the mean over seeds of
    the overall and the beyond-training-length accuracy, each with its 95% interval."""
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
            n = _num(ok[n_name].iloc[0]) if len(ok) and n_name in ok else None
            row[name] = sum(values) / len(values) if values else None
            interval = _interval(values, n)
            row[f"{name}_low"], row[f"{name}_high"] = interval if interval else (None, None)
        rows.append(row)
    return pd.DataFrame(rows)


def _percent(value, low, high, intervals: bool) -> str:
    text = f"{100 * value:.1f}"
    if intervals and low is not None and not pd.isna(low):
        text += f" [{100 * low:.0f}–{100 * high:.0f}]"
    return text


def _cell_text(row, name: str = "accuracy", intervals: bool = True) -> str:
    if row["status"] != "ok":
        return FAILED.get(row["status"], row["status"])
    value = row.get(name)
    if value is None or pd.isna(value):
        return "–"
    text = _percent(value, row.get(f"{name}_low"), row.get(f"{name}_high"), intervals)
    if row.get("ok_seeds", 1) < row.get("seeds", 1):
        text += f" ({row['seeds'] - row['ok_seeds']} of {row['seeds']} seeds failed)"
    if row.get("nonfinite", 0) > 0:
        text += f" (NaN {100 * row['nonfinite']:.0f}%)"
    if row.get("cap_bound"):
        text += " (cap)"
    return text


def _lr_text(lr) -> str:
    return "–" if lr is None or pd.isna(lr) else f"{lr:.0e}".replace("e-0", "e-")


def _fmt(x, spec: str) -> str:
    return "–" if x is None or pd.isna(x) else format(x, spec)


def _span(values: pd.Series, spec: str) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if not len(values):
        return "–"
    low, high = values.min(), values.max()
    return format(low, spec) if low == high else f"{format(low, spec)}–{format(high, spec)}"


def training_table(cells: pd.DataFrame) -> str:
    """One row per model, task and learning rate (its seeds together, means over them); ✓ marks the
    chosen rate. `seconds` is the wall clock of training, `CPU s` the CPU time of its process: on a
    shared machine the second is close to what the first would be on a quiet one."""
    lines = [
        "| model | task | T train | lr | chosen | seeds | status | val acc | steps | stopped by | "
        "cap bound | seconds | CPU s | final loss | params | state at T train (KiB) |",
        "|---|---|---:|---:|:-:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    cells = runs(cells)
    for (label, task, _lr), g in cells.groupby(["label", "task_label", "lr"], sort=False, dropna=False):
        first = g.iloc[0]
        stops = g["stop_reason"].value_counts() if "stop_reason" in g else pd.Series(dtype=int)
        stopped = ", ".join(f"{k} ×{v}" if len(g) > 1 else str(k) for k, v in stops.items()) or "–"
        statuses = g["status"].value_counts()
        status = ", ".join(f"{k} ×{v}" if len(g) > 1 else str(k) for k, v in statuses.items())
        capped = sum(_flag(x) for x in g["cap_bound"]) if "cap_bound" in g else 0
        state = pd.to_numeric(g.get("state_bytes"), errors="coerce").mean() if "state_bytes" in g else None
        fields = [
            label,
            task,
            first["seq_len"],
            _lr_text(first["lr"]),
            "✓" if first["chosen"] else "",
            len(g),
            status,
            _fmt(100 * g["val"].mean(), ".1f"),
            _span(g["steps_run"], ".0f") if "steps_run" in g else "–",
            stopped,
            f"**{capped}**" if capped else "0",
            _fmt(pd.to_numeric(g.get("train_seconds"), errors="coerce").mean(), ".1f"),
            _fmt(pd.to_numeric(g.get("train_cpu_seconds"), errors="coerce").mean(), ".1f"),
            _fmt(pd.to_numeric(g.get("final_loss"), errors="coerce").mean(), ".3g"),
            _fmt(pd.to_numeric(g.get("n_params"), errors="coerce").mean(), ",.0f"),
            _fmt(None if state is None or pd.isna(state) else state / 1024, ",.1f"),
        ]
        lines.append("| " + " | ".join(map(str, fields)) + " |")
    return "\n".join(lines)


def distance_grid(long: pd.DataFrame) -> pd.DataFrame:
    """Accuracy by (model, task, distance bin, evaluation length), pooled over the seeds of the chosen
    learning rate: one row per non-empty bin."""
    rows = []
    for _, r in long[long["chosen"] & (long["status"] == "ok")].iterrows():
        for b in r["by_distance"] if _is_list(r["by_distance"]) else []:
            rows.append(
                {
                    "label": r["label"],
                    "task_label": r["task_label"],
                    "train_len": r["train_len"],
                    "eval_len": r["eval_len"],
                    "max_distance": b["max_distance"],
                    "correct": b["correct"],
                    "total": b["total"],
                }
            )
    if not rows:
        return pd.DataFrame()
    grid = (
        pd.DataFrame(rows)
        .groupby(
            ["label", "task_label", "train_len", "eval_len", "max_distance"], sort=False, as_index=False
        )[["correct", "total"]]
        .sum()
    )
    grid = grid[grid["total"] > 0]
    return grid.assign(accuracy=grid["correct"] / grid["total"])


def plot_curves(cells: pd.DataFrame, path: Path) -> None:
    """Training loss (top) and validation accuracy (bottom) against step, one column per task: every seed
    at the chosen learning rate."""
    cells = runs(cells)
    cells = cells[cells["chosen"]]
    tasks = list(dict.fromkeys(cells["task_label"]))
    labels = list(dict.fromkeys(cells["label"]))
    colors = dict(zip(labels, sns.color_palette(n_colors=len(labels)), strict=True))
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6), squeeze=False, sharex="col")
    for j, task in enumerate(tasks):
        seen = set()
        for _, c in cells[cells["task_label"] == task].iterrows():
            for i, name in enumerate(("loss_curve", "val_curve")):
                points = c.get(name)
                if _is_list(points) and points:
                    x, y = zip(*points, strict=True)
                    first = (c["label"], i) not in seen
                    seen.add((c["label"], i))
                    axes[i][j].plot(x, y, color=colors[c["label"]], label=c["label"] if first else None, lw=1)
        axes[0][j].set_title(task)
        axes[0][j].set_yscale("log")
        axes[1][j].set_ylim(-0.02, 1.02)
        axes[1][j].set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("validation accuracy")
    if axes[1][-1].get_legend_handles_labels()[0]:
        axes[1][-1].legend(title="model", loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
