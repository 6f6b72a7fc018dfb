"""One page that answers the project's question across runs: for each question (throughput at each length,
memory, state size, recall beyond the training length, state tracking, language modelling, length
generalisation), the models ranked with the strength of the evidence between neighbours, a link to the
report section that supports it, and what no run measured.

Evidence: every figure comes with a 95% interval over the unit that repeats independently: for speed,
Student's t over the rounds (each a fresh process) where a cell has several, else a bootstrap over the
repeats of its one process (narrower than the truth: they share its state, and the question says so); for
accuracy, t over seeds (Wilson over examples for one seed); for the context beyond L, t over seeds. Two
neighbours are "significant" when their intervals do not overlap and "within noise" when they do; bits per
byte, scored by every model on the same documents, are compared pairwise (a t interval of the per-document
differences). A cell its report greys as too noisy is ranked, marked in its row and beside its verdicts;
equal values share a rank. A figure a run cannot give (one sample, one document) is shown without an
interval and never called significant.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.analysis.plotting import si
from bench.analysis.quality import (
    calibration,
    chosen_still_learning,
    early_stopped_choices,
    edge_choices,
    untold_choices,
)
from bench.analysis.report import carried_over, section_of
from bench.analysis.sections.lm import NEGLIGIBLE_BPB, summarize_lm
from bench.analysis.sections.recall import chance_levels
from bench.analysis.sections.timing import noisy
from bench.analysis.selection import SOLVED, by_length, seeds_split, summarize
from bench.analysis.stats import t_interval
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
    note: str = ""  # shown after the value: seeds solved, seeds that split, why it is not compared
    noisy: bool = False  # its report greys it as too noisy: ranked, never called significant
    paired: list[float] | None = None  # per-document values, the same documents for every model


@dataclass
class Question:
    title: str
    what: str  # what the figure is, with its unit
    higher_is_better: bool
    figures: list[Figure]
    link: str  # the report (and section) that supports it
    caveat: str = ""  # what limits the ranking: a smoke test, a calibration that failed or was never set

    negligible: float | None = None  # values closer to 0 than this are too small to matter (same unit)

    def ranked(self) -> list[Figure]:
        return sorted(self.figures, key=lambda f: -f.value if self.higher_is_better else f.value)

    def ranks(self) -> list[int]:
        """Competition ranks of ``ranked()``: equal values share the better rank (1, 1, 3)."""
        ranked, out = self.ranked(), []
        for i, f in enumerate(ranked):
            out.append(out[-1] if i and f.value == ranked[i - 1].value else i + 1)
        return out


def median_interval(samples: list[float], seed: int = 0) -> tuple[float, float] | None:
    """A 95% percentile-bootstrap interval of the median of ``samples`` (None for fewer than 3)."""
    if len(samples) < 3:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(samples, k=len(samples))) for _ in range(BOOTSTRAP))
    return medians[int(0.025 * BOOTSTRAP)], medians[int(0.975 * BOOTSTRAP) - 1]


def evidence(a: Figure, b: Figure, negligible: float | None = None) -> str:
    """Whether two neighbours of a ranking differ beyond noise: paired per-document differences where
    both have them, else whether their intervals overlap; where a cell its report greys as too noisy is
    one of them, the verdict says so."""
    verdict = _evidence(a, b, negligible)
    return f"{verdict} (a noisy cell)" if (a.noisy or b.noisy) and verdict != "equal" else verdict


def _evidence(a: Figure, b: Figure, negligible: float | None) -> str:
    if a.value == b.value:
        return "equal"
    if negligible is not None and abs(a.value) < negligible and abs(b.value) < negligible:
        return f"both under {negligible}: negligible"
    if a.paired and b.paired and len(a.paired) == len(b.paired) >= 2:
        _, low, high = t_interval([x - y for x, y in zip(a.paired, b.paired, strict=True)])
        return "significant (paired)" if low > 0 or high < 0 else "within noise (paired)"
    if None in (a.low, a.high, b.low, b.high):
        return "no interval"
    if a.low == a.high == a.value and b.low == b.high == b.value:  # counted exactly
        return "exact"
    apart = a.high < b.low or b.high < a.low
    return "significant" if apart else "within noise"


def _rate(r: TimingRow) -> float | None:
    """Tokens/s as the report gives it: the work of a call over the median call time of all its rounds."""
    if r.tokens_per_s:
        return r.tokens_per_s
    return r.tokens_per_call / r.median_s if r.tokens_per_call and r.median_s else None


def _rate_interval(r: TimingRow) -> tuple[tuple[float, float] | None, str]:
    """A 95% interval of a cell's tokens/s and what it is over: its rounds where it has several (each a
    fresh process, the unit that repeats), else the repeats of its one process."""
    work = r.tokens_per_call or 0
    rounds = [math.log(work / m) for m in r.round_medians_s if m > 0 and work > 0]
    if len(rounds) >= 2:  # on the log scale: a rate is positive and its noise multiplicative
        _, low, high = t_interval(rounds)
        return (math.exp(low), math.exp(high)), "rounds"
    bounds = median_interval([work / s for s in r.samples_s if s > 0])
    return bounds, "repeats"


def _throughput(name: str, rows: list[TimingRow]) -> list[Question]:
    out = []
    for mode in ("train", "prefill", "decode"):
        for length in sorted({r.seq_len for r in rows if r.mode == mode}):
            cells = [r for r in rows if r.mode == mode and r.seq_len == length and r.ok and _rate(r)]
            # a cell its report greys as too noisy (drift in any round, a wide spread, warm-up unsettled) is
            # ranked and marked, never called significant
            figures, units = [], set()
            for r in cells:
                bounds, unit = _rate_interval(r)
                units.add(unit if bounds else "none")
                bad = noisy(r.model_dump())
                figures.append(
                    Figure(r.label, _rate(r), *(bounds or (None, None)), name,
                           note="too noisy: drift, spread or warm-up" if bad else "", noisy=bad)
                )  # fmt: skip
            if figures:
                over = {
                    "rounds": "95% t interval over its rounds, each a fresh process, on the log scale",
                    "repeats": "95% bootstrap interval over the repeats of its one process (they share its "
                    "state: narrower than a fresh process would show)",
                    "none": "no interval (too few samples)",
                }
                what = "; ".join(over[u] for u in ("rounds", "repeats", "none") if u in units)
                out.append(
                    Question(
                        f"{mode} throughput at T = {length}",
                        f"tokens/s (tokens per call over the median call time, as in the report; {what})",
                        True,
                        figures,
                        f"{name}/REPORT.md",
                    )
                )
    return out


def _memory(name: str, rows: list[TimingRow]) -> list[Question]:
    out = []
    longest = max((r.seq_len for r in rows), default=None)
    for mode in ("train", "prefill", "decode"):
        # each mode at the longest length it was measured at (training is often timed shorter)
        at = max((r.seq_len for r in rows if r.mode == mode and r.ok), default=None)
        cells = [r for r in rows if r.mode == mode and r.seq_len == at and r.ok]
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
                    f"peak memory, {mode} at T = {at}",
                    f"MiB at the peak of one call ({'; '.join(sources)}); one figure per cell: no interval",
                    False,
                    figures,
                    f"{name}/REPORT.md",
                )
            )
    cells = [r for r in rows if r.seq_len == longest and r.ok and r.state_bytes is not None]
    states = {r.label: r.state_bytes / (r.batch_size or 1) for r in cells}  # recorded for the whole batch
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
    checked, improving = chosen_still_learning(rows)
    if improving and (judged is None or judged[0] == "PASS"):  # a FAIL already says it
        models = len({r.label for r in improving})
        out.append(
            f"{len(improving)} of {len(checked)} runs at the chosen rates still improving "
            f"({models} model(s)): their places rank learning speed"
        )
    return "; ".join(out)


def _accuracy(name: str, rows: list[AccuracyRow]) -> list[Question]:
    """Recall and state tracking: past the training length at the longest evaluation, and at L."""
    out = []
    long = by_length(rows)
    if not len(long):
        return out
    summary = summarize(long)
    kind = "state tracking" if section_of(rows[0]) == "state" else "recall"
    chance = chance_levels(rows)
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
                Figure(r["label"], 100 * r[column], _pct(r, f"{column}_low"), _pct(r, f"{column}_high"), name,
                       note=_seeds_note(r, column))
                for _, r in at.iterrows()
            ]  # fmt: skip
            if figures:
                seeds = int(at["seeds"].max())
                over = (
                    f"mean over {seeds} seeds, 95% t interval over them; a seed solved it at "
                    f"≥ {100 * SOLVED:.0f}% at L"
                    if seeds > 1
                    else "one seed, 95% Wilson interval over its examples"
                )
                title = f"{kind}: {task}, {where}"
                what_full = what + f" ({over}; {chance[task]})" if chance.get(task) else what + f" ({over})"
                out.append(Question(title, what_full, True, figures, f"{name}/REPORT.md", limits))
    return out


def _seeds_note(row, column: str) -> str:
    """How many seeds solved the task (at L), and each seed's figure where they split: a mean alone would
    hide a model that solves the task in one seed and not in another."""
    values = row.get(f"{column}_seeds")
    values = values if isinstance(values, list) else []
    if len(values) < 2:
        return ""
    solved = row.get("solved") if column == "accuracy" else None
    out = []
    if solved is not None and not pd.isna(solved):
        out.append(f"{int(solved)} of {len(values)} seeds solved it")
    if seeds_split(values, solved):
        out.append("seeds " + " / ".join(f"{100 * v:.1f}" for v in values))
    return "; ".join(out)


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
    chance = chance_levels(rows)
    for task in dict.fromkeys(ok["task_label"]):
        part = ok[ok["task_label"] == task]
        train_len = int(part["train_len"].iloc[0])
        at_l = part[part["eval_len"] == train_len]
        figures = []
        for _, r in at_l.iterrows():
            interval = r.get("bpb_interval")
            low, high = interval if isinstance(interval, (list, tuple)) else (None, None)
            documents = r.get("bpb_documents")
            paired = list(documents) if isinstance(documents, list) else None
            figures.append(Figure(r["label"], r["bpb"], low, high, name, paired=paired))
        if figures:
            what = (
                f"bits per byte at T = {train_len} (95% t interval over documents; neighbours compared by "
                "the t interval of their per-document differences, every model scoring the same documents"
                + (f"; {chance[task]})" if chance.get(task) else ")")
            )
            title = f"language modelling: {task}"
            out.append(Question(title, what, False, figures, f"{name}/REPORT.md", limits))
        longest = part[part["eval_len"] == part["eval_len"].max()]
        gains = []
        for _, r in longest.iterrows():
            seeds, interval = r.get("context_gain_seeds"), r.get("context_gain_seed_interval")
            if isinstance(seeds, list) and len(seeds) >= 2 and isinstance(interval, (list, tuple)):
                gains.append(Figure(r["label"], sum(seeds) / len(seeds), interval[0], interval[1], name))
        if gains:
            out.append(
                Question(
                    f"length generalisation: {task}",
                    f"bits per byte the context beyond L = {train_len} is worth past L (> 0: used; mean over "
                    f"seeds, each seed's documents pooled, 95% t interval over the seeds; under "
                    f"{NEGLIGIBLE_BPB} counts as negligible, as in the report)",
                    True,
                    gains,
                    f"{name}/REPORT.md",
                    limits,
                    negligible=NEGLIGIBLE_BPB,
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
    ranked, ranks = q.ranked(), q.ranks()
    better = "higher" if q.higher_is_better else "lower"
    note = f" **Caveat: {q.caveat}.**" if q.caveat else ""
    lines = [f"### {q.title} ({q.link.split('/')[0]})", "",
             f"{q.what}; {better} is better. Source: [{q.link}]({q.link}).{note}", "",
             "| rank | model | value | vs the next |", "|---:|---|---:|---|"]  # fmt: skip
    for i, f in enumerate(ranked):
        bounds = f.low is not None and f.high is not None and f.low != f.high
        interval = f" [{number(f.low)}, {number(f.high)}]" if bounds else ""
        extra = f" ({f.note})" if f.note else ""
        nxt = evidence(f, ranked[i + 1], q.negligible) if i + 1 < len(ranked) else ""
        lines.append(f"| {ranks[i]} | {f.label} | {number(f.value)}{interval}{extra} | {nxt} |")
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
        ranked, ranks = q.ranked(), q.ranks()
        titans = next(((i, f) for i, f in enumerate(ranked) if f.label.startswith(TITANS)), None)
        if titans is None:
            continue
        i, f = titans
        tied = [g.label for g in ranked if g.value == ranked[0].value]
        if ranks[i] == 1 and len(tied) > 1:
            lead = f"tied best with {len(tied) - 1} other(s)"
        elif i > 0:
            lead = evidence(ranked[0], f, q.negligible)
        elif len(ranked) > 1:
            lead = f"it is the best; over {ranked[1].label}: {evidence(f, ranked[1], q.negligible)}"
        else:
            lead = "it is the only one"
        best = ranked[0].label if len(tied) == 1 else f"{len(tied)} tied: {', '.join(tied)}"
        lines.append(
            f"| {q.title} | [{q.link.split('/')[0]}]({q.link}) | {best} {number(ranked[0].value)} | "
            f"{f.label} {number(f.value)} ({ranks[i]} of {len(ranked)}) | {lead} | {q.caveat or '–'} |"
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
        copied = sum(carried_over(manifest, rows[run]).values())
        if copied:
            commit += f" ({copied} of {len(rows[run])} cells copied from another run: see its report)"
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
