"""The timing section of REPORT.md: what each mode times, the models compared, throughput, peak memory and
state size by length, the flagged cells, and the plots; from the typed rows of timing cells only.

Every number says what it includes: the mode definitions and the memory recipe are written into the
report, cells whose timings drifted, spread widely or never settled are flagged, and a table never
averages cells that differ in dtype or batch size (they get rows, and plot lines, of their own).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.analysis.plotting import length_axis, log_y, plt, save, si, sns
from bench.analysis.sections import register_section
from bench.analysis.text import byte_unit, bytes_text
from bench.results import TimingRow

TIMING_MODES = ("train", "prefill", "decode")

MODE_TITLES = {
    "train": "Training throughput (tokens/s of one optimizer step: forward, backward, AdamW)",
    "prefill": "Prefill throughput (tokens/s of `prefill`: the prompt's states and its last logits)",
    "decode": "Decode throughput (tokens/s of `step` after a prompt of T tokens)",
}
WHAT_IS_TIMED = """\
What is timed, per call (the median over repeats after warm-up, pooled over rounds; ± half the
inter-quartile range):

- **train**: one optimizer step as users train: forward, cross-entropy loss, backward, gradient clipping
  and an AdamW step. Float32 master weights; bf16/fp16 cells run the forward under autocast.
- **prefill**: `model.prefill(prompt)` in inference mode, as a serving stack does it: every layer's
  hidden states and decoding state, and the output head at the last position only.
- **decode**: `decode_tokens` calls of `model.step` after a prompt of T tokens (the prompt is processed
  once, untimed; every repeat starts from a fresh copy of its state). FLOPs and MFU count a step at
  context T.

Peak memory is the tensor bytes live at the peak of one call: weights, gradients, optimizer state,
the decoding state, the inputs and the activations, never the runtime. On CUDA `max_memory_allocated`
after a reset following warm-up; on the CPU the same quantity counted exactly at PyTorch's CPU allocator
(its allocation and free events, reported to the profiler, summed in order over a copy of the model
built inside the count), so it repeats to the byte. For decode, the peak of the steps after the prompt
(weights, the state, a step); the prompt's own peak is listed apart. The CPU's resident size, the
runtime included, is kept as the gross figure.

