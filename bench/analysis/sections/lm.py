"""The language-modelling part of the accuracy section (tasks scored by loss, bench/tasks/lm.py):

- bits per byte at each evaluation length, the positions past the training length L with the whole
  document as context and with the context cut to L (the same targets, so their difference is what the
  context beyond L is worth, with a 95% t interval over the documents), and the gain from the first
  positions of a document to its last bucket;
- bits per byte by position bucket at the longest evaluation length;
- a plot of bits per byte against position (log x), one line per model, dashed past L with the context
  cut to L; the hybrids' window or segment in the table and the legend;
- how many documents were scored at each length, which, and a warning when few are;
- the training runs (the learning rate chosen as for every scorer: bench/analysis/selection.py), their
  throughput and curves.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.analysis.plotting import model_styles, plt, save
from bench.analysis.quality import quality_section
from bench.analysis.sections import register_section
from bench.analysis.selection import choose_lrs, context_of, is_chosen, plot_curves, training_table
from bench.analysis.stats import t_interval
from bench.analysis.text import bpb_text, fmt, lr_text, signed
from bench.errors import BenchError
from bench.results import AccuracyRow, EvalEntry
from bench.tasks import make_task

PLOT = "lm_bpb_by_position.png"
CURVES = "lm_training_curves.png"
FIRST_CONTEXT = 16  # positions <= 16 are the first bucket of the table (bench/scoring/loss.py)
FEW_DOCUMENTS = 10  # fewer documents than this at a length: the report says the figure is thin
LN2 = math.log(2)


def summarize_lm(rows: list[AccuracyRow]) -> pd.DataFrame:
    """One row per (model, task, evaluation length) at the chosen learning rate: bits per byte pooled over
    the seeds, and per document (each document's figures averaged over the seeds: the held-out documents
    are the same in every cell) for the intervals."""
    choices = choose_lrs(rows)
    groups: dict[tuple[str, str], list[AccuracyRow]] = {}
    for row in rows:
        if is_chosen(row, choices):
            groups.setdefault((row.label, row.task_label), []).append(row)
    out = []
    for (label, task), group in groups.items():
        first = group[0]
        ok = [r for r in group if r.ok]
        lengths = sorted({e.eval_len for r in group for e in r.accuracy_by_len}) or sorted(first.eval_lens)
        speeds = [r.train_tokens_per_s for r in group if r.train_tokens_per_s is not None]
        for length in lengths:
            entries = [e for r in ok for e in r.accuracy_by_len if e.eval_len == length and e.bpb is not None]
            row = {
                "label": label,
                "task_label": task,
                "eval_len": length,
                "train_len": first.train_len,
                "context": context_of(first),
                "lr": first.lr,
                "seeds": len(group),
                "ok_seeds": len(entries),
                "status": "ok" if entries else (first.status if first.status != "ok" else "non-finite"),
                "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
            }
            if entries:
                row.update(_pool(entries, first.train_len, length))
            out.append(row)
    return pd.DataFrame(out)


def _pool(entries: list[EvalEntry], train_len: int, length: int) -> dict:
    """Bits per byte over the seeds' entries of one length, by bucket, and per-document intervals."""
    bounds = [b.max_distance for b in entries[0].by_position]
    sums = {
        name: [sum(getattr(e.by_position[i], name) for e in entries) for i in range(len(bounds))]
        for name in ("nll", "nll_truncated", "bytes")
    }

    def bpb(name: str, keep) -> float | None:
        lows = [0, *bounds[:-1]]
        index = [i for i, (low, high) in enumerate(zip(lows, bounds, strict=True)) if keep(low, high)]
        total = sum(sums["bytes"][i] for i in index)
        return sum(sums[name][i] for i in index) / LN2 / total if total else None

    out = {
        "n_examples": entries[0].n_examples,
        "bounds": bounds,
        "bucket_bpb": [s / LN2 / b if b else None for s, b in zip(sums["nll"], sums["bytes"], strict=True)],
        "bucket_bpb_truncated": [
            s / LN2 / b if b else None for s, b in zip(sums["nll_truncated"], sums["bytes"], strict=True)
        ],
        "bpb": bpb("nll", lambda low, high: True),
        "first": bpb("nll", lambda low, high: high <= FIRST_CONTEXT),
        "last": bpb("nll", lambda low, high: high == bounds[-1]),
        "beyond": _mean([e.bpb_beyond_train for e in entries]),
        "beyond_truncated": _mean([e.bpb_beyond_train_truncated for e in entries]),
    }
    # Per document: its bits per byte over every position, and the worth of the context beyond L
    documents = [e.by_document for e in entries]
    if all(d is not None and d.nll for d in documents):
        n = len(documents[0].nll)
        overall, gains = [], []
        for j in range(n):  # each document: its sums over the seeds
            nll = sum(sum(d.nll[j]) for d in documents)
            size = sum(sum(d.bytes[j]) for d in documents)
            overall.append(nll / LN2 / size)
            beyond = {k: sum((getattr(d, k) or [0] * n)[j] for d in documents) for k in BEYOND}
            if beyond["bytes_beyond"]:
                gains.append(
                    (beyond["nll_truncated_beyond"] - beyond["nll_beyond"]) / LN2 / beyond["bytes_beyond"]
                )
        out["bpb_interval"] = _t(overall)
        out["bpb_documents"] = overall  # the same documents in every model's cells: paired comparisons
        out["context_gain"] = sum(gains) / len(gains) if gains else None
        out["context_gain_interval"] = _t(gains)
    # Over seeds: each seed's own figure past L (its documents pooled), for an interval over training runs
    seed_gains = [e.context_gain_beyond_train for e in entries if e.context_gain_beyond_train is not None]
    out["context_gain_seeds"] = seed_gains
    out["context_gain_seed_interval"] = _t(seed_gains)
    out["diagnostics"] = _mean_diagnostics(entries)
    return out


