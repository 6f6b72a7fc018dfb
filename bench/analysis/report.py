"""REPORT.md and its plots, generated from a run's stored results only."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench import results  # noqa: E402
from bench.analysis.report_accuracy import accuracy_section  # noqa: E402
from bench.spec.config import ACCURACY_MODE  # noqa: E402

MODE_TITLES = {
    "train": "Training throughput (forward + backward, tokens/s)",
    "prefill": "Prefill throughput (inference-mode forward, tokens/s)",
    "decode": "Decode throughput (tokens/s of `step` after a prompt of seq_len tokens)",
}


def _si(x: float) -> str:
    if pd.isna(x):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _mib(x: float) -> str:
    return "–" if pd.isna(x) else f"{x / 2**20:,.1f}"


def _table(frame: pd.DataFrame, value: str, fmt) -> str:
    """Rows: model (and batch/dtype when they vary); columns: seq_len."""
    index = ["label"] + [c for c in ("batch_size", "dtype") if frame[c].nunique() > 1]
    pivot = frame.pivot_table(index=index, columns="seq_len", values=value, aggfunc="last")
    header = [*(i.replace("label", "model") for i in index), *(f"T={c}" for c in pivot.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in pivot.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        lines.append("| " + " | ".join([*map(str, idx), *(fmt(v) for v in row)]) + " |")
    return "\n".join(lines)


def _throughput_cell(row) -> str:
    spread = row["iqr_s"] / row["median_s"] if row["median_s"] else float("nan")
    return f"{_si(row['tokens_per_s'])} ±{100 * spread / 2:.0f}%"


def _environment(manifest: dict) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in sorted(manifest.get("packages", {}).items()))
    rows = [
        ("device", manifest.get("device")),
        (
            "GPU",
            f"{manifest.get('gpu_name')} (driver {manifest.get('driver_version')}, CUDA "
            f"{manifest.get('cuda_version')})"
            if manifest.get("gpu_name")
            else "none",
        ),
        (
            "CPU",
            f"{manifest.get('cpu')} ({manifest.get('cpu_count')} cores, "
            f"{manifest.get('torch_threads')} torch threads)",
        ),
        ("python", manifest.get("python")),
        ("packages", pkgs),
        ("TF32 (matmul / cuDNN)", f"{manifest.get('tf32_matmul')} / {manifest.get('tf32_cudnn')}"),
        ("git commit", f"{manifest.get('git_commit')}{' (dirty)' if manifest.get('git_dirty') else ''}"),
        ("command", f"`{manifest.get('command')}`"),
        ("started", manifest.get("created_at")),
        ("seed", manifest.get("seed")),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _plot(frame: pd.DataFrame, y: str, ylabel: str, path: Path, col: str | None = "mode") -> None:
    grid = sns.relplot(
        data=frame,
        x="seq_len",
        y=y,
        hue="label",
        style="label",
        col=col,
        kind="line",
        markers=True,
        dashes=False,
        height=3.2,
        aspect=1.2,
        facet_kws={"sharey": False},
    )
    grid.set(xscale="log", yscale="log")
    grid.set_axis_labels("sequence length (tokens)", ylabel)
    grid.legend.set_title("model")
    grid.savefig(path, dpi=120)
    plt.close(grid.figure)


def write_report(run_dir: str | Path) -> Path:
    """Write REPORT.md (and PNG plots beside it) for the run in ``run_dir``; returns its path."""
    run_dir = Path(run_dir)
    frame = results.load(run_dir)
    manifest = results.read_manifest(run_dir)
    name = manifest.get("name", run_dir.name)
    out = [
        f"# Benchmark report: {name}",
        "",
        f"Generated from `{results.RESULTS}` ({len(frame)} cells). All models in a table share one dtype, "
        "width and depth; throughput is the median over repeats after warm-up (± half the "
        "inter-quartile range).",
        "",
        "## Environment",
        "",
        _environment(manifest),
        "",
    ]

    counts = frame["status"].value_counts().to_dict()
    out += ["## Cells", "", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), ""]
    shaped = frame[frame["mode"] != ACCURACY_MODE] if "mode" in frame else frame  # accuracy has its own
    if "d_model" in frame and len(shaped):
        first = shaped.iloc[0]
        out += [
            f"Model shape: d_model {first['d_model']}, {first['n_layers']} layers, "
            f"vocabulary {first['vocab_size']}.",
            "",
        ]

    ok = frame[frame["status"] == "ok"].copy()
    timing = ok[ok["mode"].isin(list(MODE_TITLES))] if "mode" in ok else ok.iloc[0:0]
    if len(timing):
        out += ["## Backends", "", "| model | backend |", "|---|---|"]
        for label, backend in (
            timing.groupby("label")["backend"].agg(lambda s: ", ".join(sorted(set(s)))).items()
        ):
            out.append(f"| {label} | {backend} |")
        out.append("")
        for mode, title in MODE_TITLES.items():
            part = timing[timing["mode"] == mode].copy()
            if not len(part):
                continue
            part["cell"] = part.apply(_throughput_cell, axis=1)
            out += [f"## {title}", "", _table(part, "cell", str), ""]
        out += [
            "## Peak memory (MiB)",
            "",
            "CUDA: `max_memory_allocated` after warm-up. CPU: peak RSS of the process that measured "
            "only that cell (includes the PyTorch runtime).",
            "",
        ]
        for mode in MODE_TITLES:
            part = timing[timing["mode"] == mode]
            if len(part):
                out += [f"**{mode}**", "", _table(part, "peak_mem_bytes", _mib), ""]
        part = timing.drop_duplicates(["label", "seq_len", "batch_size", "dtype"])
        out += [
            "## Inference state size (MiB)",
            "",
            "KV cache for attention, recurrent state for the others, after seq_len tokens.",
            "",
            _table(part, "state_bytes", _mib),
            "",
        ]

        plots = [
            ("throughput.png", "tokens_per_s", "tokens/s", timing, "mode"),
            ("memory.png", "peak_mem_bytes", "peak memory (bytes)", timing, "mode"),
            ("state_size.png", "state_bytes", "state (bytes)", part, None),
        ]
        out += ["## Plots", ""]
        for filename, y, ylabel, data, col in plots:
            _plot(data, y, ylabel, run_dir / filename, col)
            out += [f"![{ylabel}]({filename})", ""]

    if "mode" in frame and (frame["mode"] == ACCURACY_MODE).any():
        out += accuracy_section(frame[frame["mode"] == ACCURACY_MODE], run_dir)

    failed = frame[frame["status"] != "ok"]
    if len(failed):
        out += [
            "## Cells that did not finish",
            "",
            "| model | mode | T | B | status | reason |",
            "|---|---|---|---|---|---|",
        ]
        for _, row in failed.iterrows():
            reason = str(row.get("error", "")).replace("|", "\\|").replace("\n", " ")[:160]
            mode = f"accuracy: {row['task_label']}" if row["mode"] == ACCURACY_MODE else row["mode"]
            out.append(
                f"| {row['label']} | {mode} | {row['seq_len']} | {row['batch_size']} | "
                f"{row['status']} | {reason} |"
            )
        out.append("")

    path = run_dir / "REPORT.md"
    path.write_text("\n".join(out))
    return path