Flags: ⚠ the first two timed calls differ from the last two by more than 15% (drift), or the spread is
wider than ±25%; † warm-up stopped at its cap before the timings settled. A flagged cell is too noisy to
rank: it is greyed (and parenthesised) in the tables and the plots, and never marked fastest."""

WIDE_SPREAD = 0.5  # IQR over median: beyond it a cell's number is flagged
RANKING = (
    "Bold: the fastest cell of its column among the cells not flagged; a greyed, parenthesised cell is "
    "too noisy to rank."
)


def _si(x) -> str:
    return "–" if x is None or pd.isna(x) else si(x)


def _varying(frame: pd.DataFrame) -> list[str]:
    """The configuration columns besides model and length that differ between cells."""
    return [c for c in ("batch_size", "dtype") if c in frame and frame[c].nunique() > 1]


def _table(frame: pd.DataFrame, value: str, fmt) -> str:
    """Rows: model (and batch/dtype when they vary, never averaged together); columns: seq_len."""
    index = ["label", *_varying(frame)]
    pivot = frame.pivot_table(index=index, columns="seq_len", values=value, aggfunc="last")
    names = {"label": "model", "batch_size": "B"}
    header = [*(names.get(i, i) for i in index), *(f"T={c}" for c in pivot.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in pivot.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        lines.append("| " + " | ".join([*map(str, idx), *(fmt(v) for v in row)]) + " |")
    return "\n".join(lines)


def _flags(row) -> str:
    spread = row["iqr_s"] / row["median_s"] if row.get("median_s") else 0.0
    mark = "⚠" if row.get("drifting") is True or spread > WIDE_SPREAD else ""
    return mark + ("†" if row.get("warmup_settled") is False else "")


def noisy(row) -> bool:
    """Too noisy to rank: drifting, spread beyond ±25%, or warm-up that never settled."""
    return _flags(row) != ""


def _throughput_cell(row, fastest: bool = False) -> str:
    spread = row["iqr_s"] / row["median_s"] if row["median_s"] else float("nan")
    text = f"{_si(row['tokens_per_s'])} ±{100 * spread / 2:.0f}%{_flags(row)}"
    if pd.notna(row.get("mfu")):
        text = f"{text} ({100 * row['mfu']:.1f}% MFU)"
    elif pd.notna(row.get("achieved_flops")):
        text = f"{text} ({_si(row['achieved_flops'])}FLOP/s)"
    if noisy(row):  # grey where the renderer allows colour; parenthesised and italic everywhere
        return f'<span style="color:gray">*({text})*</span>'
    return f"**{text}**" if fastest else text


def ranked_cells(part: pd.DataFrame) -> pd.Series:
    """Each cell's throughput text, the fastest cell that is not too noisy in each column (length, and
    batch size and dtype where they vary) in bold; a noisy cell is greyed and never ranked."""
    trusted = part[~part.apply(noisy, axis=1)]
    groups = ["seq_len", *_varying(part)]
    fastest = set(trusted.groupby(groups)["tokens_per_s"].idxmax()) if len(trusted) else set()
    return pd.Series({i: _throughput_cell(row, i in fastest) for i, row in part.iterrows()}, dtype=object)


LAUNCH_SECONDS = 5e-6  # a kernel launch on a current NVIDIA GPU through PyTorch: about 4-10 us

# Whose code each backend runs, as the report names it; a backend not listed is named as its model names it.
IMPLEMENTATIONS = {
    "torch-chunked": "this project's PyTorch (chunk-parallel)",
    "torch-recurrent": "this project's PyTorch (per-token reference)",
    "torch": "this project's PyTorch (explicit attention)",
    "sdpa-flash": "PyTorch SDPA (flash kernel)",
    "sdpa-efficient": "PyTorch SDPA (memory-efficient kernel)",
    "sdpa-math": "PyTorch SDPA (math kernel)",
    "fla": "upstream fla kernels (Triton)",
    "mamba_ssm": "upstream mamba-ssm kernels (CUDA, Triton)",
    "titans-pytorch": "upstream titans-pytorch (PyTorch)",
}


def implementation(backend: str) -> str:
    """The code a backend string runs, e.g. "torch-chunked+sdpa-flash" -> the memory's and the attention's."""
    return " + ".join(IMPLEMENTATIONS.get(part, f"`{part}`") for part in backend.split("+"))


def _implementations(rows: pd.DataFrame) -> str:
    """Every cell's implementation: one when all the model's cells ran the same, else each with its modes."""
    ran = rows.dropna(subset=["backend"]).groupby("backend", sort=True)["mode"].agg(lambda m: sorted(set(m)))
    if len(ran) <= 1:
        return "; ".join(implementation(b) for b in ran.index) or "–"
    return "; ".join(f"{implementation(b)} ({', '.join(modes)})" for b, modes in ran.items())


def _ceiling(row_device: str, per_token) -> str:
    """The GPU estimate of the tokens/s a launch count allows: from CUDA kernel counts only."""
    if per_token is None or pd.isna(per_token) or per_token <= 0:
        return "–"
    if row_device != "cuda":
        return "not a cap here"  # operator calls on a CPU cost no launch
    return _si(1 / (per_token * LAUNCH_SECONDS))


def models_table(timing: pd.DataFrame) -> str:
    """What is being compared: parameters, backend and whose code it runs, forward FLOPs per token, state at
    each length, the operator calls per token each mode sends to the device, and, for CUDA cells only, the
    ceiling their kernel launches set (a GPU estimate)."""
    lens = sorted(timing["seq_len"].unique())
    unit, scale = byte_unit(timing["state_bytes"])
    modes = [m for m in TIMING_MODES if m in set(timing["mode"])]
    longest = {m: timing.loc[timing["mode"] == m, "seq_len"].max() for m in modes}  # a mode's own lengths
    devices = timing["device"] if "device" in timing else pd.Series(["cpu"] * len(timing), index=timing.index)
    ceilings = (devices == "cuda").any()
    header = ["model", "backend", "implementation that ran", "params", "non-embedding"]
    header += [f"FLOPs/token T={t}" for t in lens]
    header += [f"state T={t} ({unit})" for t in lens]
    header += [f"dispatches/token {m} T={longest[m]}" for m in modes]
    if ceilings:
        header += [f"launch-bound ceiling {m}, GPU estimate (tokens/s)" for m in modes]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    flops_col = "forward_flops_per_token" if "forward_flops_per_token" in timing else "flops_per_token"
    for label, rows in timing.groupby("label", sort=True):
        first = rows.iloc[0]
        by_len = rows.drop_duplicates("seq_len").set_index("seq_len")
        per_token = [_at(rows, m, longest[m], "dispatches_per_token") for m in modes]
        device = devices[rows.index].iloc[0]
        cells = [
            label,
            ", ".join(sorted(set(rows["backend"].dropna()))),
            _implementations(rows),
            _si(first.get("n_params")),
            _si(first.get("n_params_non_embedding")),
            *(_si(by_len[flops_col].get(t)) if flops_col in by_len else "–" for t in lens),
            *(bytes_text(by_len["state_bytes"].get(t), scale) for t in lens),
            *("–" if d is None or pd.isna(d) else f"{d:.3g}" for d in per_token),
            *((_ceiling(device, d) for d in per_token) if ceilings else ()),
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def _at(rows: pd.DataFrame, mode: str, seq_len: int, column: str):
    """A model's value of ``column`` in one mode at one length, or None."""
    cell = rows[(rows["mode"] == mode) & (rows["seq_len"] == seq_len)]
    return cell[column].iloc[0] if column in cell and len(cell) else None


