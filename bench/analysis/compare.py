"""``python -m bench compare BASE NEW``: find real regressions between two runs.

Timings follow asv's rule: a change counts only if the ratio of medians passes ``threshold`` AND a
Mann-Whitney U test on the raw per-repeat samples is significant (p < ``alpha``). Peak memory and state
size are nearly deterministic, so a rise beyond ``mem_threshold`` is enough; accuracy counts when it
drops by more than ``acc_threshold`` (absolute). A cell that was ok and now fails is a regression.
Exit code: 1 if any regression, else 0 (2 on bad input, from the CLI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench import results
from bench.analysis.stats import mann_whitney_u
from bench.errors import BenchError


@dataclass
class Change:
    key: str
    metric: str
    base: float
    new: float
    ratio: float
    p_value: float | None
    verdict: str  # "regression", "improvement", "not significant", "unchanged"


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]


def _load(run: str) -> pd.DataFrame:
    """One row per cell. A cell measured several times (runs concatenated to interleave base and head
    rounds) keeps its latest record, with the raw timing samples of all its ok records pooled."""
    try:
        records = results.read_records(run)
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable input is bad input
        raise BenchError(f"cannot read results from {run!r}: {err}") from None
    by_key: dict[str, dict] = {}
    pooled: dict[str, list[float]] = {}
    for record in records:
        if "key" not in record:
            continue
        by_key[record["key"]] = record
        if record.get("status") == "ok" and isinstance(record.get("samples_s"), list):
            pooled.setdefault(record["key"], []).extend(record["samples_s"])
    if not by_key:
        raise BenchError(f"{run!r} holds no result records")
    for key, samples in pooled.items():
        if by_key[key].get("status") == "ok":
            by_key[key] = {**by_key[key], "samples_s": samples}
    return pd.DataFrame.from_records(list(by_key.values())).set_index("key")


def compare_timing(key: str, base: list[float], new: list[float], threshold: float, alpha: float) -> Change:
    """Times in seconds per call (lower is better); the ratio is new / base medians."""
    b, n = float(pd.Series(base).median()), float(pd.Series(new).median())
    ratio = n / b if b > 0 else math.inf
    _, p = mann_whitney_u(base, new)
    if max(ratio, 1 / ratio) < 1 + threshold:
        verdict = "unchanged"
    elif p >= alpha:
        verdict = "not significant"
    else:
        verdict = "regression" if ratio > 1 else "improvement"
    return Change(key, "time", b, n, ratio, p, verdict)


def _deterministic(
    key: str, metric: str, base: float, new: float, threshold: float, higher_is_worse: bool
) -> Change:
    ratio = new / base if base else (math.inf if new else 1.0)
    worse = ratio > 1 + threshold if higher_is_worse else ratio < 1 - threshold
    better = ratio < 1 - threshold if higher_is_worse else ratio > 1 + threshold
    verdict = "regression" if worse else "improvement" if better else "unchanged"
    return Change(key, metric, base, new, ratio, None, verdict)


def _accuracy_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("acc_T")]


def compare_runs(
    base_run: str,
    new_run: str,
    threshold: float = 0.10,
    alpha: float = 0.01,
    mem_threshold: float = 0.10,
    acc_threshold: float = 0.05,
) -> Comparison:
    base, new = _load(base_run), _load(new_run)
    out = Comparison(
        only_base=sorted(set(base.index) - set(new.index)), only_new=sorted(set(new.index) - set(base.index))
    )
    for key in sorted(set(base.index) & set(new.index)):
        b, n = base.loc[key], new.loc[key]
        if b.get("status") == "ok" and n.get("status") != "ok":
            out.changes.append(Change(key, f"status ok -> {n.get('status')}", 1, 0, 0, None, "regression"))
            continue
        if b.get("status") != "ok" or n.get("status") != "ok":
            continue
        if isinstance(b.get("samples_s"), list) and isinstance(n.get("samples_s"), list):
            out.changes.append(compare_timing(key, b["samples_s"], n["samples_s"], threshold, alpha))
        for metric in ("peak_mem_bytes", "state_bytes"):
            if pd.notna(b.get(metric)) and pd.notna(n.get(metric)):
                out.changes.append(
                    _deterministic(
                        key, metric, float(b[metric]), float(n[metric]), mem_threshold, higher_is_worse=True
                    )
                )
        for col in _accuracy_columns(base):
            if pd.notna(b.get(col)) and pd.notna(n.get(col)):
                drop = float(b[col]) - float(n[col])
                verdict = (
                    "regression"
                    if drop > acc_threshold
                    else "improvement"
                    if -drop > acc_threshold
                    else "unchanged"
                )
                out.changes.append(
                    Change(
                        key,
                        col,
                        float(b[col]),
                        float(n[col]),
                        float(n[col]) / float(b[col]) if b[col] else math.inf,
                        None,
                        verdict,
                    )
                )
    return out


def _fmt(metric: str, x: float) -> str:
    if metric == "time":
        return f"{x * 1e3:.3g} ms"
    if metric.endswith("bytes"):
        return f"{x / 2**20:.4g} MiB"
    return f"{x:.4g}"


def to_markdown(comp: Comparison, show_unchanged: bool = False) -> str:
    flagged = [c for c in comp.changes if show_unchanged or c.verdict != "unchanged"]
    lines = [
        f"**{len(comp.regressions)} regression(s)** among {len(comp.changes)} compared metrics "
        f"(timings: ratio and Mann-Whitney U; unchanged metrics not listed).",
        "",
    ]
    if flagged:
        lines += ["| cell | metric | base | new | ratio | p | verdict |", "|---|---|---|---|---|---|---|"]
        order = {"regression": 0, "improvement": 1, "not significant": 2, "unchanged": 3}
        for c in sorted(flagged, key=lambda c: (order[c.verdict], c.key)):
            p = "" if c.p_value is None else f"{c.p_value:.3g}"
            mark = "**regression**" if c.verdict == "regression" else c.verdict
            lines.append(
                f"| `{c.key}` | {c.metric} | {_fmt(c.metric, c.base)} | {_fmt(c.metric, c.new)} | "
                f"{c.ratio:.3f} | {p} | {mark} |"
            )
    for title, keys in (("Only in BASE", comp.only_base), ("Only in NEW", comp.only_new)):
        if keys:
            lines += ["", f"{title} ({len(keys)} cells, not compared):", *(f"- `{k}`" for k in keys)]
    return "\n".join(lines) + "\n"
