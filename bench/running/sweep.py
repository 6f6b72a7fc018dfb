"""Run a sweep: check the models, expand the spec into cells, write the manifest, and hand the cells to an
executor, which measures each (one process per cell by default) and appends each result as it finishes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import torch
from tqdm import tqdm

from bench import results
from bench.errors import BenchError
from bench.registry import build, list_models
from bench.running import environment
from bench.running.environment import resolve_device
from bench.running.executors import run_local, run_ray
from bench.running.ledger import Ledger, round_order
from bench.spec.cells import expand
from bench.spec.config import ModelEntry, SweepSpec


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
    manifest.update(name=spec.name, device=device, n_cells=len(cells), rounds=spec.rounds, executor=executor)
    results.write_manifest(run_dir, manifest)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))

    total = len(cells) * spec.rounds
    with tqdm(total=total, desc=spec.name, unit="cell", disable=not progress, dynamic_ncols=True) as bar:
        for round_index in range(spec.rounds):
            ordered = round_order(cells, round_index, spec.seed)
            if executor == "ray":
                run_ray(ordered, ledger, spec, bar, round_index, ray_cpus_per_cell)
            else:
                run_local(ordered, ledger, spec, bar, round_index)
    return run_dir