def _dispatch_text(timing: pd.DataFrame) -> str:
    cuda = "device" in timing and (timing["device"] == "cuda").any()
    text = (
        "Parameters (non-embedding: all but the tied embedding), the backend that ran and whose code it is "
        "(this project's own PyTorch, PyTorch's SDPA kernels, or the upstream packages' kernels), the "
        "model's forward FLOPs per token (matmuls, averaged over a causal sequence, output head included), "
        "the decoding state after T tokens, and the operator calls one call of each mode sends to the "
        "device, per token (counted once per cell with the PyTorch profiler outside the timed region: on "
        "CUDA the kernels launched, on the CPU the outermost aten operators plus the kernels of compiled "
        "code). "
    )
    if cuda:
        return text + (
            f"On a GPU each launch costs a few microseconds however small its work, so at "
            f"{LAUNCH_SECONDS * 1e6:g} us a launch (a typical CUDA launch through PyTorch, 4-10 us) the "
            "CUDA kernel count alone bounds the tokens/s of a mode: the launch-bound ceiling, a GPU "
            'estimate from the counted launches, not a measurement. CPU cells get none ("not a cap '
            'here"): a CPU runs an operator without a launch, and measured CPU rates exceed what the same '
            "count would allow on a GPU."
        )
    return text + (
        "On the CPU an operator call is not a kernel launch and costs no launch latency, so these counts "
        "set no ceiling here and none is shown; on a GPU the same code's CUDA kernel count gives a "
        "launch-bound estimate (a CUDA run's report shows it)."
    )


def _rounds_text(timing: pd.DataFrame) -> str:
    rounds = sorted(set(timing["rounds"])) if "rounds" in timing else [1]
    repeats = sorted(set(timing["repeats"].dropna().astype(int))) if "repeats" in timing else []
    per = f"{'/'.join(map(str, repeats))} repeats" if repeats else "the repeats"
    text = "/".join(map(str, rounds))
    return f"{per} in each of {text} round{'s' if rounds != [1] else ''} (a fresh process each), pooled"


# How records written before the allocator count named their CPU figure: the resident size, net.
RESIDENT_NET = "minus the runtime baseline"


