"""``python -m bench run``: run a sweep and write its report.

Exit codes: 0 the sweep finished and at least one cell measured ok (cells that ran out of memory,
crashed, timed out or diverged are results, recorded as such); 1 no cell finished ok, or, with
``--strict``, any cell did not; 2 bad input (nothing was run or written); 3 an internal error; 130 / 143
stopped by SIGINT / SIGTERM (finished cells are kept, and the command that resumes the run is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.spec.config import (
    ACCURACY_MODE,
    PRESETS,
    TIMING_MODES,
    default_spec,
    load_spec,
    parse_spec,
    preset_spec,
)

HELP = "run a sweep (default: a small CPU sweep, or 1K-16K tokens on CUDA)"
EXIT_CELLS_FAILED = 1

# Flags that change what a sweep measures: a packaged sweep run with any of them is no longer that sweep,
# so it is not reported under that sweep's name unless --name says so.
SHAPING_FLAGS = (
    "models", "seq_lens", "batch_sizes", "dtypes", "modes", "tasks", "d_model", "n_layers", "vocab_size",
    "train_len", "param_budget", "device",
)  # fmt: skip


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated integers, got {text!r}") from None


def names(text: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def _listed(flag: str, text: str | None) -> list[str] | None:
    """A list flag that was given must name something: an unset shell variable is not "everything"."""
    if text is None:
        return None
    items = names(text)
    if not items:
        raise BenchError(f"{flag} {text!r} lists nothing; leave the flag out to use the sweep's own list")
    return items


def _tasks(spec, listed: list[str]) -> list:
    """--tasks a,b: a task the spec already lists keeps its args there; any other gets its defaults."""
    known = {t.display: t for t in spec.tasks}
    return [known[n].model_dump() if n in known else {"name": n} for n in listed]


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("spec", nargs="?", help="sweep file (TOML); default: the packaged default sweep")
    run.add_argument(
        "--models",
        help="comma-separated registered names, package.module:factory or path/file.py:factory strings; "
        "LABEL=MODEL names one in the results",
    )
    run.add_argument("--seq-lens", help="timing cells' sequence lengths, e.g. 256,1024")
    run.add_argument("--batch-sizes", help="e.g. 1,4")
    run.add_argument("--dtypes", help="float32, bfloat16, float16, float64")
    run.add_argument("--modes", help="train, prefill, decode, accuracy")
    run.add_argument("--tasks", help="accuracy tasks, e.g. mqar,niah-pk (see bench/tasks)")
    run.add_argument(
        "--train-len", type=int, help="accuracy cells' training length (the [accuracy] train_len)"
    )
    run.add_argument(
        "--preset",
        help="a packaged sweep as the base spec: "
        + ", ".join(f"'{name}'" for name in sorted(PRESETS))
        + " (see bench/spec/presets)",
    )
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where cells run (default: auto)")
    run.add_argument("--out", help="run directory (default runs/<name>-<timestamp>)")
    run.add_argument("--name", help="the sweep's name in the report and the default run directory")
    run.add_argument("--repeats", type=int, help="timed calls per cell and round, after warm-up")
    run.add_argument("--warmup", type=int, help="untimed calls at least, before timing (more until steady)")
    run.add_argument("--threads", type=int, help="CPU threads for torch (at most the cores here)")
    run.add_argument("--d-model", type=int, help="every model's width")
    run.add_argument("--n-layers", type=int, help="every model's depth")
    run.add_argument("--vocab-size", type=int, help="the timing cells' vocabulary")
    run.add_argument(
        "--timeout", type=float, help="seconds per cell before it is killed and recorded as timeout"
    )
    run.add_argument(
        "--rounds",
        type=int,
        help="measure every cell this many times, each in a fresh process, in a new seeded order per round "
        "(what `compare` counts as independent units)",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="run every model through torch.compile (compiled outside the timed region; time recorded)",
    )
    run.add_argument(
        "--param-budget",
        help="size every model to this many non-embedding parameters (within 5%%) by its MLP width, "
        "e.g. 2e6 or 2M",
    )
    run.add_argument(
        "--isolation",
        choices=["process", "none"],
        help="one process per cell (default) or none, for debugging",
    )
    run.add_argument(
        "--executor",
        choices=["local", "ray", "slurm"],
        help="local (default): one cell at a time here; ray: cells as Ray tasks (RAY_ADDRESS or a local "
        "Ray); slurm: each model's cells as a Slurm job-array task (the [slurm] table, --slurm-* flags)",
    )
    run.add_argument(
        "--ray-cpus-per-cell", type=int, help="CPUs each Ray task reserves (default: all of a node's)"
    )
    _add_slurm_arguments(run)
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: only cells not yet done")
    run.add_argument("--retry-failed", action="store_true", help="with --resume, also re-run failed cells")
    run.add_argument(
        "--strict", action="store_true", help="exit 1 unless every cell finished ok (or skipped)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="write results only, no REPORT.md or plots")


# --slurm-FIELD flags: the common fields of the sweep's [slurm] table (bench/spec/config.py, SlurmSettings).
SLURM_FLAGS = {
    "partition": (str, "partition to submit to (default: the cluster's)"),
    "account": (str, "account to charge"),
    "qos": (str, "quality of service"),
    "gpus_per_cell": (int, "GPUs per cell (default: 1 on CUDA cells, 0 on CPU cells)"),
    "cpus_per_cell": (int, "CPUs per cell (default: the sweep's threads, else 4 on CUDA cells, 1 on CPU)"),
    "mem_gb": (float, "memory per cell in GB (default: the partition's)"),
    "array_parallelism": (int, "at most this many of the sweep's tasks at once (default: no cap)"),
}


def _slurm_flag(field: str) -> str:
    return "--slurm-" + field.replace("_", "-")


def _add_slurm_arguments(run: argparse.ArgumentParser) -> None:
    for field, (kind, text) in SLURM_FLAGS.items():
        run.add_argument(_slurm_flag(field), dest=f"slurm_{field}", type=kind, help=text)


def _slurm_overrides(args: argparse.Namespace) -> dict:
    """The --slurm-* flags given, as [slurm] fields; a number out of range names its flag."""
    given = {f: getattr(args, f"slurm_{f}") for f in SLURM_FLAGS if getattr(args, f"slurm_{f}") is not None}
    for field, value in given.items():
        floor = 0 if field == "gpus_per_cell" else 1
        if SLURM_FLAGS[field][0] is not str and not value >= floor:
            raise BenchError(f"{_slurm_flag(field)} must be >= {floor}, got {value}")
        if SLURM_FLAGS[field][0] is str and not value.strip():
            raise BenchError(f"{_slurm_flag(field)} is empty; leave the flag out for the cluster's default")
    return given


def _default_device(args: argparse.Namespace) -> str:
    """The device the default sweep is chosen for. On Slurm, the GPUs are the compute nodes', which a
    login node may lack."""
    from bench.running.environment import resolve_device

    if args.executor == "slurm" and (args.device == "cuda" or (args.slurm_gpus_per_cell or 0) > 0):
        return "cuda"
    return resolve_device(args.device or "auto")


def _resumed_spec(run_dir: Path):
    path = run_dir / "spec.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"--resume: {str(path)!r} cannot be read ({err}); start a new run instead") from None
    return parse_spec(data, str(path))


def _check_flags(args: argparse.Namespace) -> None:
    if args.retry_failed and not args.resume:
        raise BenchError("--retry-failed re-runs failed cells of a run: give it with --resume RUN_DIR")
    for flag, value in (("--ray-cpus-per-cell", args.ray_cpus_per_cell), ("--train-len", args.train_len)):
        if value is not None and value < 1:
            raise BenchError(f"{flag} must be >= 1, got {value}")


def spec_from_args(args: argparse.Namespace):
    """The sweep the command line asks for: a file, a preset, a resumed run's spec or the default, with
    the flags laid over it, validated as a whole."""
    _check_flags(args)
    if args.spec and args.preset:
        raise BenchError("give a sweep file or --preset, not both")
    if args.spec:
        spec = load_spec(args.spec)
    elif args.preset:
        spec = preset_spec(args.preset)
    elif args.resume and Path(args.resume).is_dir() and (Path(args.resume) / "spec.json").exists():
        spec = _resumed_spec(Path(args.resume))
    else:
        spec = default_spec(_default_device(args))
    data = spec.model_dump(exclude_unset=False)
    models, tasks = _listed("--models", args.models), _listed("--tasks", args.tasks)
    modes = _listed("--modes", args.modes)
    overrides = {
        "models": models,
        "seq_lens": _ints("--seq-lens", args.seq_lens) if args.seq_lens else None,
        "batch_sizes": _ints("--batch-sizes", args.batch_sizes) if args.batch_sizes else None,
        "dtypes": _listed("--dtypes", args.dtypes),
        "modes": modes,
        "device": args.device,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "name": args.name,
        "isolation": args.isolation,
        "timeout_s": args.timeout,
        "threads": args.threads,
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "vocab_size": args.vocab_size,
        "rounds": args.rounds,
        "param_budget": args.param_budget,
        "compile": args.compile,
        "tasks": _tasks(spec, tasks) if tasks else None,
        "executor": args.executor,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    slurm_given = _slurm_overrides(args)
    if slurm_given:
        data["slurm"] = {**data["slurm"], **slurm_given}
    if args.train_len is not None:
        data["accuracy"] = {**data["accuracy"], "train_len": args.train_len}
        given["train_len"] = args.train_len
    data.update({k: v for k, v in given.items() if k != "train_len"})
    if data.get("models") is None:
        data.pop("models")
    final_modes = data["modes"]
    if tasks and ACCURACY_MODE not in final_modes:
        raise BenchError("--tasks needs 'accuracy' among the modes (e.g. --modes accuracy)")
    if args.train_len is not None and ACCURACY_MODE not in final_modes:
        raise BenchError("--train-len sets the accuracy cells' training length; the modes have no 'accuracy'")
    if args.seq_lens and not any(m in TIMING_MODES for m in final_modes):
        raise BenchError(
            "--seq-lens sets the timing cells' lengths and this sweep has only accuracy cells; "
            "their training length is --train-len"
        )
    if not args.spec and not args.name and not args.resume and set(given) & set(SHAPING_FLAGS):
        data["name"] = "sweep"  # no longer the packaged sweep: do not report it under that name
    spec = parse_spec(data, "command line" if not args.spec else args.spec)
    if args.ray_cpus_per_cell is not None and spec.executor != "ray":
        raise BenchError("--ray-cpus-per-cell applies to --executor ray only")
    if slurm_given and spec.executor != "slurm":
        raise BenchError(f"{_slurm_flag(next(iter(slurm_given)))} applies to --executor slurm only")
    if spec.executor != "slurm":  # on Slurm the cells' cores are the compute nodes', not this machine's
        _check_threads(spec)
    return spec


def _check_threads(spec) -> None:
    cores = os.cpu_count() or 1
    for where, threads in (("threads", spec.threads), ("[accuracy] threads", spec.accuracy.threads)):
        if threads is not None and threads > cores:
            raise BenchError(f"{where} = {threads} is more than the {cores} CPU cores here")


def run(args: argparse.Namespace) -> int:
    from bench.analysis.report import write_report
    from bench.running.sweep import Interrupted, new_run_dir, run_sweep

    spec = spec_from_args(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "spec.json").is_file():
            raise BenchError(f"--resume: {str(run_dir)!r} is not a run directory (no spec.json)")
    else:
        run_dir = new_run_dir(spec, args.out or spec.out)
    command = shlex.join(["python", "-m", "bench", *sys.argv[1:]])
    try:
        outcome = run_sweep(
            spec,
            run_dir,
            resume=bool(args.resume),
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
            command=command,
            executor=spec.executor,
            ray_cpus_per_cell=args.ray_cpus_per_cell,
        )
    except Interrupted as stop:
        saved = (run_dir / "results.jsonl").exists()
        print(
            f"stopped by {stop}: the finished cells are saved in {run_dir}; finish the run with: "
            f"python -m bench run --resume {shlex.quote(str(run_dir))}"
            if saved
            else f"stopped by {stop} before any cell finished",
            file=sys.stderr,
        )
        return 128 + stop.signum
    print(f"results: {run_dir / 'results.jsonl'}")
    if not args.no_report:
        print(f"report:  {write_report(run_dir)}")
    statuses = outcome.statuses
    failed = {k: v for k, v in statuses.items() if k not in ("ok", "skipped")}
    summary = ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
    if not statuses.get("ok"):
        print(f"no cell finished ok ({summary})", file=sys.stderr)
        return EXIT_CELLS_FAILED
    if args.strict and failed:
        print(f"--strict: not every cell finished ok ({summary})", file=sys.stderr)
        return EXIT_CELLS_FAILED
    return 0