def _mean_diagnostics(entries: list[EvalEntry]) -> dict | None:
    """The seeds' diagnostics at one length (bench/scoring/base.py), averaged: trace series by position
    bucket, and with test-time writes off the bits per byte overall and past L."""
    found = [e.get("diagnostics") for e in entries if isinstance(e.get("diagnostics"), dict)]
    if not found:
        return None
    traces = [d["trace"] for d in found if isinstance(d.get("trace"), dict)]
    out: dict = {}
    if traces:
        out["bounds"] = traces[0]["bounds"]
        for name in dict.fromkeys(k for t in traces for k in t if k != "bounds"):
            columns = [t[name] for t in traces if name in t and len(t[name]) == len(out["bounds"])]
            out[name] = [_mean(list(values)) for values in zip(*columns, strict=True)] if columns else None
    writes = [d["writes_off"] for d in found if isinstance(d.get("writes_off"), dict)]
    if writes:
        out["writes_off_bpb"] = _mean([w.get("bpb") for w in writes])
        out["writes_off_beyond"] = _mean([w.get("bpb_beyond_train") for w in writes])
    return out


BEYOND = ("nll_beyond", "nll_truncated_beyond", "bytes_beyond")


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _t(values: list[float]) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    _, low, high = t_interval(values)
    return low, high


def _row_text(row, value: str, interval: str | None = None) -> str:
    if row["status"] != "ok":
        return {"diverged": "div."}.get(row["status"], row["status"])
    text = bpb_text(row.get(value), row.get(interval) if interval else None)
    if row["ok_seeds"] < row["seeds"]:
        text += f" ({row['seeds'] - row['ok_seeds']} of {row['seeds']} seeds failed)"
    return text


def _bucket_name(low: int, high: int) -> str:
    return f"{low + 1}–{high}" if high > low + 1 else str(high)


