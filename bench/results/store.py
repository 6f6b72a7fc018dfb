"""The results store: one JSON line per finished cell in ``results.jsonl``, appended and flushed to disk
before the next cell starts, and a ``manifest.json`` describing the run.

A killed sweep loses at most the cell in flight; a torn last line (the process died mid-write) is
ignored on read and never glued to the next record.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"


def results_path(run: str | Path) -> Path:
    """Accept a run directory or a results file."""
    run = Path(run)
    return run / RESULTS if run.is_dir() else run


def append(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, default=str, allow_nan=True) + "\n"
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a torn line from a killed writer: start ours on a fresh line
                f.write(b"\n")
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def read_records(run: str | Path) -> list[dict[str, Any]]:
    """Every readable record of a results file; unreadable lines are skipped with one warning (the torn
    last line of a killed writer silently)."""
    records, skipped = _read(run)
    if skipped:
        warnings.warn(f"{results_path(run)}: {skipped} unreadable line(s) skipped", stacklevel=2)
    return records


def _read(run: str | Path) -> tuple[list[dict[str, Any]], int]:
    path = results_path(run)
    if not path.is_file():
        raise BenchError(f"no results file at {str(path)!r}")
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise BenchError(f"cannot read {str(path)!r}: {err.strerror}") from None
    records, skipped = [], 0
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number < len(lines):  # else: the torn tail of a killed writer, expected and ignored
            skipped += 1
    return records, skipped


def load(run: str | Path) -> pd.DataFrame:
    """All results of a run as a DataFrame, one row per cell. A cell measured in several rounds (or
    re-run) keeps its latest record, with the timing samples of all its ok records pooled and the
    summary recomputed from them (``rounds``: how many ok records were pooled). Records without a key
    or a status (not a finished cell) are left out; a file with none is an error."""
    return pd.DataFrame.from_records(finished_records(run)).reset_index(drop=True)


def finished_records(run: str | Path) -> list[dict[str, Any]]:
    """One record per finished cell (see :func:`load`), as dicts."""
    records, skipped = _read(run)
    finished = [r for r in records if "key" in r and "status" in r]
    for record in finished:
        _check_pooled_fields(record, run)
    if not finished:
        raise BenchError(
            f"{str(results_path(run))!r} holds no finished cell: {len(records)} record(s) without a key and "
            f"a status, {skipped} unreadable line(s)"
        )
    if skipped or len(finished) < len(records):
        warnings.warn(
            f"{results_path(run)}: {skipped} unreadable line(s) and {len(records) - len(finished)} "
            "unfinished record(s) left out",
            stacklevel=2,
        )
    return pool_rounds(finished)


def _check_pooled_fields(record: dict[str, Any], run: str | Path) -> None:
    """What pooling reads, of the types it reads them as; a record of another version or a damaged one is
    bad input that names the file, the cell and the field."""
    where = f"{str(results_path(run))!r}"
    key = record["key"]
    if not isinstance(key, str):
        raise BenchError(f"{where}: a record's field 'key' is {type(key).__name__}, not a string")
    samples = record.get("samples_s")
    numbers = isinstance(samples, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in samples
    )
    if samples is not None and not numbers:
        raise BenchError(f"{where}: cell {key!r}: field 'samples_s' is not a list of finite numbers")


def pool_rounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per key: the latest, its ``samples_s`` the samples of every ok record of that key, and
    ``round_medians_s`` one median per ok record (a round is a fresh process: the unit an interval over
    processes needs). A pooled cell is drifting when any of its rounds drifted, settled only when every
    round's warm-up settled, and its ``drift`` is its rounds' largest: no round's trouble is hidden by
    the round that happened to run last."""
    latest: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[float]] = {}
    medians: dict[str, list[float]] = {}
    drifting: dict[str, bool] = {}
    drift: dict[str, float] = {}
    settled: dict[str, list[bool | None]] = {}
    for record in records:
        key = record.get("key")
        if key is None:
            continue
        latest.pop(key, None)  # keep the order of last appearance
        latest[key] = record
        if record.get("status") == "ok" and isinstance(record.get("samples_s"), list):
            samples.setdefault(key, []).extend(record["samples_s"])
            if record["samples_s"]:
                medians.setdefault(key, []).append(statistics.median(record["samples_s"]))
            drifting[key] = drifting.get(key, False) or record.get("drifting") is True
            value = record.get("drift")
            if isinstance(value, (int, float)) and abs(value) >= abs(drift.get(key, 0.0)):
                drift[key] = value
            settled.setdefault(key, []).append(record.get("warmup_settled"))
    pooled = []
    for key, record in latest.items():
        rounds = len(settled.get(key, []))
        if rounds > 1 and record.get("status") == "ok":
            flags = settled[key]
            record = {
                **record,
                **summary(samples[key], record.get("tokens_per_call")),
                "rounds": rounds,
                "round_medians_s": medians.get(key, []),
                "drifting": drifting[key],
                "drift": drift.get(key, record.get("drift")),
                "warmup_settled": False if False in flags else (None if None in flags else True),
            }
        elif record.get("status") == "ok" and medians.get(key):
            record = {**record, "round_medians_s": medians[key][-1:]}
        pooled.append(record)
    return pooled


def summary(samples: list[float], tokens_per_call: float | None) -> dict[str, Any]:
    """Median and spread of per-call seconds, and tokens/s when the work per call is known."""
    median = statistics.median(samples)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [median, median, median]
    out = {"samples_s": samples, "median_s": median, "min_s": min(samples), "max_s": max(samples)}
    out["iqr_s"] = q[2] - q[0]
    if tokens_per_call:
        out["tokens_per_s"] = tokens_per_call / median if median > 0 else float("inf")
    return out


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, run_dir / MANIFEST)


def manifest_text(run_dir: Path, manifest: dict[str, Any], resume: bool) -> str:
    """The manifest file's text with this invocation's ``manifest`` in it. A new run's is its own; an
    invocation that resumes the run (``--resume``) is appended to the history (``resumed``) and leaves the
    first invocation's command, start and environment with the cells it measured; an invocation writing
    again (its end) updates its own entry, found by its ``run_id``, and keeps what others added."""
    current = read_manifest(run_dir)
    run_id = manifest.get("run_id")
    if current and current.get("run_id") == run_id:
        merged = {**current, **manifest}
    elif not resume or not current:
        merged = manifest
    else:
        history = [dict(entry) for entry in current.get("resumed", []) if isinstance(entry, dict)]
        mine = [entry for entry in history if entry.get("run_id") == run_id]
        if mine:
            mine[0].update(manifest)
        else:
            history.append(manifest)
        merged = {**current, "resumed": history}
    return json.dumps(merged, indent=2, default=str)


def read_manifest(run: str | Path) -> dict[str, Any]:
    path = results_path(run).parent / MANIFEST
    try:
        data = json.loads(path.read_bytes()) if path.exists() else {}
    except (OSError, ValueError):  # a damaged manifest is reported as missing, never fatal to a report
        return {}
    return data if isinstance(data, dict) else {}
