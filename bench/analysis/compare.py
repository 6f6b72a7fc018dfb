"""``python -m bench compare BASE NEW``: find real regressions between two runs.

A timing passes only when the data rule a regression out, and fails only when they show one; otherwise
the verdict says they do neither:

- **regression** (asv's rule): the ratio of medians (new / base) is above ``1 + threshold`` AND a
  two-sided Mann-Whitney U test is significant (p < ``alpha``); **improvement** the mirror image;
- **unchanged** (a pass): the upper bound of a bootstrap interval of the ratio of medians, one-sided at
  level ``1 - alpha``, is below ``1 + threshold``: a slowdown beyond the threshold is ruled out. Only
  rounds can show that (at least ``MIN_ROUNDS_TO_PASS`` a side): the repeats of one process share its
  state (its warm caches, its threads' placement, the load on the machine while it ran), so their spread
  says nothing of the next process, and with fewer rounds the percentile bootstrap is too narrow;
- **inconclusive**: neither, e.g. a ratio of 1.3 that the test cannot tell from noise because two rounds
  ran slow, or a ratio of 1.02 whose interval still reaches 1.25. The advice is to measure more rounds.

What a test counts as one independent observation matters more than the test: when a cell was measured
in several rounds (``bench run --rounds K``, each round a fresh process, the cells in a new order) the
unit is a round, summarised by its median; a run of a single round falls back to its raw repeats (which
can show a regression, never a pass). A test also has a floor: with n units a side, a two-sided exact
Mann-Whitney p cannot go below 2 / C(2n, n) (n = 3: 0.10, n = 4: 0.029, n = 5: 0.0079), so when the
samples cannot reach ``alpha`` the comparison says so and refuses to decide (exit 2).

Peak memory and state size are nearly deterministic, so a rise beyond ``mem_threshold`` is enough; for
the peak, as long as it is also larger than ``mem_floor`` bytes: the CUDA caching allocator rounds
to blocks and older CPU records hold the resident size, which moves in pages, so on a tiny model a few
KiB more would otherwise read as a 20% regression (a state's bytes are counted exactly, and have no
floor);
an accuracy cell's score columns count when they get worse by more than a threshold (absolute): the record
says which columns it has and, for each, whether higher is better and its unit (``score_columns``, written
by the task's scorer: bench/scoring), and the unit picks the threshold: ``acc_threshold`` for fractions
(accuracy, overall and past the training length), ``bpb_threshold`` for bits per byte (default 0.05).
Records written before ``score_columns`` get them from their scorer as it is now. A cell that was ok and
now fails is a regression. Exit codes (from the CLI): 0 every metric passed, 1 a regression, 2 bad
input or a comparison that cannot decide by its design (too few units, no cells in common), 4 no
regression shown but at least one timing inconclusive.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from bench import results
from bench.analysis.stats import mann_whitney_u, median_ratio_interval
from bench.errors import BenchError
from bench.registry import SCORERS

TIMING_MODES = ("train", "prefill", "decode")


@dataclass
class Change:
    key: str
    metric: str
    base: float
    new: float
    ratio: float
    p_value: float | None
    verdict: str  # "regression", "improvement", "unchanged", "inconclusive"
    units: str = ""  # what the test counted, e.g. "6 vs 6 rounds"
    interval: tuple[float, float] | None = None  # of the ratio, each bound one-sided at 1 - alpha


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    underpowered: list[str] = field(default_factory=list)  # cells whose units cannot reach alpha
    unsampled: list[str] = field(default_factory=list)  # ok timing cells without samples on a side

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def inconclusive(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "inconclusive"]

    @property
    def common(self) -> int:
        return len({c.key for c in self.changes})

    @property
    def measured(self) -> list[Change]:
        """What was compared: every metric, and every cell that was ok and now fails (a status that
        stayed a failure compares nothing)."""
        return [c for c in self.changes if not (c.metric.startswith("status ") and c.verdict == "unchanged")]


@dataclass
class Side:
    """One run's view of a cell: its latest record, one median per round, and every repeat."""

    record: dict
    round_medians: list[float]
    samples: list[float]


def smallest_p(n1: int, n2: int) -> float:
    """The smallest two-sided p an exact Mann-Whitney test can give with n1 and n2 samples."""
    return min(1.0, 2 / math.comb(n1 + n2, n1))


def _side(records: list[dict]) -> Side:
    """Rounds of concatenated runs are told apart by their run_id."""
    rounds: dict[tuple, list[float]] = {}
    for record in records:
        if record.get("status") == "ok" and isinstance(record.get("samples_s"), list):
            rounds.setdefault((record.get("run_id"), record.get("round", 0)), []).extend(record["samples_s"])
    medians = [statistics.median(s) for s in rounds.values() if s]
    return Side(records[-1], medians, [x for s in rounds.values() for x in s])


MIN_ROUNDS_TO_PASS = 4


