"""What a sweep tells its user while it runs: one line on stderr for each cell that did not finish ok,
with its reason. The report lists them too, but ``--no-report`` skips the report, and whoever watches a
sweep (or reads a CI log) should learn why a cell failed where the failure shows."""

from __future__ import annotations

import sys

from tqdm import tqdm

REASON_CHARS = 300


def cell_failed(describe: str, outcome: dict) -> None:
    status = outcome.get("status", "ok")
    if status in ("ok", "skipped"):
        return
    lines = str(outcome.get("error") or "").strip().splitlines()
    reason = lines[0][:REASON_CHARS] if lines else "no reason recorded"
    tqdm.write(f"cell {describe}: {status}: {reason}", file=sys.stderr)  # above the progress bar, not in it
