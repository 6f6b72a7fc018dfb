"""The state-tracking part of the accuracy section (tasks scored by position, bench/tasks/state.py):

- one table per task, models x evaluation length: accuracy over every position (mean over seeds at the
  chosen learning rate, 95% interval) and the longest prefix at which the model is still at least 90%
  correct (``longest_prefix_90``, one figure per seed), then the accuracy at the positions past the
  training length at the longest evaluation;
- a plot of accuracy against position (doubling buckets, log x) at the longest evaluation length, the
  training length and the chance level (1 / the group's order) marked;
- per task, one sentence on what Theorem 4.1 of the Titans paper (and, where it says nothing, the work on
  linear recurrences) predicts, and one on what was measured, written from the results.

The learning rate is chosen, and the seeds summarised, as for the recall tasks
(bench/analysis/selection.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.analysis.plotting import model_styles, plt, save
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
from bench.analysis.text import lr_text
from bench.errors import BenchError
from bench.registry import context_argument
from bench.results import AccuracyRow
from bench.tasks import make_task

BY_POSITION = "state_accuracy_by_position.png"
CURVES = "state_training_curves.png"
LEVEL = 90  # percent: longest_prefix_90


def group_name(task: str, args) -> str | None:
    """The group of a state task from its name and arguments ("Z2", "Z5", "A5", ...), or None."""
    try:
        return make_task(task, args if isinstance(args, dict) else {}).group.name
    except (BenchError, AttributeError, NotImplementedError):
        return None


def _order(name: str | None) -> int | None:
    if not name:
        return None
    kind, n = name[0], int(name[1:])
    return n if kind == "Z" else math.factorial(n) // (2 if kind == "A" else 1)


def prediction(name: str | None) -> str:
    """What theory says about this group's word problem: statements of the papers, not of our results."""
    if not name:
        return "Theorem 4.1 concerns word problems outside TC⁰; this task's group is unknown here."
    kind, n = name[0], int(name[1:])
    if name == "Z2":
        return (
            "parity is in TC⁰, so Theorem 4.1 (which places the Transformer, diagonal linear recurrences "
            "and DeltaNet in TC⁰) predicts no separation on it; what binds instead is Grazzi et al. (2024): "
            "a finite-precision linear recurrence whose transitions have only non-negative eigenvalues "
            "(Mamba, Mamba2, DeltaNet and Gated DeltaNet with β in (0, 1)) cannot track parity at every "
            "length, an obstacle that β in (0, 2) (`allow_neg_eigval`) removes."
        )
    if kind == "Z":
        return (
            f"counting mod {n} is in TC⁰ (an abelian group), so Theorem 4.1 predicts no separation on it; "
            "a linear recurrence can count mod m at every length only if its transitions can rotate "
            "(complex eigenvalues, or products of reflections; Grazzi et al. 2024), which Mamba's "
            "positive diagonal transitions cannot."
        )
    if n >= 5 and kind in "SA":
        return (
            f"{name}'s word problem is NC¹-complete (Barrington 1989): unless TC⁰ = NC¹, Theorem 4.1 "
            "predicts that the Transformer, Mamba, Mamba2 and DeltaNet (placed in TC⁰) cannot solve it at "
            "every length at a fixed depth, while Titans is claimed more expressive in state tracking "
            "(DeltaNet with β in (0, 2) is outside the theorem: Grazzi et al. 2024 show such recurrences "
            "can, over enough layers, recognise any regular language)."
        )
    return f"{name} is solvable, its word problem in TC⁰: Theorem 4.1 predicts no separation on it."


def _prefix_text(values: list, length: int) -> str:
    """One figure per seed; "≥T" where no position fell short (the evaluation is too short to see more)."""
    texts = [f"≥{length}" if v >= length else str(int(v)) for v in values if v is not None and v == v]
    return "/".join(texts) or "–"


def _extra_args(row: AccuracyRow) -> str:
    """The model arguments other than the attention context (shown in its own column)."""
    try:
        declared = context_argument(row.model)
    except BenchError:
        declared = None
    context = declared[0] if declared else None
    return ", ".join(f"{k}={v}" for k, v in sorted(row.model_args.items()) if k != context)


