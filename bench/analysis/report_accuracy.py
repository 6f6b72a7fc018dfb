"""The accuracy section of REPORT.md: a table like the Titans paper's Table 2 (models x task x evaluation
length, accuracy %), its heatmap, the training curves, and accuracy against state size (Zoology's
recall/state frontier). Built from the stored records of accuracy cells only."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

HEATMAP = "accuracy_heatmap.png"
CURVES = "training_curves.png"
FRONTIER = "accuracy_vs_state.png"


def _is_list(x) -> bool:
    return isinstance(x, list)


def by_length(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, evaluation length): label, task_label, eval_len, accuracy, state_bytes, status.
    A cell that did not train (crashed, timed out) still gets its rows, with no accuracy."""
    rows = []
    for _, cell in cells.iterrows():
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
                    "state_bytes": e.get("state_bytes"),
                    "status": cell["status"],
                    "nonfinite": e.get("nonfinite") or 0.0,
                }
            )
    frame = pd.DataFrame(rows)
    frame["accuracy"] = pd.to_numeric(frame["accuracy"], errors="coerce")
    frame["state_bytes"] = pd.to_numeric(frame["state_bytes"], errors="coerce")
    frame["column"] = frame["task_label"] + " T=" + frame["eval_len"].astype(str)
    return frame


def _columns(long: pd.DataFrame) -> list[str]:
    """Task columns in the order the tasks first appear, each task's lengths ascending."""
    tasks = list(dict.fromkeys(long["task_label"]))
    ordered = long.sort_values("eval_len")
    return [c for t in tasks for c in dict.fromkeys(ordered.loc[ordered["task_label"] == t, "column"])]


def _cell_text(row) -> str:
    if row["status"] != "ok":
        return "div." if row["status"] == "diverged" else row["status"]
    if pd.isna(row["accuracy"]):
        return "–"
    text = f"{100 * row['accuracy']:.1f}"
    return f"{text} (NaN {100 * row['nonfinite']:.0f}%)" if row.get("nonfinite", 0) > 0 else text


def table(long: pd.DataFrame) -> str:
    long = long.assign(text=long.apply(_cell_text, axis=1))
    pivot = long.pivot_table(index="label", columns="column", values="text", aggfunc="last", sort=False)
    columns = _columns(long)
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, row in pivot.reindex(columns=columns).iterrows():
        lines.append(f"| {label} | " + " | ".join("–" if pd.isna(v) else v for v in row) + " |")
    return "\n".join(lines)


def _fmt(x, spec: str) -> str:
    return "–" if x is None or pd.isna(x) else format(x, spec)


def training_table(cells: pd.DataFrame) -> str:
    lines = [
        "| model | task | T train | status | steps | seconds | stopped by | final loss | params | "
        "state at T train (KiB) |",
        "|---|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for _, c in cells.iterrows():
        state = c.get("state_bytes")
        fields = [
            c["label"],
            c["task_label"],
            c["seq_len"],
            c["status"],
            _fmt(c.get("steps_run"), ".0f"),
            _fmt(c.get("train_seconds"), ".1f"),
            c.get("stop_reason") if isinstance(c.get("stop_reason"), str) else "–",
            _fmt(c.get("final_loss"), ".3g"),
            _fmt(c.get("n_params"), ",.0f"),
            _fmt(None if state is None or pd.isna(state) else state / 1024, ",.1f"),
        ]
        lines.append("| " + " | ".join(map(str, fields)) + " |")
    return "\n".join(lines)


def plot_heatmap(long: pd.DataFrame, path: Path) -> None:
    columns = _columns(long)
    pivot = long.pivot_table(index="label", columns="column", values="accuracy", aggfunc="last", sort=False)
    pivot = 100 * pivot.reindex(columns=columns)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(columns), 2.0 + 0.4 * len(pivot)))
    sns.heatmap(
        pivot, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis", ax=ax, cbar_kws={"label": "%"}
    )
    ax.set_xlabel("task, evaluation length")
    ax.set_ylabel("model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(cells: pd.DataFrame, path: Path) -> None:
    """Training loss (top) and validation accuracy (bottom) against step, one column per task."""
    tasks = list(dict.fromkeys(cells["task_label"]))
    labels = list(dict.fromkeys(cells["label"]))
    colors = dict(zip(labels, sns.color_palette(n_colors=len(labels)), strict=True))
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6), squeeze=False, sharex="col")
    for j, task in enumerate(tasks):
        for _, c in cells[cells["task_label"] == task].iterrows():
            for i, name in enumerate(("loss_curve", "val_curve")):
                points = c.get(name)
                if _is_list(points) and points:
                    x, y = zip(*points, strict=True)
                    axes[i][j].plot(x, y, color=colors[c["label"]], label=c["label"])
        axes[0][j].set_title(task)
        axes[0][j].set_yscale("log")
        axes[1][j].set_ylim(-0.02, 1.02)
        axes[1][j].set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("validation accuracy")
    if axes[1][-1].get_legend_handles_labels()[0]:
        axes[1][-1].legend(title="model", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(long: pd.DataFrame, path: Path) -> None:
    data = long.dropna(subset=["accuracy", "state_bytes"]).rename(columns={"label": "model"})
    data["evaluated at"] = "T=" + data["eval_len"].astype(str)
    grid = sns.relplot(
        data=data,
        x="state_bytes",
        y="accuracy",
        hue="model",
        style="evaluated at",
        col="task_label",
        kind="scatter",
        s=70,
        height=3.2,
        aspect=1.2,
    )
    grid.set(xscale="log", ylim=(-0.02, 1.02))
    grid.set_axis_labels("inference state (bytes per sequence)", "accuracy")
    grid.set_titles("{col_name}")
    grid.savefig(path, dpi=120)
    plt.close(grid.figure)


def accuracy_section(cells: pd.DataFrame, run_dir: Path) -> list[str]:
    """Markdown lines for the accuracy cells of a run; writes the plots into ``run_dir``."""
    long = by_length(cells)
    first = cells.iloc[0]
    out = [
        "## Accuracy: synthetic recall, trained from scratch",
        "",
        "Each model is trained from scratch on each task at the training length, then scored on held-out "
        "examples at that length and beyond it (T = evaluation length). Accuracy %: MQAR counts queries "
        "answered; S-NIAH counts needles whose whole value is generated exactly. `div.`: training diverged. "
        "`(NaN x%)`: the model's outputs were not finite on x% of the examples at that length.",
        "",
        f"Model shape: d_model {first['d_model']}, {first['n_layers']} layers, each task's own vocabulary.",
        "",
        table(long),
        "",
        "### Training",
        "",
        training_table(cells),
        "",
    ]
    plots = [
        (HEATMAP, "accuracy heatmap", plot_heatmap, long),
        (CURVES, "training curves", plot_curves, cells),
    ]
    if long["accuracy"].notna().any():
        plots.append((FRONTIER, "accuracy vs state size", plot_frontier, long))
    for filename, title, plot, data in plots:
        plot(data, run_dir / filename)
        out += [f"![{title}]({filename})", ""]
    return out
