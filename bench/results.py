"""The results store: one JSON line per finished cell in ``results.jsonl``, appended and flushed to disk
before the next cell starts, and a ``manifest.json`` describing the run.

A killed sweep loses at most the cell in flight; a torn last line (the process died mid-write) is
ignored on read and never glued to the next record.
"""

from __future__ import annotations

import json
import os
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
    path = results_path(run)
    if not path.exists():
        raise BenchError(f"no results at {str(path)!r}")
    records = []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            records.append(json.loads(raw))
        except json.JSONDecodeError:
            if number < len(lines):
                warnings.warn(f"{path}:{number}: unreadable result line skipped", stacklevel=2)
            # else: the torn tail of a killed writer, expected and ignored
    return records


def load(run: str | Path) -> pd.DataFrame:
    """All results of a run as a DataFrame, one row per cell (a re-run cell replaces its earlier row)."""
    frame = pd.DataFrame.from_records(read_records(run))
    if "key" in frame:
        frame = frame.drop_duplicates("key", keep="last").reset_index(drop=True)
    return frame


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, run_dir / MANIFEST)


def read_manifest(run: str | Path) -> dict[str, Any]:
    path = results_path(run).parent / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}