def _memory_title(timing: pd.DataFrame) -> str:
    sources = timing["peak_mem_source"].dropna() if "peak_mem_source" in timing else pd.Series([], dtype=str)
    if sources.str.contains(RESIDENT_NET).any():
        return (
            "Peak memory above the runtime (CPU: resident size net of the runtime, as records before the "
            "allocator count measured it: not exact)"
        )
    return "Peak memory: tensor bytes live at the peak of one call"


def gross_memory(timing: pd.DataFrame) -> list[str]:
    """The CPU cells' resident size at its peak over the timed calls, runtime included: what the process
    held, in pages, beside the exact tensor bytes above."""
    cpu = timing[(timing["device"] == "cpu") & timing["peak_mem_gross_bytes"].notna()]
    if not len(cpu):
        return []
    unit, scale = byte_unit(cpu["peak_mem_gross_bytes"])
    out = [
        f"**CPU resident size at its peak over the timed calls, gross ({unit})**: the process's `VmHWM`, "
        "reset before the timed calls (for decode, the copies of the prompt's state between them included), "
        "the Python and PyTorch runtime and whatever the heap kept included, so it is neither exact nor the "
        "model's alone; the runtime's own share, before the model was built, was "
        f"{bytes_text(cpu['mem_baseline_bytes'].median(), scale)} {unit} (median over cells).",
        "",
    ]
    for mode in MODE_TITLES:
        part = cpu[cpu["mode"] == mode]
        if len(part):
            out += [f"*{mode}*", "", _table(part, "peak_mem_gross_bytes", lambda v: bytes_text(v, scale)), ""]
    return out


def _series(frame: pd.DataFrame) -> pd.Series:
    """One line per model and configuration: the model, and the dtype / batch size where they vary."""
    extra = _varying(frame)
    if not extra:
        return frame["label"]
    return frame["label"] + frame[extra].astype(str).apply(lambda r: " (" + ", ".join(
        f"B={v}" if c == "batch_size" else str(v) for c, v in r.items()) + ")", axis=1)  # fmt: skip


def _per_sample(timing: pd.DataFrame) -> pd.DataFrame:
    """One row per timed repeat, so the plots' error bars are the spread of the repeats themselves."""
    rows = []
    for _, r in timing.iterrows():
        samples = r.get("samples_s")
        per_call = r.get("tokens_per_call") or (r["tokens_per_s"] * r["median_s"])
        for s in samples if isinstance(samples, list) and samples else [r["median_s"]]:
            rows.append(
                {"series": r["series"], "mode": r["mode"], "seq_len": r["seq_len"], "tps": per_call / s}
            )
    return pd.DataFrame(rows)