def state_tables(records: list[AccuracyRow], long: pd.DataFrame) -> list[str]:
    summary = summarize(long)
    chosen = long[long["chosen"]]
    by_model = {(r.label, r.task_label): r for r in records}
    out = []
    for task in dict.fromkeys(summary["task_label"]):
        part = summary[summary["task_label"] == task]
        train_len = int(part["train_len"].iloc[0])
        lengths = sorted(dict.fromkeys(part["eval_len"]))
        longest = lengths[-1]
        first = next(r for r in records if r.task_label == task)
        name = group_name(first.task, first.task_args)
        head = [f"T={n}" for n in lengths] + [f"positions > {train_len} at T={longest}"]
        out += [
            f"**{task}** (group {name or '?'}, order {_order(name) or '?'}: chance "
            f"{100 / (_order(name) or math.nan):.1f}%; trained at L = {train_len})",
            "",
            "| model | " + " | ".join(head) + " | args | context | lr |",
            "|---|" + "---:|" * len(head) + "---|---|---|",
        ]
        for label in dict.fromkeys(part["label"]):
            rows = part[part["label"] == label].set_index("eval_len")
            texts = []
            for length in lengths:
                if length not in rows.index:
                    texts.append("–")
                    continue
                row = rows.loc[length]
                seeds = chosen[
                    (chosen["label"] == label)
                    & (chosen["task_label"] == task)
                    & (chosen["eval_len"] == length)
                ]
                text = cell_text(row)
                if row["status"] == "ok":
                    text += f", {LEVEL}%: {_prefix_text(seeds['longest_prefix_90'].tolist(), length)}"
                texts.append(text)
            texts.append(cell_text(rows.loc[longest], "beyond_train") if longest in rows.index else "–")
            one = rows.iloc[0]
            extra = _extra_args(by_model[(label, task)]) or "–"
            texts += [extra, one["context"], lr_text(one["lr"])]
            out.append(f"| {label} | " + " | ".join(texts) + " |")
        out.append("")
    return out


def measured(long: pd.DataFrame, task: str) -> str:
    """What the results show on one task, in words: who is at least 90% right over the training length,
    whose 90% prefix goes past it in every seed (at the longest evaluation), and who never falls short."""
    part = long[long["chosen"] & (long["task_label"] == task)]
    if not len(part):
        return "no results."
    train_len = int(part["train_len"].iloc[0])
    longest = int(part["eval_len"].max())
    summary = summarize(part)
    at_train = summary[summary["eval_len"] == train_len].dropna(subset=["accuracy"])
    trained = at_train[at_train["accuracy"] >= LEVEL / 100].sort_values("accuracy", ascending=False)
    best = at_train.sort_values("accuracy", ascending=False)
    text = f"over the training length (L = {train_len}) "
    if len(trained):
        verb = "is" if len(trained) == 1 else "are"
        text += f"{len(trained)} of {len(at_train)} models {verb} at least {LEVEL}% correct on average ("
        text += ", ".join(f"{r['label']} {100 * r['accuracy']:.1f}%" for _, r in trained.iterrows()) + ")"
    elif len(best):
        top = best.iloc[0]
        text += (
            f"no model is {LEVEL}% correct on average (best {top['label']} {100 * top['accuracy']:.1f}%), "
            "so this run cannot tell the models apart on it: none learned the task even at the training "
            "length"
        )
    at_end = part[(part["eval_len"] == longest) & (part["status"] == "ok")]
    beyond = []
    for label, g in at_end.groupby("label", sort=False):
        values = g["longest_prefix_90"].dropna().tolist()
        if values and len(values) == len(g) and min(values) > train_len:
            beyond.append(f"{label} ({_prefix_text(values, longest)})")
    if beyond:
        text += f"; at T = {longest} the {LEVEL}% prefix goes past L in every seed for " + ", ".join(beyond)
    else:
        text += f"; at T = {longest} no model's {LEVEL}% prefix goes past L in every seed"
    return text + "."


