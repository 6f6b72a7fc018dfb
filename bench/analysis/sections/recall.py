"""The recall section of REPORT.md (records scored by distance: MQAR, S-NIAH), from stored records only:

- one table per task like the Titans paper's Table 2 (models x evaluation length, accuracy %), with the
  beyond-training-length accuracy next to the overall one at every length above the training length, a
  95% interval on each, each model's attention context and chosen learning rate;
- the training runs: every learning rate and seed, the chosen rate marked, steps run, what stopped them
  and whether the seconds cap bound;
- plots: accuracy by distance x evaluation length (RULER's depth x length), the overall heatmap, the
  training curves, accuracy against state size (Zoology's recall/state frontier) and, when a sweep varies
  one argument of a task (e.g. the number of key-value pairs), accuracy against it.

How the learning rate is chosen and seeds are summarised: bench/analysis/selection.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.analysis.plotting import model_styles, plt, save, sns
from bench.analysis.quality import quality_section
from bench.analysis.sections import register_section
from bench.analysis.selection import (
    by_length,
    cell_text,
    distance_grid,
    plot_curves,
    summarize,
    training_table,
)
from bench.analysis.text import lr_text, span
from bench.errors import BenchError
from bench.results import AccuracyRow
from bench.tasks import make_task

HEATMAP = "accuracy_heatmap.png"
BY_DISTANCE = "accuracy_by_distance.png"
CURVES = "training_curves.png"
FRONTIER = "accuracy_vs_state.png"
DIFFICULTY = "accuracy_vs_difficulty.png"


def table(long: pd.DataFrame, intervals: bool = True, chance: dict[str, str] | None = None) -> str:
    """One markdown table per task: a column per evaluation length (overall), and after each length above
    the training length one for the items whose distance exceeds it; then context and learning rate.
    ``chance``: task label -> what a model that learned nothing scores, said above its table."""
    summary = summarize(long)
    out = []
    for task in dict.fromkeys(summary["task_label"]):
        part = summary[summary["task_label"] == task]
        train_len = part["train_len"].iloc[0]
        lengths = sorted(dict.fromkeys(part["eval_len"]))
        columns = []
        for length in lengths:
            columns.append((f"{task} T={length}", length, "accuracy"))
            if length > train_len:
                columns.append((f"{task} T={length}, d>{train_len}", length, "beyond_train"))
        names = [c[0] for c in columns]
        if out:
            out.append("")
        if chance and chance.get(task):
            out += [f"**{task}**: {chance[task]}.", ""]
        out += [
            "| model | " + " | ".join(names) + " | context | lr |",
            "|---|" + "---:|" * len(names) + "---|---|",
        ]
        for label in dict.fromkeys(part["label"]):
            rows = part[part["label"] == label].set_index("eval_len")
            texts = [
                cell_text(rows.loc[length], field, intervals) if length in rows.index else "–"
                for _, length, field in columns
            ]
            first = rows.iloc[0]
            out.append(
                f"| {label} | " + " | ".join(texts) + f" | {first['context']} | {lr_text(first['lr'])} |"
            )
    return "\n".join(out)


def _columns(long: pd.DataFrame) -> list[str]:
    """Task columns in the order the tasks first appear, each task's lengths ascending."""
    tasks = list(dict.fromkeys(long["task_label"]))
    ordered = long.sort_values("eval_len")
    return [c for t in tasks for c in dict.fromkeys(ordered.loc[ordered["task_label"] == t, "column"])]


def plot_heatmap(long: pd.DataFrame, path: Path) -> None:
    summary = summarize(long)
    columns = _columns(long)
    pivot = summary.pivot_table(
        index="label", columns="column", values="accuracy", aggfunc="last", sort=False
    )
    pivot = 100 * pivot.reindex(index=list(dict.fromkeys(summary["label"])), columns=columns)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(columns), 2.0 + 0.4 * len(pivot)))
    sns.heatmap(
        pivot, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis", ax=ax, cbar_kws={"label": "%"}
    )
    ax.set_xlabel("task, evaluation length (all items)")
    ax.set_ylabel("model")
    fig.tight_layout()
    save(fig, path)


FEW_ITEMS = 10  # a heatmap bin with fewer items than this is marked: its percentage rests on a handful


def _bin_label(accuracy: float, total: int) -> str:
    """A heatmap bin's text: its accuracy over the items it holds, and how many; * when they are few."""
    count = f"{total / 1000:.1f}k" if total >= 1000 else str(total)
    return f"{100 * accuracy:.0f}{'*' if total < FEW_ITEMS else ''}\nn={count}"


