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


def _skip_record(cell: Cell, reason: str) -> dict:
    return {"status": "skipped", "error": reason, "wall_s": 0.0}


def run_sweep(
    spec: SweepSpec,
    run_dir: Path,
    resume: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    device = resolve_device(spec.device)
    models = spec.models or [ModelEntry(name=n) for n in list_models()]
    check_models(spec, models)
    cells = expand(spec, models, device)
    path = run_dir / results.RESULTS

    done: dict[str, str] = {}
    if resume and path.exists():
        for record in results.read_records(path):
            done[record["key"]] = record.get("status", "ok")
    if resume:
        spec_path = run_dir / "spec.json"
        if spec_path.exists() and json.loads(spec_path.read_text()) != json.loads(spec.model_dump_json()):
            raise BenchError(
                f"{run_dir} was started with a different sweep spec; resume it with the same one"
            )
    manifest = environment.collect(seed=spec.seed)
    if command:
        manifest["command"] = command
    manifest.update(name=spec.name, device=device, n_cells=len(cells))
    results.write_manifest(run_dir, manifest)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))

    oom_at: dict[tuple, int] = {}  # group -> shortest length that ran out of memory
    for key, status in done.items():
        if status == "oom":
            cell = next((c for c in cells if c.key == key), None)
            if cell:
                oom_at[cell.group] = min(oom_at.get(cell.group, cell.seq_len), cell.seq_len)

    bar = tqdm(cells, desc=spec.name, unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(f"{cell.label} {cell.mode} T={cell.seq_len}", refresh=False)
        previous = done.get(cell.key)
        if previous is not None and (previous == "ok" or not retry_failed):
            continue
        if cell.group in oom_at and cell.seq_len > oom_at[cell.group]:
            record = _skip_record(cell, f"out of memory at seq_len {oom_at[cell.group]}")
        elif spec.isolation == "process":
            record = run_isolated(cell, spec.timeout_s)
        else:
            record = run_in_process(cell)
        if record["status"] == "oom":
            oom_at[cell.group] = min(oom_at.get(cell.group, cell.seq_len), cell.seq_len)
        record = {"key": cell.key, **cell.model_dump(), **record, "finished_at": time.time()}
        results.append(path, record)
    bar.close()
    return run_dir
