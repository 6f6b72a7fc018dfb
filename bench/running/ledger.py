"""What a sweep has done and decides next: finished cells (from earlier runs too, for ``--resume``), the
OOM skip rule, and the durable append of every result. Every executor goes through it, so they all skip,
resume and record alike.

A cell is measured once per round (``rounds`` in the sweep); each record carries its ``round`` and the
``run_id`` of the invocation that measured it, so rounds of concatenated runs stay apart.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

from bench import results
from bench.errors import BenchError
from bench.running.notices import cell_failed
from bench.spec.cells import AccuracyCell, TimingCell

AnyCell = TimingCell | AccuracyCell


def skipped(reason: str) -> dict:
    return {"status": "skipped", "error": reason, "wall_s": 0.0}


def round_order(cells: list[AnyCell], round_index: int, seed: int) -> list[AnyCell]:
    """The cells in a seeded random order that changes per round, each group's lengths still ascending
    (so the OOM skip rule holds): positions are shuffled, then every group's positions are given back to
    its cells shortest first."""
    if round_index == 0:
        return list(cells)
    shuffled = list(cells)
    random.Random(f"{seed}/round/{round_index}").shuffle(shuffled)
    by_group: dict[tuple, list[AnyCell]] = {}
    for cell in shuffled:
        by_group.setdefault(cell.group, []).append(cell)
    for group in by_group.values():
        group.sort(key=lambda c: c.length, reverse=True)
    return [by_group[cell.group].pop() for cell in shuffled]


class Ledger:
    def __init__(self, cells: list[AnyCell], path: Path, resume: bool, retry_failed: bool):
        self.path = path
        self.retry_failed = retry_failed
        self.run_id = uuid.uuid4().hex[:12]
        self.done: dict[tuple[str, int], str] = {}
        if resume and path.exists():
            for r in results.read_records(path):
                if "key" not in r:
                    continue
                if not isinstance(r["key"], str) or not isinstance(r.get("round", 0), int):
                    raise BenchError(f"{str(path)!r}: a record's 'key' or 'round' is damaged: {r['key']!r}")
                self.done[(r["key"], r.get("round", 0))] = r.get("status", "ok")
        # (group, round) -> the shortest length that ran out of memory in that round: a round's OOM (a
        # transient one: another job on the GPU) says nothing of the lengths another round measured
        self.oom_at: dict[tuple, int] = {}
        self.add(cells)

    def add(self, cells: list[AnyCell]) -> None:
        """Cells the sweep added (an extended learning-rate grid): their earlier outcomes count too. Under
        ``retry_failed`` earlier OOMs are retried, so the boundary is learned again from the retries."""
        if self.retry_failed:
            return
        by_key = {c.key: c for c in cells}
        for (key, round_index), status in self.done.items():
            if status == "oom" and key in by_key:
                self._note_oom(by_key[key], round_index)

    def _note_oom(self, cell: AnyCell, round_index: int) -> None:
        where = (cell.group, round_index)
        self.oom_at[where] = min(self.oom_at.get(where, cell.length), cell.length)

    def needs_run(self, cell: AnyCell, round_index: int = 0) -> bool:
        previous = self.done.get((cell.key, round_index))
        return previous is None or (self.retry_failed and previous != "ok")

    def skip_reason(self, cell: AnyCell, round_index: int = 0) -> str | None:
        shortest = self.oom_at.get((cell.group, round_index))
        if shortest is not None and cell.length > shortest:
            return f"skipped: out of memory at seq_len {shortest}"
        return None

    def settle(self, cell: AnyCell, round_index: int = 0) -> bool:
        """Whether ``cell`` must be measured now; a cell that is done needs nothing, one that the skip rule
        rules out is recorded as skipped here, and later rounds re-measure only cells that ran fine. A
        later round's OOM leaves the longer cells unmeasured in that round without a record: a "skipped"
        record would stand, as the latest, over the measurement their first round made."""
        if not self.needs_run(cell, round_index):
            return False
        if round_index > 0 and self.done.get((cell.key, 0)) != "ok":
            return False
        reason = self.skip_reason(cell, round_index)
        if reason and round_index > 0:
            return False
        if reason:
            self.record(cell, skipped(reason), round_index)
            return False
        return True

    def record(self, cell: AnyCell, outcome: dict, round_index: int = 0) -> None:
        if outcome["status"] == "oom":
            self._note_oom(cell, round_index)
        self.done[(cell.key, round_index)] = outcome["status"]
        stamp = {"round": round_index, "run_id": self.run_id, "finished_at": time.time()}
        results.append(self.path, {"key": cell.key, **cell.model_dump(), **outcome, **stamp})
        cell_failed(cell.describe, outcome)
