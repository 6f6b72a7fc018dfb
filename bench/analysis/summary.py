"""One page that answers the project's question across runs: for each question (throughput at each length,
memory, state size, recall beyond the training length, state tracking, language modelling, length
generalisation), the models ranked with the strength of the evidence between neighbours, a link to the
report section that supports it, and what no run measured.

Evidence: every figure comes with a 95% interval (bootstrap over timing samples for speed; Student's t over
seeds, or Wilson over examples, for accuracy; t over documents for bits per byte); two neighbours in a
ranking are "significant" when their intervals do not overlap and "within noise" when they do. A figure a
run cannot give (one sample, one document) is shown without an interval and never called significant.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.analysis.plotting import si
from bench.analysis.quality import calibration, early_stopped_choices, edge_choices, untold_choices
from bench.analysis.report import section_of
from bench.analysis.sections.lm import summarize_lm
from bench.analysis.sections.timing import noisy
from bench.analysis.selection import by_length, summarize
from bench.errors import BenchError
from bench.results import AccuracyRow, TimingRow, load_rows, read_manifest
from bench.spec.config import PRESETS, TrainSettings, default_spec, preset_spec

BOOTSTRAP = 2000


@dataclass
class Figure:
    """One model's answer to one question: its value and 95% interval, and where it comes from."""

    label: str
    value: float
    low: float | None
    high: float | None
    source: str  # the report it comes from, relative to the summary page


@dataclass
class Question:
    title: str
    what: str  # what the figure is, with its unit
    higher_is_better: bool
    figures: list[Figure]
    link: str  # the report (and section) that supports it
    caveat: str = ""  # what limits the ranking: a smoke test, a calibration that failed or was never set

    def ranked(self) -> list[Figure]:
        return sorted(self.figures, key=lambda f: -f.value if self.higher_is_better else f.value)


def median_interval(samples: list[float], seed: int = 0) -> tuple[float, float] | None:
    """A 95% percentile-bootstrap interval of the median of ``samples`` (None for fewer than 3)."""
    if len(samples) < 3:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(samples, k=len(samples))) for _ in range(BOOTSTRAP))
    return medians[int(0.025 * BOOTSTRAP)], medians[int(0.975 * BOOTSTRAP) - 1]


def evidence(a: Figure, b: Figure) -> str:
    """Whether two neighbours of a ranking differ beyond their intervals."""
    if None in (a.low, a.high, b.low, b.high):
        return "no interval"
    if a.low == a.high == a.value and b.low == b.high == b.value:  # counted exactly
        return "exact" if a.value != b.value else "equal"
    apart = a.high < b.low or b.high < a.low
    return "significant" if apart else "within noise"


def _throughput(name: str, rows: list[TimingRow]) -> list[Question]:
    out = []
    for mode in ("train", "prefill", "decode"):
        for length in sorted({r.seq_len for r in rows if r.mode == mode}):
            cells = [r for r in rows if r.mode == mode and r.seq_len == length and r.ok and r.samples_s]
            # a cell its report greys as too noisy (drift, a wide spread, warm-up unsettled) is not ranked
            unranked = sorted(r.label for r in cells if noisy(r.model_dump()))
            figures = []
            for r in cells:
                if r.label in unranked:
                    continue
                work = r.tokens_per_call or 0
                rates = [work / s for s in r.samples_s if s > 0]
                bounds = median_interval(rates)
                figures.append(Figure(r.label, statistics.median(rates), *(bounds or (None, None)), name))
            if figures:
                out.append(
                    Question(
                        f"{mode} throughput at T = {length}",
                        "tokens/s (median over repeats and rounds; 95% bootstrap interval of the median)",
                        True,
                        figures,
                        f"{name}/REPORT.md",
                        "too noisy to rank: " + ", ".join(unranked) if unranked else "",
                    )
                )
    return out


