"""What a sweep has done and decides next: finished cells (from earlier runs too, for ``--resume``), the
OOM skip rule, and the durable append of every result. Every executor goes through it, so they all skip,
resume and record alike."""

from __future__ import annotations

import time
from pathlib import Path

from bench import results
from bench.spec.cells import AccuracyCell, TimingCell

AnyCell = TimingCell | AccuracyCell


def skipped(reason: str) -> dict:
    return {"status": "skipped", "error": reason, "wall_s": 0.0}


class Ledger:
    def __init__(self, cells: list[AnyCell], path: Path, resume: bool, retry_failed: bool):
        self.path = path
        self.retry_failed = retry_failed
        self.done: dict[str, str] = {}
        if resume and path.exists():
            self.done = {r["key"]: r.get("status", "ok") for r in results.read_records(path) if "key" in r}
        self.oom_at: dict[tuple, int] = {}  # group -> shortest length that ran out of memory
        by_key = {c.key: c for c in cells}
        for key, status in self.done.items():
            if status == "oom" and key in by_key:
                self._note_oom(by_key[key])

    def _note_oom(self, cell: AnyCell) -> None:
        self.oom_at[cell.group] = min(self.oom_at.get(cell.group, cell.seq_len), cell.seq_len)

    def needs_run(self, cell: AnyCell) -> bool:
        previous = self.done.get(cell.key)
        return previous is None or (self.retry_failed and previous != "ok")

    def skip_reason(self, cell: AnyCell) -> str | None:
        shortest = self.oom_at.get(cell.group)
        if shortest is not None and cell.seq_len > shortest:
            return f"skipped: out of memory at seq_len {shortest}"
        return None

    def settle(self, cell: AnyCell) -> bool:
        """Whether ``cell`` must be measured now; a cell that is done needs nothing, and one that the skip
        rule rules out is recorded as skipped here."""
        if not self.needs_run(cell):
            return False
        reason = self.skip_reason(cell)
        if reason:
            self.record(cell, skipped(reason))
            return False
        return True

    def record(self, cell: AnyCell, outcome: dict) -> None:
        if outcome["status"] == "oom":
            self._note_oom(cell)
        self.done[cell.key] = outcome["status"]
        results.append(
            self.path, {"key": cell.key, **cell.model_dump(), **outcome, "finished_at": time.time()}
        )