def length_table(summary: pd.DataFrame, task: str) -> list[str]:
    part = summary[summary["task_label"] == task]
    train_len = int(part["train_len"].iloc[0])
    lengths = sorted(part["eval_len"].unique())
    longest = lengths[-1]
    head = [f"T={n}" for n in lengths] + [
        f"positions > {train_len} at T={longest}: whole document",
        f"context cut to {train_len}",
        f"context beyond {train_len} worth (interval over documents)",
        "(over seeds)",
        "past L, the context beyond it is",
        f"gain from context (≤{FIRST_CONTEXT} → last bucket)",
        "train tokens/s",
        "context",
        "lr",
    ]
    out = ["| model | " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 4) + "---|---:|---|---|"]
    for label in dict.fromkeys(part["label"]):
        rows = part[part["label"] == label].set_index("eval_len")
        texts = [_row_text(rows.loc[n], "bpb", "bpb_interval") if n in rows.index else "–" for n in lengths]
        end = rows.loc[longest] if longest in rows.index else None
        ok = end is not None and end["status"] == "ok"
        texts += [
            _row_text(end, "beyond") if ok else "–",
            _row_text(end, "beyond_truncated") if ok else "–",
            signed(end.get("context_gain"), end.get("context_gain_interval")) if ok else "–",
            _seed_interval(end) if ok else "–",
            case_of(end)[0] if ok else "–",
            signed(end["first"] - end["last"])
            if ok and end["first"] is not None and end["last"] is not None
            else "–",
            fmt(rows.iloc[0]["tokens_per_s"], ",.0f"),
            rows.iloc[0]["context"],
            lr_text(rows.iloc[0]["lr"]),
        ]
        out.append(f"| {label} | " + " | ".join(texts) + " |")
    return out


def _seed_interval(row) -> str:
    values = row.get("context_gain_seeds")
    if not isinstance(values, list) or len(values) < 2:
        return "– (one seed)"
    interval = row.get("context_gain_seed_interval")
    return f"{signed(sum(values) / len(values), interval)} ({len(values)} seeds)"


def case_of(row) -> tuple[str, str]:
    """Which case a model is in past L, from what the context beyond L is worth on the same targets (95%
    interval over documents): ("used" / "ignored" / "harmful", and the phrase for a sentence)."""
    gain, interval = row.get("context_gain"), row.get("context_gain_interval")
    if gain is None or not interval or (isinstance(interval, float) and math.isnan(interval)):
        return "–", "cannot be told (no interval)"
    if interval[0] > 0 and gain >= NEGLIGIBLE_BPB:
        return "used", "uses the context beyond L"
    if interval[1] < 0 and -gain >= NEGLIGIBLE_BPB:
        return "harmful", "is hurt by the context beyond L"
    return "ignored", "ignores the context beyond L (it changes nothing the documents can show)"


def _at(bounds: list[int], values: list, position: int):
    """The value of the bucket holding ``position``."""
    for bound, value in zip(bounds, values, strict=True):
        if position <= bound:
            return value
    return values[-1] if values else None


def mechanism(row, train_len: int) -> str:
    """What the diagnostics say about a model past L: how its state and gates move from L to the end, and
    what test-time writes are worth, from the recorded traces (bench/scoring/base.py)."""
    d = row.get("diagnostics")
    if not isinstance(d, dict) or not d.get("bounds"):
        return ""
    bounds, end = d["bounds"], d["bounds"][-1]
    parts = []

    def change(name: str, what: str, spec: str = ".3g") -> None:
        values = d.get(name)
        if isinstance(values, list) and values and values[-1] is not None:
            at_l = _at(bounds, values, train_len)
            if at_l is not None:
                parts.append(f"{what} {format(at_l, spec)} at L → {format(values[-1], spec)} at {end}")

    change("state_norm_ratio", "state norm / initial")
    if "state_norm_ratio" not in d:
        change("state_norm", "state norm")
    for name in ("m0_left", "alpha"):
        for layer in (k for k in d if k.startswith(name + ".l")):
            change(layer, f"{name} ({layer.rsplit('.', 1)[1]})")
    if "decay" in d:
        change("decay", "mean decay")
    writes = d.get("writes_off_beyond")
    if writes is not None and row.get("beyond") is not None:
        parts.append(f"test-time writes off: past L {signed(writes - row['beyond'])} bits per byte")
    return "; ".join(parts)


def cases_text(summary: pd.DataFrame, task: str) -> list[str]:
    """One line per model: its case past L and what its diagnostics show."""
    part = summary[summary["task_label"] == task]
    longest = part["eval_len"].max()
    train_len = int(part["train_len"].iloc[0])
    out = []
    for _, row in part[(part["eval_len"] == longest) & (part["status"] == "ok")].iterrows():
        _, phrase = case_of(row)
        why = mechanism(row, train_len)
        out.append(f"- **{row['label']}** {phrase}" + (f" ({why})." if why else "."))
    return out