def _memory(name: str, rows: list[TimingRow]) -> list[Question]:
    out = []
    longest = max((r.seq_len for r in rows), default=None)
    for mode in ("train", "prefill", "decode"):
        cells = [r for r in rows if r.mode == mode and r.seq_len == longest and r.ok]
        figures = [
            Figure(r.label, r.peak_mem_bytes / 2**20, None, None, name)
            for r in cells
            if r.peak_mem_bytes is not None
        ]
        # what the figure counts is the record's own words (tensor bytes at the allocator, or a resident size)
        sources = sorted({str(getattr(r, "peak_mem_source", None) or "source not recorded") for r in cells})
        if figures:
            out.append(
                Question(
                    f"peak memory, {mode} at T = {longest}",
                    f"MiB at the peak of one call ({'; '.join(sources)}); one figure per cell: no interval",
                    False,
                    figures,
                    f"{name}/REPORT.md",
                )
            )
    cells = [r for r in rows if r.seq_len == longest and r.ok and r.state_bytes is not None]
    states = {r.label: r.state_bytes for r in cells}
    if states:
        figures = [Figure(label, b / 2**20, b / 2**20, b / 2**20, name) for label, b in states.items()]
        out.append(
            Question(
                f"inference state at T = {longest}",
                "MiB per sequence (counted exactly from the state's tensors)",
                False,
                figures,
                f"{name}/REPORT.md",
            )
        )
    return out


def caveat(rows: list[AccuracyRow], metric: str, higher_is_better: bool) -> str:
    """Why a training run's ranking may not stand: a smoke test never ranks; a calibration model that
    failed (or none named) means the budget may be too short for any model to converge; rates chosen at
    an edge of the grid, or among runs the early stop ended at different steps, are not bracketed."""
    if any(r.smoke_test for r in rows):
        return "smoke test: not a ranking"
    judged = calibration(rows, metric, higher_is_better)
    out = []
    if judged is None:
        out.append("no calibration model")
    elif judged[0] != "PASS":
        out.append("calibration FAIL: ranks learning speed")
    edges = edge_choices(rows)
    if edges:
        out.append(f"rate at a grid edge: {len(edges)} model(s)")
    stopped = early_stopped_choices(rows)
    if stopped:
        out.append(f"rate chosen by speed to the early stop: {len(stopped)} model(s)")
    untold = untold_choices(rows)
    if untold:
        out.append(f"past L, a rate choice validation at L does not make: {len(untold)} model(s)")
    return "; ".join(out)


def _accuracy(name: str, rows: list[AccuracyRow]) -> list[Question]:
    """Recall and state tracking: past the training length at the longest evaluation, and at L."""
    out = []
    long = by_length(rows)
    if not len(long):
        return out
    summary = summarize(long)
    kind = "state tracking" if section_of(rows[0]) == "state" else "recall"
    for task in dict.fromkeys(summary["task_label"]):
        part = summary[summary["task_label"] == task]
        longest = part["eval_len"].max()
        train_len = int(part["train_len"].iloc[0])
        limits = caveat([r for r in rows if r.task_label == task], "accuracy", True)  # this task's runs
        for length, column, what, where in (
            (train_len, "accuracy", f"accuracy % at the training length (T = {train_len})",
             f"at L = {train_len}"),
            (longest, "beyond_train", f"accuracy % past the training length at T = {longest}",
             f"past L at T = {longest}"),
        ):  # fmt: skip
            at = part[(part["eval_len"] == length) & part[column].notna()]
            figures = [
                Figure(r["label"], 100 * r[column], _pct(r, f"{column}_low"), _pct(r, f"{column}_high"), name)
                for _, r in at.iterrows()
            ]
            if figures:
                title = f"{kind}: {task}, {where}"
                out.append(Question(title, what + " (mean over seeds, 95% interval)", True, figures,
                                    f"{name}/REPORT.md", limits))  # fmt: skip
    return out


def _pct(row, key: str) -> float | None:
    value = row.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else 100 * value