def plot_by_position(long: pd.DataFrame, path: Path) -> None:
    """Accuracy by position bucket at the longest evaluation length, one panel per task, one line per
    model (pooled over its seeds at the chosen learning rate)."""
    grid = distance_grid(long)
    tasks = list(dict.fromkeys(grid["task_label"]))
    labels = list(dict.fromkeys(grid["label"]))
    styles = model_styles(labels)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = grid[grid["task_label"] == task]
        longest = part["eval_len"].max()
        part = part[part["eval_len"] == longest]
        for label in labels:
            line = part[part["label"] == label].sort_values("max_distance")
            if len(line):
                ax.plot(
                    line["max_distance"], 100 * line["accuracy"], ms=3, lw=1.2, label=label,
                    **styles[label].kwargs(),
                )  # fmt: skip
        train_len = part["train_len"].iloc[0]
        ax.axvline(train_len, color="grey", lw=1, ls="--")
        ax.text(train_len, 2, " L", color="grey", fontsize=8, va="bottom")
        order = long.loc[long["task_label"] == task, "chance_order"].dropna()
        if len(order):
            ax.axhline(100 / order.iloc[0], color="black", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-2, 104)
        ax.set_title(f"{task} (T = {longest})")
        ax.set_xlabel("position: prefix length (bucket's upper end)")
    axes[0][0].set_ylabel("accuracy % (chosen lr, seeds pooled)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=7, title="model")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    save(fig, path)


@register_section("state")
def state_section(rows: list[AccuracyRow], run_dir: Path) -> list[str]:
    """Markdown lines for the accuracy cells of state-tracking tasks; writes the plots into ``run_dir``."""
    long = by_length(rows)
    groups = {r.task_label: group_name(r.task, r.task_args) for r in rows}
    long["chance_order"] = long["task_label"].map(lambda t: _order(groups.get(t)))
    seeds = sorted({r.seed for r in rows})
    first = rows[0]
    out = [
        "## State tracking: group word problems, trained short, evaluated long",
        "",
        "Each model reads uniformly drawn group elements and must output, at every position, the product "
        "of the prefix read so far (bench/tasks/state.py); it is trained at length L and scored at every "
        "position of held-out sequences of L and longer. `T=n`: accuracy over all n positions, mean over "
        "seeds at the chosen learning rate with its 95% interval "
        + (
            f"(Student's t over the {len(seeds)} seeds, never narrower than Wilson's over the examples)"
            if len(seeds) > 1
            else "(Wilson over the evaluation examples: one seed)"
        )
        + f"; `{LEVEL}%: p`: the longest prefix length p at which the model is still at least {LEVEL}% "
        "correct at every position (over the evaluation examples; one figure per seed, `≥T` when no "
        f"position of the T evaluated falls short). The last column scores only the positions past L at "
        "the longest length: the extrapolation figure. The first position is not scored (its answer is its "
        "input, a copy every model learns at once); chance is 1 / the group's order at every scored "
        "position. "
        "`args`: the model options that matter here (`allow_neg_eigval=True`: DeltaNet's β in (0, 2), "
        "negative eigenvalues; Mamba's transitions are positive, as the architecture has them). "
        "`context`: the hybrids' attention window or segment.",
        "",
        f"Model shape: d_model {first.d_model}, {first.n_layers} layers; seeds: "
        f"{', '.join(str(s) for s in seeds) or '–'}.",
        "",
    ]
    out += quality_section(rows, "accuracy")
    out += state_tables(rows, long)
    out += ["What the theory predicts, and what was measured:", ""]
    for task in dict.fromkeys(long["task_label"]):
        out.append(f"- **{task}**: {prediction(groups.get(task))} Measured: {measured(long, task)}")
    out += [
        "",
        "These are finite-length measurements of small models after a short training: a model that fails "
        "here may succeed with more training, and one that succeeds to 8L is not shown to succeed at every "
        "length. The theorem is about every length.",
        "",
        "### State tracking: training",
        "",
        *training_table(rows, "accuracy"),
        "",
    ]
    if len(distance_grid(long)):
        plot_by_position(long, run_dir / BY_POSITION)
        out += [f"![accuracy by position]({BY_POSITION})", ""]
    plot_curves(rows, run_dir / CURVES, "validation accuracy")
    out += [f"![state tracking: training curves]({CURVES})", ""]
    return out