DIAGNOSTICS = "lm_diagnostics.png"
PANELS = (
    ("state_norm_ratio", "state norm / initial state's"),
    ("state_norm", "state norm"),
    ("m0_left", "share of the initial memory left"),
    ("alpha", "forget gate alpha"),
    ("theta", "inner learning rate theta"),
    ("decay", "decay per token"),
)


def plot_diagnostics(summary: pd.DataFrame, path: Path) -> bool:
    """The diagnostics against position at the longest length, one panel per quantity any model recorded
    (layers averaged), the training length marked. False when no model recorded any."""
    ok = summary[summary["status"] == "ok"]
    longest = ok.groupby("task_label")["eval_len"].transform("max") if len(ok) else None
    rows = ok[ok["eval_len"] == longest] if len(ok) else ok
    series = []
    for _, row in rows.iterrows():
        d = row.get("diagnostics")
        if isinstance(d, dict) and d.get("bounds"):
            series.append((row, d))
    panels = [(n, t) for n, t in PANELS if any(_layer_mean(d, n) for _, d in series)]
    if not panels:
        return False
    styles = model_styles([r["label"] for r, _ in series])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, title) in zip(axes[0], panels, strict=True):
        for row, d in series:
            values = _layer_mean(d, name)
            if values:
                xs = [b for b, v in zip(d["bounds"], values, strict=True) if v is not None]
                ys = [v for v in values if v is not None]
                ax.plot(xs, ys, ms=3, lw=1.2, label=row["label"], **styles[row["label"]].kwargs())
        ax.axvline(int(series[0][0]["train_len"]), color="grey", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        if name == "state_norm":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("position (bucket's upper end); dashed: L")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title="model")
    fig.tight_layout()
    save(fig, path, bbox_inches="tight")
    return True


def _layer_mean(d: dict, name: str) -> list | None:
    """A quantity's series, averaged over the memory layers where it is recorded per layer ("alpha.l0")."""
    if isinstance(d.get(name), list):
        return d[name]
    layers = [d[k] for k in d if k.startswith(name + ".l") and isinstance(d[k], list)]
    if not layers:
        return None
    return [_mean(list(v)) for v in zip(*layers, strict=True)]


