"""Run a sweep: expand the spec into cells, measure each (one process per cell by default), append each
result as it finishes, skip what cannot work, and write the report at the end."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench import environment, results
from bench.cells import Cell, expand
from bench.config import ModelEntry, SweepSpec
from bench.errors import BenchError
from bench.execute import run_in_process, run_isolated
from bench.registry import build, list_models


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("device 'cuda' was asked for but no CUDA device is available here")
    return device


def check_models(spec: SweepSpec, models: list[ModelEntry]) -> None:
    """Build each model once on the meta device (no memory, no compute) so that an unknown name, an
    unknown argument or an impossible shape is reported before any cell runs."""
    labels = [m.display for m in models]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise BenchError(
            f"model label(s) used twice in the sweep: {', '.join(duplicates)}; give each a label"
        )
    for entry in models:
        try:
            with torch.device("meta"):
                build(
                    entry.name,
                    vocab_size=spec.vocab_size,
                    d_model=spec.d_model,
                    n_layers=spec.n_layers,
                    **entry.args,
                )
        except BenchError:
            raise
        except (ValueError, TypeError) as err:
            raise BenchError(f"model {entry.display!r} cannot be built: {err}") from None


def new_run_dir(spec: SweepSpec, out: str | None) -> Path:
    if out:
        run_dir = Path(out)
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{spec.name}-{stamp}"
    if (run_dir / results.RESULTS).exists():
        raise BenchError(
            f"{run_dir} already holds results; use --resume {run_dir} to finish it, or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class Ledger:
    """What the sweep has done and decides next: finished cells (from earlier runs too), the OOM skip
    rule, and the durable append of every result."""

    def __init__(self, cells: list[Cell], path: Path, resume: bool, retry_failed: bool):
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

    def _note_oom(self, cell: Cell) -> None:
        self.oom_at[cell.group] = min(self.oom_at.get(cell.group, cell.seq_len), cell.seq_len)

    def needs_run(self, cell: Cell) -> bool:
        previous = self.done.get(cell.key)
        return previous is None or (self.retry_failed and previous != "ok")

    def skip_reason(self, cell: Cell) -> str | None:
        shortest = self.oom_at.get(cell.group)
        if shortest is not None and cell.seq_len > shortest:
            return f"skipped: out of memory at seq_len {shortest}"
        return None

    def record(self, cell: Cell, outcome: dict) -> None:
        if outcome["status"] == "oom":
            self._note_oom(cell)
        self.done[cell.key] = outcome["status"]
        results.append(
            self.path, {"key": cell.key, **cell.model_dump(), **outcome, "finished_at": time.time()}
        )


def skipped(reason: str) -> dict:
    return {"status": "skipped", "error": reason, "wall_s": 0.0}


def run_local(cells: list[Cell], ledger: Ledger, spec: SweepSpec, bar) -> None:
    """One cell at a time on this machine: timing cells never share a device."""
    for cell in cells:
        bar.set_postfix_str(f"{cell.label} {cell.mode} T={cell.seq_len}", refresh=False)
        if ledger.needs_run(cell):
            reason = ledger.skip_reason(cell)
            if reason:
                outcome = skipped(reason)
            elif spec.isolation == "process":
                outcome = run_isolated(cell, spec.timeout_s)
            else:
                outcome = run_in_process(cell)
            ledger.record(cell, outcome)
        bar.update()


def run_sweep(
    spec: SweepSpec,
    run_dir: Path,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    command: str | None = None,
    executor: str = "local",
    ray_cpus_per_cell: int | None = None,
) -> Path:
    device = resolve_device(spec.device)
    models = spec.models or [ModelEntry(name=n) for n in list_models()]
    check_models(spec, models)
    cells = expand(spec, models, device)
    if resume:
        spec_path = run_dir / "spec.json"
        if spec_path.exists() and json.loads(spec_path.read_text()) != json.loads(spec.model_dump_json()):
            raise BenchError(
                f"{run_dir} was started with a different sweep spec; resume it with the same one"
            )
    ledger = Ledger(cells, run_dir / results.RESULTS, resume, retry_failed)
    manifest = environment.collect(seed=spec.seed)
    if command:
        manifest["command"] = command
    manifest.update(name=spec.name, device=device, n_cells=len(cells), executor=executor)
    results.write_manifest(run_dir, manifest)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))

    with tqdm(total=len(cells), desc=spec.name, unit="cell", disable=not progress, dynamic_ncols=True) as bar:
        if executor == "ray":
            from bench.ray_executor import run_ray

            run_ray(cells, ledger, spec, bar, ray_cpus_per_cell)
        else:
            run_local(cells, ledger, spec, bar)
    return run_dir