def timing_units(base: Side, new: Side) -> tuple[list[float], list[float], str]:
    """The independent observations to test: one median per round when both sides have several rounds,
    else the raw repeats."""
    if len(base.round_medians) >= 2 and len(new.round_medians) >= 2:
        return base.round_medians, new.round_medians, "rounds"
    return base.samples, new.samples, "repeats"


def _load(run: str) -> dict[str, Side]:
    try:
        records = results.read_records(run)
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable input is bad input
        raise BenchError(f"cannot read results from {run!r}: {err}") from None
    by_key: dict[str, list[dict]] = {}
    for record in records:
        if isinstance(record, dict) and "key" in record:
            _check_types(record, run)
            by_key.setdefault(record["key"], []).append(record)
    if not by_key:
        raise BenchError(f"{run!r} holds no result records")
    return {key: _side(group) for key, group in by_key.items()}


def _check_types(record: dict, run: str) -> None:
    """The fields compare reads, of the types it reads them as: a record of another version or a damaged
    one is bad input that names the file, the cell and the field."""
    key = record["key"]
    if not isinstance(key, str):
        raise BenchError(f"{run!r}: a record's field 'key' is {type(key).__name__}, not a string")
    samples = record.get("samples_s")
    if samples is not None and not (
        isinstance(samples, list) and all(_number(x) is not None for x in samples)
    ):
        raise BenchError(f"{run!r}: cell {key!r}: field 'samples_s' is not a list of finite numbers")
    for name in ("status", "mode"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise BenchError(f"{run!r}: cell {key!r}: field {name!r} is not a string")
    columns = record.get("score_columns")
    if columns is not None and not (
        isinstance(columns, dict) and all(isinstance(v, dict) for v in columns.values())
    ):
        raise BenchError(f"{run!r}: cell {key!r}: field 'score_columns' is not a table of columns")


def compare_timing(
    key: str, base: list[float], new: list[float], threshold: float, alpha: float, units: str = "rounds"
) -> Change:
    """Times in seconds per call (lower is better); the ratio is new / base medians. ``units``: what the
    values are, "rounds" (one median per round) or "repeats" (of one process: never enough to pass)."""
    b, n = statistics.median(base), statistics.median(new)
    ratio = n / b if b > 0 else math.inf
    _, p = mann_whitney_u(base, new)
    low, high = median_ratio_interval(base, new, alpha)
    enough = units == "rounds" and min(len(base), len(new)) >= MIN_ROUNDS_TO_PASS
    if p < alpha and ratio > 1 + threshold:
        verdict = "regression"
    elif p < alpha and ratio < 1 / (1 + threshold):
        verdict = "improvement"
    elif enough and high < 1 + threshold:
        verdict = "unchanged"
    else:
        verdict = "inconclusive"
    return Change(key, "time", b, n, ratio, p, verdict, interval=(low, high))


def _deterministic(
    key: str,
    metric: str,
    base: float,
    new: float,
    threshold: float,
    higher_is_worse: bool,
    floor: float = 0.0,
) -> Change:
    ratio = new / base if base else (math.inf if new else 1.0)
    big = abs(new - base) > floor
    worse = big and (ratio > 1 + threshold if higher_is_worse else ratio < 1 - threshold)
    better = big and (ratio < 1 - threshold if higher_is_worse else ratio > 1 + threshold)
    verdict = "regression" if worse else "improvement" if better else "unchanged"
    return Change(key, metric, base, new, ratio, None, verdict)


def _absolute(
    key: str, metric: str, base: float, new: float, threshold: float, lower_is_better: bool
) -> Change:
    """A score judged by its absolute change: accuracy (higher is better) or bits per byte (lower is)."""
    worse = new - base if lower_is_better else base - new
    verdict = "regression" if worse > threshold else "improvement" if -worse > threshold else "unchanged"
    return Change(key, metric, base, new, new / base if base else math.inf, None, verdict)


def score_columns(record: dict) -> dict[str, dict]:
    """A record's score columns: name -> {"higher_is_better", "unit"}, as its scorer wrote them, else as
    its scorer (named by ``scoring``) would write them now."""
    stored = record.get("score_columns")
    if isinstance(stored, dict) and stored:
        return stored
    if record.get("mode") != "accuracy":
        return {}
    try:
        scorer = SCORERS.get(record.get("scoring") or "distance").load()
    except BenchError:
        return {}
    prefixes = ("bpb_T",) if scorer.unit == "bits per byte" else ("acc_T", "acc_beyond_T")
    return {
        c: {"higher_is_better": scorer.higher_is_better, "unit": scorer.unit}
        for c in record
        if c.startswith(prefixes)
    }


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def compare_runs(
    base_run: str,
    new_run: str,
    threshold: float = 0.10,
    alpha: float = 0.01,
    mem_threshold: float = 0.10,
    acc_threshold: float = 0.05,
    bpb_threshold: float = 0.05,
    mem_floor: float = 2**20,
) -> Comparison:
    base, new = _load(base_run), _load(new_run)
    out = Comparison(only_base=sorted(set(base) - set(new)), only_new=sorted(set(new) - set(base)))
    for key in sorted(set(base) & set(new)):
        b, n = base[key].record, new[key].record
        if b.get("status") == "ok" and n.get("status") != "ok":
            out.changes.append(Change(key, f"status ok -> {n.get('status')}", 1, 0, 0, None, "regression"))
            continue
        if b.get("status") != "ok" or n.get("status") != "ok":
            out.changes.append(
                Change(key, f"status {b.get('status')} -> {n.get('status')}", 0, 0, 1, None, "unchanged")
            )
            continue
        bu, nu, name = timing_units(base[key], new[key])
        timed = b.get("mode") in TIMING_MODES or n.get("mode") in TIMING_MODES
        if bool(bu) != bool(nu) or (timed and not bu):  # a time that cannot be compared is not "unchanged"
            missing = "BASE and NEW" if not bu and not nu else "BASE" if not bu else "NEW"
            out.unsampled.append(f"{key} (none in {missing})")
        if bu and nu:
            if smallest_p(len(bu), len(nu)) >= alpha:
                out.underpowered.append(f"{key} ({len(bu)} vs {len(nu)} {name})")
            change = compare_timing(key, bu, nu, threshold, alpha, name)
            change.units = f"{len(bu)} vs {len(nu)} {name}"
            out.changes.append(change)
        # The floor is for the measured peak only: the state's bytes are counted exactly from its tensors.
        for metric, floor in (("peak_mem_bytes", mem_floor), ("state_bytes", 0.0)):
            bv, nv = _number(b.get(metric)), _number(n.get(metric))
            if bv is not None and nv is not None:
                out.changes.append(_deterministic(key, metric, bv, nv, mem_threshold, True, floor))
        thresholds = {"fraction": acc_threshold, "bits per byte": bpb_threshold}
        for col, meaning in sorted(score_columns(b).items()):
            bv, nv = _number(b.get(col)), _number(n.get(col))
            limit = thresholds.get(meaning.get("unit"), acc_threshold)
            if bv is not None and nv is not None:
                lower_is_better = not meaning.get("higher_is_better", True)
                out.changes.append(_absolute(key, col, bv, nv, limit, lower_is_better))
    return out


def _fmt(metric: str, x: float) -> str:
    if metric == "time":
        return f"{x * 1e3:.3g} ms"
    if metric.endswith("bytes"):
        return f"{x / 2**20:.4g} MiB"
    return f"{x:.4g}"


def to_markdown(comp: Comparison, show_unchanged: bool = False, alpha: float = 0.01) -> str:
    flagged = [c for c in comp.changes if show_unchanged or c.verdict != "unchanged"]
    lines = [
        f"**{len(comp.regressions)} regression(s)**, {len(comp.inconclusive)} inconclusive, among "
        f"{len(comp.changes)} compared metrics of {comp.common} cells in common. A timing regresses when the "
        "ratio of medians passes the threshold and a Mann-Whitney U test is significant; it passes only "
        f"when the upper bound of a bootstrap interval of the ratio ({100 * (1 - alpha):g}%, one-sided, "
        f"over rounds, at least {MIN_ROUNDS_TO_PASS} a side) is below the threshold; otherwise it is "
        "inconclusive. Unchanged metrics not listed.",
        "",
    ]
    if comp.inconclusive:
        lines += [
            f"{len(comp.inconclusive)} timing(s) inconclusive: the data neither show nor rule out a "
            "regression beyond the threshold. Measure more rounds (`bench run --rounds`), interleaved, on "
            "a quieter machine.",
            "",
        ]
    if flagged:
        lines += [
            "| cell | metric | base | new | ratio [interval] | p (units) | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        order = {"regression": 0, "inconclusive": 1, "improvement": 2, "unchanged": 3}
        for c in sorted(flagged, key=lambda c: (order[c.verdict], c.key)):
            p = "" if c.p_value is None else f"{c.p_value:.3g}" + (f" ({c.units})" if c.units else "")
            ratio = f"{c.ratio:.3f}" + (f" [{c.interval[0]:.3f}, {c.interval[1]:.3f}]" if c.interval else "")
            mark = f"**{c.verdict}**" if c.verdict in ("regression", "inconclusive") else c.verdict
            lines.append(
                f"| `{c.key}` | {c.metric} | {_fmt(c.metric, c.base)} | {_fmt(c.metric, c.new)} | "
                f"{ratio} | {p} | {mark} |"
            )
    for title, keys in (("Only in BASE", comp.only_base), ("Only in NEW", comp.only_new)):
        if keys:
            lines += ["", f"{title} ({len(keys)} cells, not compared):", *(f"- `{k}`" for k in keys)]
    return "\n".join(lines) + "\n"