def plot_by_distance(grid: pd.DataFrame, path: Path, per_row: int = 5) -> None:
    """RULER's depth x length picture: for each task a row of small heatmaps, one per model, accuracy by
    distance bin (up) and evaluation length (across), each bin with its item count (* under 10 items);
    the line marks the training length."""
    tasks = list(dict.fromkeys(grid["task_label"]))
    labels = list(dict.fromkeys(grid["label"]))
    blocks = math.ceil(len(labels) / per_row)
    ncols = min(per_row, len(labels))
    fig, axes = plt.subplots(
        len(tasks) * blocks, ncols, figsize=(2.8 * ncols + 1, 3.0 * len(tasks) * blocks), squeeze=False
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for i, task in enumerate(tasks):
        part = grid[grid["task_label"] == task]
        bounds = sorted(part["max_distance"].unique())
        lengths = sorted(part["eval_len"].unique())
        train_len = part["train_len"].iloc[0]
        for j, label in enumerate(labels):
            ax = axes[i * blocks + j // per_row][j % per_row]
            ax.set_visible(True)
            cell = part[part["label"] == label]
            pivot = 100 * cell.pivot_table(index="max_distance", columns="eval_len", values="accuracy")
            pivot = pivot.reindex(index=bounds[::-1], columns=lengths)
            totals = cell.pivot_table(index="max_distance", columns="eval_len", values="total")
            totals = totals.reindex(index=bounds[::-1], columns=lengths)
            labels = pivot.copy().astype(object)
            for r in pivot.index:
                for c in pivot.columns:
                    n = totals.loc[r, c]
                    labels.loc[r, c] = "" if pd.isna(n) else _bin_label(pivot.loc[r, c] / 100, int(n))
            sns.heatmap(pivot, vmin=0, vmax=100, cmap="viridis", cbar=False, annot=labels.values, fmt="",
                        annot_kws={"fontsize": 6}, ax=ax)  # fmt: skip
            ax.set_title(f"{label}\n{task}", fontsize=8)
            ax.set_xlabel("T")
            ax.set_ylabel("distance ≤" if j % per_row == 0 else "")
            ax.tick_params(labelsize=7)
            beyond = sum(1 for b in bounds if b > train_len)  # rows above the training length's bin
            if 0 < beyond < len(bounds):
                ax.axhline(beyond, color="red", lw=1.2)
    fig.tight_layout()
    save(fig, path, dpi=110)


def plot_frontier(long: pd.DataFrame, path: Path) -> None:
    data = summarize(long).dropna(subset=["accuracy", "state_bytes"]).rename(columns={"label": "model"})
    data["evaluated at"] = "T=" + data["eval_len"].astype(str)
    grid = sns.relplot(
        data=data,
        x="state_bytes",
        y="accuracy",
        hue="model",
        style="evaluated at",
        col="task_label",
        col_wrap=min(4, data["task_label"].nunique()),
        kind="scatter",
        s=70,
        height=3.2,
        aspect=1.2,
    )
    grid.set(xscale="log", ylim=(-0.02, 1.02))
    grid.set_axis_labels("inference state at T (bytes per sequence)", "accuracy")
    grid.set_titles("{col_name}")
    save(grid.figure, path)


def difficulty_axis(rows: list[AccuracyRow]) -> tuple[str, dict[str, float]] | None:
    """When the tasks are one task under several settings of one numeric argument (Zoology's figure 2
    sweeps the number of key-value pairs), that argument and each task label's value of it."""
    if len({r.task for r in rows}) != 1:
        return None
    args = {r.task_label: r.task_args for r in rows}
    if len(args) < 2:
        return None
    keys = set().union(*args.values())
    varying = [k for k in sorted(keys) if len({repr(a.get(k)) for a in args.values()}) > 1]
    if len(varying) != 1 or not all(isinstance(a.get(varying[0]), int | float) for a in args.values()):
        return None
    return varying[0], {label: a[varying[0]] for label, a in args.items()}


def plot_difficulty(long: pd.DataFrame, axis: tuple[str, dict[str, float]], path: Path) -> None:
    """Accuracy against the swept argument: at the training length, and beyond it at the longest length."""
    name, values = axis
    summary = summarize(long)
    summary["x"] = summary["task_label"].map(values)
    longest = summary.groupby("task_label")["eval_len"].transform("max")
    panels = [
        ("at the training length", summary[summary["eval_len"] == summary["train_len"]], "accuracy"),
        ("beyond the training length (longest T)", summary[summary["eval_len"] == longest], "beyond_train"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    styles = model_styles(list(summary["label"]))
    for ax, (title, part, column) in zip(axes, panels, strict=True):
        for label, style in styles.items():
            line = part[part["label"] == label].sort_values("x")
            if line[column].notna().any():
                ax.plot(line["x"], line[column], label=label, **style.kwargs())
        ax.set_title(title)
        ax.set_xlabel(name)
        ax.set_xscale("log", base=2)
        ticks = sorted(set(values.values()))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("accuracy (mean over seeds, chosen lr)")
    axes[1].legend(title="model", fontsize=7, loc="lower left")
    fig.tight_layout()
    save(fig, path)


def spread_text(long: pd.DataFrame, axis: tuple[str, dict[str, float]] | None) -> list[str]:
    """The best and the worst model at the hardest setting (the largest value of the swept argument, or
    each task), at the training length: how far the task separates them."""
    summary = summarize(long)
    at_train = summary[(summary["eval_len"] == summary["train_len"]) & summary["accuracy"].notna()]
    if not len(at_train):
        return []
    if axis is not None:
        name, values = axis
        hardest = max(values, key=values.get)
        tasks, what = [hardest], f"At the hardest setting ({name} = {values[hardest]}, task {hardest})"
    else:
        tasks, what = list(dict.fromkeys(at_train["task_label"])), "Per task"
    out = []
    for task in tasks:
        part = at_train[at_train["task_label"] == task].sort_values("accuracy", ascending=False)
        if not len(part):
            continue
        best, worst = part.iloc[0], part.iloc[-1]
        spread = 100 * (best["accuracy"] - worst["accuracy"])
        out.append(
            f"{task}: best {best['label']} {100 * best['accuracy']:.1f}%, worst {worst['label']} "
            f"{100 * worst['accuracy']:.1f}% (spread {spread:.1f} points)"
        )
    return [f"{what}, at the training length: " + "; ".join(out) + ".", ""] if out else []


def time_text(rows: list[AccuracyRow]) -> str:
    """How long the cells took: the wall clock of all of them, and an estimate for a quiet core (each
    cell's wall clock scaled by the share of the CPU its training got), for runs on a shared machine."""
    walls = [r.wall_s for r in rows if r.wall_s is not None]
    if not walls:
        return ""
    text = f"{len(rows)} cells, {sum(walls) / 60:.0f} minutes of wall clock in all"
    shares = [
        (r.wall_s, min(1.0, r.train_cpu_seconds / r.train_seconds))
        for r in rows
        if r.wall_s is not None and r.train_cpu_seconds is not None and r.train_seconds
    ]
    if shares:
        quiet = sum(w * s for w, s in shares)
        text += (
            f", about {quiet / 60:.0f} on a quiet core (each cell's wall clock times the share of the "
            "CPU its training got)"
        )
    return text + "."


def smoke_note(rows: list[AccuracyRow]) -> list[str]:
    """The warning that heads a smoke-test run's section (the [accuracy] table's ``smoke_test``)."""
    if not any(r.smoke_test for r in rows):
        return []
    steps = span([r.steps_run for r in rows], ".0f") if rows else "few"
    return [
        f"**Smoke test.** Every model trained for the same {steps} steps, far too few to learn these "
        "tasks: this section shows that training, evaluation and scoring run end to end for every "
        "model, not which architecture recalls better. To compare models, run "
        "`python -m bench run --preset cpu-accuracy` or `--preset cpu-recall` (about 30 minutes each "
        "on two CPU cores) or `--preset paper` (a GPU).",
        "",
    ]


HYBRIDS = {"titans-mal": "a sliding window", "titans-mag": "a sliding window", "titans-mac": "a segment"}


def context_note(rows: list[AccuracyRow]) -> str:
    """What the context column means, naming only the hybrids and the control this run has."""
    models = {r.model for r in rows}
    text = "Context: what the attention of a model can see."
    hybrids = [f"{name}: {what}" for name, what in HYBRIDS.items() if name in models]
    if hybrids:
        text += (
            f" The hybrids ({'; '.join(hybrids)}) get a quarter of the training length unless the "
            "sweep says otherwise, shorter than the distances asked, so recall beyond it must come from "
            "their memory."
        )
    if any(r.label == "transformer-swa" for r in rows):
        text += " `transformer-swa` is the same sliding-window attention without a memory, the control."
    return text


def chance_levels(rows: list[AccuracyRow]) -> dict[str, str]:
    """Task label -> its chance level in words (bench.tasks: ``Task.chance``), where the task is known."""
    out = {}
    for row in rows:
        if row.task_label not in out:
            try:
                out[row.task_label] = make_task(row.task, row.task_args).chance() or ""
            except BenchError:  # a plug-in task not importable here
                out[row.task_label] = ""
    return out


@register_section("recall")
def recall_section(rows: list[AccuracyRow], run_dir: Path) -> list[str]:
    """Markdown lines for the accuracy cells of recall tasks (scored by distance); writes the plots."""
    long = by_length(rows)
    first = rows[0]
    lrs = sorted({r.lr for r in rows if r.lr is not None})
    seeds = sorted({r.seed for r in rows})
    out = ["## Accuracy: synthetic recall, trained from scratch", ""]
    out += smoke_note(rows)
    out += [
        "Each model is trained from scratch on each task at the training length, then scored on held-out "
        "examples at that length and beyond it (T = evaluation length). Accuracy %: MQAR counts queries "
        "answered; S-NIAH counts needles whose whole value is generated exactly. Every query or needle "
        "knows its *distance*, how many tokens back the evidence for its answer lies; `d>L` is the "
        "accuracy over the items whose distance exceeds the training length L, the honest extrapolation "
        "figure (beyond L the evaluation stretches the distances: MQAR asks every key after position L, "
        "S-NIAH spaces its needles evenly over the whole context). "
        "`[low–high]`: 95% interval, "
        + (
            f"Student's t over the {len(seeds)} seeds (with 2 seeds t = 12.7: wide by construction), "
            "never narrower than Wilson's over all their examples pooled"
            if len(seeds) > 1
            else "Wilson over the evaluation examples (one seed)"
        )
        + ". `div.`: training diverged. `(NaN x%)`: the model's outputs were not finite on x% of the "
        "examples at that length. `(cap)`: the seconds cap stopped training before the step budget. "
        "At the training length, `k of n solved`: the seeds at least 90% right there; where seeds split "
        "(some solved, some not, or figures more than 50 points apart) each seed's figure follows, so "
        "that a mean of a bimodal set is never read as a typical result.",
        "",
        *quality_section(rows, "accuracy"),
        context_note(rows) + " "
        f"lr: the chosen rate, from {len(lrs) or 1} tried ({', '.join(lr_text(x) for x in lrs) or 'one'}); "
        "every run is in the training table and results.jsonl.",
        "",
        f"Model shape: d_model {first.d_model}, {first.n_layers} layers, each task's own vocabulary; "
        f"seeds: {', '.join(str(s) for s in seeds) or '–'}.",
        "",
        table(long, chance=chance_levels(rows)),
        "",
    ]
    axis = difficulty_axis(rows)
    if not smoke_note(rows):  # a smoke test ranks nothing
        out += spread_text(long, axis)
    out += [
        "### Training",
        "",
        "One row per model, task and learning rate, over its seeds (✓: the chosen rate). `val loss`: the "
        "validation cross-entropy of the final model (nats per asked token), what the rate is chosen by; "
        "`val accuracy`: its accuracy at the training length (%); `still improving`: runs whose validation "
        "loss was still falling at the end; `stopped by`: `converged` (validation accuracy at the threshold "
        "and the validation loss no longer falling), `threshold` (validation accuracy reached it: the older "
        "rule), `steps` (the budget), `max_seconds` (the safety cap bound: counted in `cap bound`), "
        "`diverged`; `seconds`: wall clock of the training loop, `CPU s`: the CPU time of its process (on a "
        "shared machine, about what a quiet one would take). " + time_text(rows),
        "",
        *training_table(rows, "accuracy"),
        "",
    ]
    plots = [
        (HEATMAP, "accuracy heatmap", lambda p: plot_heatmap(long, p)),
        (CURVES, "training curves", lambda p: plot_curves(rows, p, "validation accuracy")),
    ]
    grid = distance_grid(long)
    if len(grid):
        plots.insert(0, (BY_DISTANCE, "accuracy by distance and evaluation length",
                         lambda p: plot_by_distance(grid, p)))  # fmt: skip
    if long["accuracy"].notna().any():
        plots.append((FRONTIER, "accuracy vs state size", lambda p: plot_frontier(long, p)))
        if axis is not None:
            plots.append((DIFFICULTY, f"accuracy vs {axis[0]}", lambda p: plot_difficulty(long, axis, p)))
    for filename, title, plot in plots:
        plot(run_dir / filename)
        out += [f"![{title}]({filename})", ""]
    return out
