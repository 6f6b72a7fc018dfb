"""Learning-rate grids that bracket their optimum: after a sweep's accuracy cells have run, each model and
task whose chosen rate sits at an edge of the rates tried is trained again one step beyond it (x3 or /3,
bench/results/lr_choice.py), every seed, until the choice is bracketed or the grid has grown
``lr_extend`` steps that way. What to add is decided from the results file alone, so a resumed run adds
the same cells and finds the finished ones done."""

from __future__ import annotations

from pathlib import Path

from bench import results
from bench.results import AccuracyRow
from bench.results.lr_choice import next_rate
from bench.results.rows import parse_stored
from bench.spec.cells import AccuracyCell
from bench.spec.config import SweepSpec


def _latest_rows(path: Path, keys: set[str]) -> dict[str, AccuracyRow]:
    rows: dict[str, AccuracyRow] = {}
    if not path.exists():
        return rows
    for record in results.read_records(path):
        if record.get("key") in keys and "status" in record:
            rows[record["key"]] = parse_stored(record, path)
    return rows


def grid_extensions(spec: SweepSpec, cells: list, path: Path) -> list[AccuracyCell]:
    """The cells to add now: for each (model, task) whose runs have all finished and whose chosen rate sits
    at an edge it may still grow past, that group's cells at the next rate (one per seed)."""
    acc = spec.accuracy
    if not acc.lrs or len(acc.lrs) < 2 or acc.lr_extend < 1:
        return []
    groups: dict[tuple[str, str], list[AccuracyCell]] = {}
    for cell in cells:
        if isinstance(cell, AccuracyCell):
            groups.setdefault((cell.label, cell.task_label), []).append(cell)
    rows = _latest_rows(path, {c.key for group in groups.values() for c in group})
    added = []
    for group in groups.values():
        if any(c.key not in rows for c in group):  # not finished yet (an interrupted run): decide later
            continue
        lr = next_rate([rows[c.key] for c in group], list(acc.lrs), acc.lr_extend)
        if lr is None or any(c.train.lr == lr for c in group):
            continue
        first_lr = group[0].train.lr
        for template in (c for c in group if c.train.lr == first_lr):  # one per seed
            train = template.train.model_copy(update={"lr": lr})
            added.append(template.model_copy(update={"train": train, "lr_origin": "extended"}))
    return added