def _lm(name: str, rows: list[AccuracyRow]) -> list[Question]:
    out = []
    summary = summarize_lm(rows)
    if not len(summary):
        return out
    ok = summary[summary["status"] == "ok"]
    limits = caveat(rows, "bpb", False)
    for task in dict.fromkeys(ok["task_label"]):
        part = ok[ok["task_label"] == task]
        train_len = int(part["train_len"].iloc[0])
        at_l = part[part["eval_len"] == train_len]
        figures = []
        for _, r in at_l.iterrows():
            interval = r.get("bpb_interval")
            low, high = interval if isinstance(interval, (list, tuple)) else (None, None)
            figures.append(Figure(r["label"], r["bpb"], low, high, name))
        if figures:
            what = f"bits per byte at T = {train_len} (95% t interval over documents)"
            title = f"language modelling: {task}"
            out.append(Question(title, what, False, figures, f"{name}/REPORT.md", limits))
        longest = part[part["eval_len"] == part["eval_len"].max()]
        gains = []
        for _, r in longest.iterrows():
            interval = r.get("context_gain_interval")
            if r.get("context_gain") is not None and isinstance(interval, (list, tuple)):
                gains.append(Figure(r["label"], r["context_gain"], interval[0], interval[1], name))
        if gains:
            out.append(
                Question(
                    f"length generalisation: {task}",
                    f"bits per byte the context beyond L = {train_len} is worth past L (> 0: used; 95% t "
                    "interval over documents)",
                    True,
                    gains,
                    f"{name}/REPORT.md",
                    limits,
                )
            )
    return out


def questions(runs: dict[Path, list], root: Path) -> list[Question]:
    """Every question the runs (run -> its stored rows) answer, in the order of the list above."""
    found: list[Question] = []
    for run, rows in runs.items():
        name = str(run.relative_to(root)) if run.is_relative_to(root) else str(run)
        timing = [r for r in rows if isinstance(r, TimingRow)]
        accuracy = [r for r in rows if isinstance(r, AccuracyRow)]
        found += _throughput(name, timing) + _memory(name, timing)
        for section in ("recall", "state"):
            part = [r for r in accuracy if section_of(r) == section]
            if part:
                found += _accuracy(name, part)
        lm = [r for r in accuracy if section_of(r) == "lm"]
        if lm:
            found += _lm(name, lm)
    return found


def number(x: float) -> str:
    return si(x) if abs(x) >= 1000 else f"{x:.3g}"


def ranking_lines(q: Question) -> list[str]:
    ranked = q.ranked()
    better = "higher" if q.higher_is_better else "lower"
    note = f" **Caveat: {q.caveat}.**" if q.caveat else ""
    lines = [f"### {q.title} ({q.link.split('/')[0]})", "",
             f"{q.what}; {better} is better. Source: [{q.link}]({q.link}).{note}", "",
             "| rank | model | value | vs the next |", "|---:|---|---:|---|"]  # fmt: skip
    for i, f in enumerate(ranked):
        bounds = f.low is not None and f.high is not None and f.low != f.high
        interval = f" [{number(f.low)}, {number(f.high)}]" if bounds else ""
        nxt = evidence(f, ranked[i + 1]) if i + 1 < len(ranked) else ""
        lines.append(f"| {i + 1} | {f.label} | {number(f.value)}{interval} | {nxt} |")
    return lines + [""]


TITANS = "titans-"  # how the glance table finds the Titans models among the labels


def glance_lines(found: list[Question]) -> list[str]:
    """One row per question: the best model, the best Titans model and its rank, and whether the best
    model's lead over it is beyond noise."""
    lines = [
        "| question | run | best | best Titans (rank) | lead beyond noise? | caveat |",
        "|---|---|---|---|---|---|",
    ]
    for q in found:
        ranked = q.ranked()
        titans = next(((i, f) for i, f in enumerate(ranked) if f.label.startswith(TITANS)), None)
        if titans is None:
            continue
        i, f = titans
        if i > 0:
            lead = evidence(ranked[0], f)
        elif len(ranked) > 1:
            lead = f"it is the best; over {ranked[1].label}: {evidence(f, ranked[1])}"
        else:
            lead = "it is the only one"
        lines.append(
            f"| {q.title} | [{q.link.split('/')[0]}]({q.link}) | {ranked[0].label} "
            f"{number(ranked[0].value)} | {f.label} {number(f.value)} ({i + 1} of {len(ranked)}) | {lead} | "
            f"{q.caveat or '–'} |"
        )
    return lines


NOT_MEASURED = (
    "- **GPU**: no GPU was lent to the runs summarised here; every figure is from a CPU, where the "
    "projects' own pure-PyTorch kernels ran (fla and mamba-ssm need CUDA). Throughput on a GPU, where "
    "launch counts and fused kernels decide, is not measured."
)