def _plot_modes(
    data: pd.DataFrame, y: str, ylabel: str, path: Path, lens: list[int], errorbar=None, grey=None
) -> None:
    """One panel per mode; ``grey``: points (mode, seq_len, y) to grey out as too noisy to rank."""
    modes = [m for m in TIMING_MODES if m in set(data["mode"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 3.8), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        sns.lineplot(
            data=data[data["mode"] == mode], x="seq_len", y=y, hue="series", style="series", markers=True,
            dashes=False, estimator="median", errorbar=errorbar, ax=ax,
        )  # fmt: skip
        if grey is not None and len(points := grey[grey["mode"] == mode]):
            ax.scatter(
                points["seq_len"], points[y], s=170, facecolors="none", edgecolors="gray", linewidths=2.5,
                alpha=0.8, zorder=5, label="too noisy to rank",
            )  # fmt: skip
        length_axis(ax, lens)
        log_y(ax)
        ax.set_title(mode)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.legend_.remove() if ax.legend_ else None
    legend = {}  # every panel's entries, once each (the grey marker may appear in any panel)
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(legend.values(), legend.keys(), title="model", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save(fig, path, bbox_inches="tight")


def _plot_state(data: pd.DataFrame, path: Path, lens: list[int]) -> None:
    unit, scale = byte_unit(data["state_bytes"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(
        data=data.assign(state=data["state_bytes"] / scale), x="seq_len", y="state", hue="series",
        style="series", markers=True, dashes=False, errorbar=None, ax=ax,
    )  # fmt: skip
    length_axis(ax, lens)
    log_y(ax)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(f"inference state ({unit} per batch)")
    ax.legend(title="model", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save(fig, path, bbox_inches="tight")


@register_section("timing")
def timing_section(rows: list[TimingRow], run_dir: Path) -> list[str]:
    """Markdown lines for the timing cells that finished ok; writes the plots into ``run_dir``."""
    timing = pd.DataFrame([r.model_dump() for r in rows])
    timing = timing.assign(series=_series(timing))
    lens = sorted(int(t) for t in timing["seq_len"].unique())
    first = timing.iloc[0]
    out = [
        WHAT_IS_TIMED,
        "",
        f"Model shape: d_model {first['d_model']}, {first['n_layers']} layers, vocabulary "
        f"{first['vocab_size']}; batch size {', '.join(map(str, sorted(set(timing['batch_size']))))}; "
        f"{', '.join(sorted(set(timing['dtype'])))}; each cell's median is over "
        f"{_rounds_text(timing)}.",
        "",
        "## Models",
        "",
        _dispatch_text(timing),
        "",
        models_table(timing),
        "",
    ]
    for mode, title in MODE_TITLES.items():
        part = timing[timing["mode"] == mode]
        if len(part):
            part = part.assign(cell=ranked_cells(part))
            out += [f"## {title}", "", RANKING, "", _table(part, "cell", str), ""]
    unit, scale = byte_unit(timing["peak_mem_bytes"])
    out += [f"## {_memory_title(timing)} ({unit})", ""]
    for mode in MODE_TITLES:
        part = timing[timing["mode"] == mode]
        if len(part):
            out += [f"**{mode}**", "", _table(part, "peak_mem_bytes", lambda v: bytes_text(v, scale)), ""]
    if "prompt_peak_mem_bytes" in timing and timing["prompt_peak_mem_bytes"].notna().any():
        part = timing[timing["mode"] == "decode"]
        prompt = _table(part, "prompt_peak_mem_bytes", lambda v: bytes_text(v, scale))
        out += ["**decode: the prompt's own peak**", "", prompt, ""]
    out += gross_memory(timing)
    state = timing.drop_duplicates(["label", "seq_len", "batch_size", "dtype"])
    s_unit, s_scale = byte_unit(state["state_bytes"])
    out += [
        f"## Inference state size ({s_unit})",
        "",
        "KV cache for attention, recurrent state for the others, after T tokens.",
        "",
        _table(state, "state_bytes", lambda v: bytes_text(v, s_scale)),
        "",
    ]
    flagged = timing[timing.apply(_flags, axis=1) != ""]
    if len(flagged):
        header = "| model | mode | T | drift | spread (IQR / median) | warm-up calls |"
        out += ["## Flagged cells", "", header, "|---|---|---|---|---|---|"]
        for _, r in flagged.iterrows():
            d = r.get("drift")
            change = "–" if pd.isna(d) else f"{100 * d:+.0f}%"
            out.append(
                f"| {r['series']} | {r['mode']} | {r['seq_len']} | {change} "
                f"| {100 * r['iqr_s'] / r['median_s']:.0f}% | {r.get('warmup_calls', '–')}"
                f"{'' if r.get('warmup_settled') is not False else ' (cap, not settled)'} |"
            )
        out.append("")

    samples = _per_sample(timing)
    memory = timing.assign(mib=timing["peak_mem_bytes"] / 2**20)
    noisy_points = timing[timing.apply(noisy, axis=1)].rename(columns={"tokens_per_s": "tps"})
    _plot_modes(
        samples, "tps", "tokens/s (median, IQR of repeats)", run_dir / "throughput.png", lens, ("pi", 50),
        grey=noisy_points,
    )  # fmt: skip
    _plot_modes(memory, "mib", "peak tensor memory (MiB)", run_dir / "memory.png", lens)
    _plot_state(state, run_dir / "state_size.png", lens)
    out += ["## Plots", ""]
    plots = (
        ("throughput.png", "throughput"),
        ("memory.png", "peak memory"),
        ("state_size.png", "state size"),
    )
    for filename, title in plots:
        out += [f"![{title}]({filename})", ""]
    return out