def bucket_table(summary: pd.DataFrame, task: str) -> list[str]:
    """Bits per byte by position bucket at the longest length (first bucket: positions <= 16); past the
    training length, "whole / cut": with the whole document before the target, and with the context cut
    to the training length."""
    part = summary[summary["task_label"] == task]
    longest = part["eval_len"].max()
    part = part[(part["eval_len"] == longest) & (part["status"] == "ok")]
    if not len(part):
        return []
    train_len = int(part["train_len"].iloc[0])
    bounds = part.iloc[0]["bounds"]
    groups = [[i for i, b in enumerate(bounds) if b <= FIRST_CONTEXT]]
    groups += [[i] for i, b in enumerate(bounds) if b > FIRST_CONTEXT]
    names = []
    for group in groups:
        low = 0 if group[0] == 0 else bounds[group[0] - 1]
        names.append(_bucket_name(low, bounds[group[-1]]) + (" (> L)" if low >= train_len else ""))
    out = [
        f"Bits per byte by position at T = {longest} (past L = {train_len}: whole document / context cut "
        "to L):",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for _, row in part.iterrows():
        texts = []
        for group in groups:
            low = 0 if group[0] == 0 else bounds[group[0] - 1]
            whole = _merge(row["bucket_bpb"], row, group)
            text = bpb_text(whole, digits=2)
            if low >= train_len:
                text += " / " + bpb_text(_merge(row["bucket_bpb_truncated"], row, group), digits=2)
            texts.append(text)
        out.append(f"| {row['label']} | " + " | ".join(texts) + " |")
    return out


def _merge(values: list, row, group: list[int]) -> float | None:
    """Bits per byte of merged buckets: weighted by their bytes (equal for bytes as tokens: the positions)."""
    bounds = row["bounds"]
    widths = [bounds[i] - (bounds[i - 1] if i else 0) for i in group]
    chosen = [(v, w) for v, w in zip((values[i] for i in group), widths, strict=True) if v is not None]
    return sum(v * w for v, w in chosen) / sum(w for _, w in chosen) if chosen else None


def documents_text(rows: list[AccuracyRow], summary: pd.DataFrame, task: str) -> list[str]:
    part = summary[(summary["task_label"] == task) & (summary["status"] == "ok")]
    if part.empty or "n_examples" not in part:  # no cell finished: nothing was scored
        counts = pd.Series(dtype=int)
    else:
        counts = part.groupby("eval_len")["n_examples"].max().dropna().astype(int)
    first = next(r for r in rows if r.task_label == task)
    args = first.task_args
    text = (
        f"Corpus `{args.get('corpus', 'python-stdlib')}` (fingerprint `{args.get('fingerprint', '?')}`), "
        + (f"tokenizer `{args['tokenizer']}`" if args.get("tokenizer") else "bytes as tokens")
        + "; held-out test documents scored at each length (those with at least T tokens, the first in "
        "name order up to the evaluation's sample count): "
        + (", ".join(f"T={n}: {c}" for n, c in counts.items()) or "none, no cell finished")
        + "."
    )
    out = [text]
    thin = [str(n) for n, c in counts.items() if c < FEW_DOCUMENTS]
    if thin:
        out.append(
            f"**Few documents**: fewer than {FEW_DOCUMENTS} documents are long enough at "
            f"T = {', '.join(thin)}; figures there rest on a handful of files and their intervals are wide."
        )
    try:
        task_obj = make_task(first.task, args)
        longest = int(counts.index.max())
        names = task_obj.document_names("test", longest, int(counts.loc[longest]))
        out.append(f"The documents at T={longest}: " + ", ".join(f"`{n}`" for n in names) + ".")
    except (BenchError, KeyError, ValueError, AttributeError):
        pass  # another machine's corpus: the counts stand
    return out


# A gain smaller than this (bits per byte) is reported as too small to matter even when the documents show
# its sign: a hundredth of a bit per byte is well under the differences between the models' training runs.
NEGLIGIBLE_BPB = 0.01


def measured(summary: pd.DataFrame, task: str) -> str:
    part = summary[summary["task_label"] == task]
    longest = part["eval_len"].max()
    end = part[(part["eval_len"] == longest) & (part["status"] == "ok")]
    train_len = int(part["train_len"].iloc[0])
    gains, hurts, small, unclear = [], [], [], []
    for _, row in end.iterrows():
        interval = row.get("context_gain_interval")
        if not interval or (isinstance(interval, float) and math.isnan(interval)):
            unclear.append(row["label"])
            continue
        text = f"{row['label']} ({signed(row['context_gain'], interval)})"
        if interval[0] <= 0 <= interval[1]:
            unclear.append(row["label"])
        elif abs(row["context_gain"]) < NEGLIGIBLE_BPB:
            small.append(text)
        else:
            (gains if interval[0] > 0 else hurts).append(text)
    out = f"At T = {longest}, on the targets past L = {train_len} (context cut to L minus whole document, "
    out += "bits per byte, 95% t interval over documents): "
    out += "lower with the whole document (the context beyond L helps): " + (", ".join(gains) or "none")
    out += "; higher (it hurts): " + (", ".join(hurts) or "none")
    if small:
        out += f"; a difference the documents show but under {NEGLIGIBLE_BPB} bits per byte: " + ", ".join(
            small
        )
    out += "; no difference the documents can show: " + (", ".join(unclear) or "none") + "."
    return out


def plot_by_position(summary: pd.DataFrame, path: Path) -> None:
    tasks = list(dict.fromkeys(summary["task_label"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.6), squeeze=False)
    styles = model_styles(list(summary["label"]))
    for ax, task in zip(axes[0], tasks, strict=True):
        part = summary[(summary["task_label"] == task) & (summary["status"] == "ok")]
        longest = part["eval_len"].max()
        part = part[part["eval_len"] == longest]
        train_len = int(part["train_len"].iloc[0]) if len(part) else 0
        for _, row in part.iterrows():
            x = row["bounds"]
            context = f" ({row['context']})" if row["context"] not in ("–", "full") else ""
            style = styles[row["label"]]
            ax.plot(
                x, row["bucket_bpb"], marker=style.marker, ms=3, lw=1.3, color=style.color,
                label=row["label"] + context,
            )  # fmt: skip
            beyond = [
                (b, v)
                for b, v, low in zip(x, row["bucket_bpb_truncated"], [0, *x[:-1]], strict=True)
                if low >= train_len
            ]
            start = [(b, v) for b, v in zip(x, row["bucket_bpb"], strict=True) if b == train_len]
            if beyond:
                bx, by = zip(*(start + beyond), strict=True)  # from the last bucket within L
                ax.plot(bx, by, "--", lw=1, color=style.color)
        ax.axvline(train_len, color="grey", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{task}, T = {longest}: dashed past L = {train_len}, context cut to L")
        ax.set_xlabel("position in the document (upper end of its doubling bucket)")
        ax.set_ylabel("bits per byte")
    axes[0][-1].legend(fontsize=7, title="model (attention context)", loc="best")
    fig.tight_layout()
    save(fig, path)


@register_section("lm")
def lm_section(rows: list[AccuracyRow], run_dir: Path) -> list[str]:
    """Markdown lines for the accuracy cells of language-modelling tasks; writes the plots."""
    summary = summarize_lm(rows)
    first = rows[0]
    seeds = sorted({r.seed for r in rows})
    out = [
        "## Language modelling: bits per byte by context position",
        "",
        "Each model is trained from scratch on windows of the training documents (random offsets in their "
        "concatenation, a boundary byte before each document), then scores held-out documents from their "
        "first token: the target at position p is predicted from the p - 1 tokens of the document before "
        "it (bench/tasks/lm.py). Bits per byte: the negative log-likelihood in bits over the bytes the "
        "targets stand for (one byte a token with bytes as tokens), from the logits in float32; lower is "
        "better (8 is a uniform guess over bytes). `T=n`: over every position of the documents' first n "
        "tokens, with a 95% t interval over the documents "
        + (f"(each document averaged over the {len(seeds)} seeds)" if len(seeds) > 1 else "(one seed)")
        + ". Past the training length L the same targets are also scored with the context cut to L "
        "(windows of L tokens every L/2, each scoring its second half): `context beyond L worth` is the cut "
        "context's bits per byte minus the whole document's, with a 95% t interval over documents, > 0 when "
        "the model uses what lies more than L back. `gain from context` compares a document's first "
        f"{FIRST_CONTEXT} positions with its last bucket; it also carries how the text changes along a "
        "document (imports and docstrings first), so it is not a pure measure of context use. `context`: "
        "what the attention can see (the hybrids' window or segment caps it). lr: chosen per model by the "
        "validation documents' loss at L (lowest mean over seeds).",
        "",
        f"Model shape: d_model {first.d_model}, {first.n_layers} layers, vocabulary "
        f"{first.vocab_size}; seeds: {', '.join(str(s) for s in seeds)}.",
        "",
    ]
    out += quality_section(rows, "bpb", higher_is_better=False)
    for task in dict.fromkeys(summary["task_label"]):
        out += [f"**{task}**", ""]
        out += documents_text(rows, summary, task) + [""]
        out += length_table(summary, task) + [""]
        out += bucket_table(summary, task) + [""]
        out += [f"Measured: {measured(summary, task)}", ""]
        out += ["Each model past L, and what its diagnostics show (state and gates at L and at the longest "
                "length, a few held-out documents, every block; test-time writes off: the same targets with "
                "the memory's step size set to 0):", "", *cases_text(summary, task), ""]  # fmt: skip
    out += ["### Language modelling: training", "", *training_table(rows, "bpb"), ""]
    if (summary["status"] == "ok").any():
        plot_by_position(summary, run_dir / PLOT)
        out += [f"![bits per byte by position]({PLOT})", ""]
        if plot_diagnostics(summary, run_dir / DIAGNOSTICS):
            out += [f"![diagnostics by position]({DIAGNOSTICS})", ""]
    plot_curves(rows, run_dir / CURVES, "validation bits per byte")
    out += [f"![language modelling: training curves]({CURVES})", ""]
    return out