def today_preset(name: str | None) -> dict | None:
    """The sweep a preset of this name runs today (as stored in a run's spec.json), or None."""
    try:
        if name in PRESETS:
            return json.loads(preset_spec(name).model_dump_json())
        default = default_spec("cpu")
        if name == default.name:
            return json.loads(default.model_dump_json())
    except BenchError:
        return None
    return None


def inert_settings(changed: list[str], rows: list) -> dict[str, str]:
    """Of the changed settings (dotted paths), those of the training loop that could not act in any of a
    run's accuracy cells because the setting they need was unset in every one (TrainSettings.ACTS_ONLY_WITH):
    path -> the path of the one it needs. A run without accuracy cells trained nothing they could change."""
    trained = [row.train for row in rows if isinstance(row, AccuracyRow)]
    out = {}
    for path in changed:
        table, _, name = path.rpartition(".")
        needs = TrainSettings.ACTS_ONLY_WITH.get(name) if table == "accuracy" else None
        if needs is not None and all(getattr(train, needs, None) is None for train in trained):
            out[path] = f"{table}.{needs}"
    return out


def changed_settings(ran: dict, today: dict, prefix: str = "") -> list[str]:
    """The settings that differ between a run's stored sweep and today's, as dotted paths into the tables
    (``accuracy.stop_rule``), so that a reader can tell whether the change touches what was measured."""
    out = []
    for key in sorted(set(ran) | set(today)):
        if not prefix and key == "out":
            continue
        a, b = ran.get(key), today.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def runs_lines(manifests: dict[Path, dict], rows: dict[Path, list]) -> list[str]:
    """Where each run comes from: its commit, whether the tree was clean, when it ran, and whether the
    preset of its name still runs what it ran (a run of an older definition answers an older question).
    rows: each run's stored rows."""
    lines = [
        "| run | commit | tree | ran | its sweep against today's preset of that name |",
        "|---|---|---|---|---|",
    ]
    for run, manifest in manifests.items():
        try:
            ran = json.loads((run / "spec.json").read_text())
        except (OSError, ValueError):
            ran = None
        today = today_preset(manifest.get("name"))
        if today is None or ran is None:
            versus = "no preset of that name" if today is None else "no spec.json"
        else:
            changed = changed_settings(ran, today)
            inert = inert_settings(changed, rows[run])
            versus = (
                "the same" if not changed else "**changed since**: " + ", ".join(f"`{k}`" for k in changed)
            )
            if inert:
                versus += " (" + "; ".join(f"`{k}` acts only with `{needs}`, which no cell of this run had"
                                         for k, needs in inert.items()) + ")"  # fmt: skip
        commit = str(manifest.get("git_commit") or "?")[:10]
        tree = "**dirty**" if manifest.get("git_dirty") else "clean"
        lines.append(
            f"| [{run.name}]({run.name}/REPORT.md) | {commit} | {tree} | "
            f"{str(manifest.get('created_at') or '?')[:10]} | {versus} |"
        )
    return lines


def summary_markdown(runs: list[Path], root: Path) -> str:
    rows = {run: load_rows(run) for run in runs}
    found = questions(rows, root)
    manifests = {run: read_manifest(run) for run in runs}
    dirty = [run.name for run, manifest in manifests.items() if manifest.get("git_dirty")]
    out = [
        "# What the committed reports answer",
        "",
        "Is Titans better than Mamba, DeltaNet and a Transformer: how fast, how much memory, how accurate at "
        "long context? Each question below ranks the models on one figure of one run, from best to worst, "
        "with its 95% interval; `vs the next` says whether a model's interval overlaps the next one's "
        "(`within noise`: the run cannot order them) or not (`significant`). Generated by "
        "`python -m bench summary` from: " + ", ".join(f"[{r.name}]({r.name}/REPORT.md)" for r in runs) + ".",
        "",
    ]
    if dirty:
        out += [f"**Generated from runs made on a dirty tree: {', '.join(dirty)}.**", ""]
    out += ["## At a glance", "", *glance_lines(found), "", "## Not measured", "", NOT_MEASURED, ""]
    out += ["## The runs", "", *runs_lines(manifests, rows), ""]
    out += ["## Every question", ""]
    for q in found:
        out += ranking_lines(q)
    return "\n".join(out)
