"""The results of a run: the store (``results.jsonl`` and ``manifest.json``, bench/results/store.py) and the
typed rows reports read it as (bench/results/rows.py)."""

from bench.results.rows import AccuracyRow, EvalEntry, TimingRow, load_rows, parse_row
from bench.results.store import (
    MANIFEST,
    RESULTS,
    append,
    load,
    manifest_text,
    pool_rounds,
    read_manifest,
    read_records,
    results_path,
    summary,
    write_manifest,
)

__all__ = [
    "MANIFEST",
    "RESULTS",
    "AccuracyRow",
    "EvalEntry",
    "TimingRow",
    "append",
    "load",
    "load_rows",
    "manifest_text",
    "parse_row",
    "pool_rounds",
    "read_manifest",
    "read_records",
    "results_path",
    "summary",
    "write_manifest",
]
