"""``python -m bench run``: run a sweep and write its report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.spec.config import ACCURACY_MODE, PRESETS, default_spec, load_spec, parse_spec, preset_spec

HELP = "run a sweep (default: a small CPU sweep, or 1K-16K tokens on CUDA)"


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated integers, got {text!r}") from None


def names(text: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def _tasks(spec, text: str) -> list:
    """--tasks a,b: a task the spec already lists keeps its args there; any other gets its defaults."""
    listed = {t.display: t for t in spec.tasks}
    return [listed[n].model_dump() if n in listed else {"name": n} for n in names(text)]


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("spec", nargs="?", help="sweep file (TOML)")
    run.add_argument("--models", help="comma-separated names or package.module:factory strings")
    run.add_argument("--seq-lens", help="e.g. 256,1024")
    run.add_argument("--batch-sizes", help="e.g. 1,4")
    run.add_argument("--dtypes", help="float32, bfloat16, float16, float64")
    run.add_argument("--modes", help="train, prefill, decode, accuracy")
    run.add_argument("--tasks", help="accuracy tasks, e.g. mqar,niah-pk (see bench/tasks)")
    run.add_argument(
        "--preset",
        help="a packaged sweep as the base spec: "
        + "; ".join(f"'{name}'" for name in sorted(PRESETS))
        + " (see bench/spec/presets)",
    )
    run.add_argument("--device", choices=["auto", "cpu", "cuda"])
    run.add_argument("--out", help="run directory (default runs/<name>-<timestamp>)")
    run.add_argument("--name", help="sweep name")
    run.add_argument("--repeats", type=int)
    run.add_argument("--warmup", type=int)
    run.add_argument("--threads", type=int, help="CPU threads for torch")
    run.add_argument("--d-model", type=int)
    run.add_argument("--n-layers", type=int)
    run.add_argument("--vocab-size", type=int)
    run.add_argument("--timeout", type=float, help="seconds per cell")
    run.add_argument(
        "--rounds",
        type=int,
        help="measure every cell this many times, each in a fresh process, in a new seeded order per round "
        "(what `compare` counts as independent units)",
    )
    run.add_argument(
        "--param-budget",
        help="size every model to this many non-embedding parameters (within 5%%) by its MLP width, "
        "e.g. 2e6 or 2M",
    )
    run.add_argument(
        "--isolation", choices=["process", "none"], help="one process per cell (default) or none"
    )
    run.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: one cell at a time here; ray: cells as Ray tasks (RAY_ADDRESS or a local Ray)",
    )
    run.add_argument(
        "--ray-cpus-per-cell", type=int, help="CPUs each Ray task reserves (default: all of a node's)"
    )
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: only cells not yet done")
    run.add_argument("--retry-failed", action="store_true", help="with --resume, also re-run failed cells")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--no-report", action="store_true")


def spec_from_args(args: argparse.Namespace):
    """The sweep the command line asks for: a file, a preset, a resumed run's spec or the default, with
    the flags laid over it, validated as a whole."""
    from bench.running.environment import resolve_device

    if args.spec and args.preset:
        raise BenchError("give a sweep file or --preset, not both")
    if args.spec:
        spec = load_spec(args.spec)
    elif args.preset:
        spec = preset_spec(args.preset)
    elif args.resume and (Path(args.resume) / "spec.json").exists():
        spec = parse_spec(json.loads((Path(args.resume) / "spec.json").read_text()), "spec.json")
    else:
        spec = default_spec(resolve_device(args.device or "auto"))
    data = spec.model_dump(exclude_unset=False)
    overrides = {
        "models": names(args.models) if args.models else None,
        "seq_lens": _ints("--seq-lens", args.seq_lens) if args.seq_lens else None,
        "batch_sizes": _ints("--batch-sizes", args.batch_sizes) if args.batch_sizes else None,
        "dtypes": names(args.dtypes) if args.dtypes else None,
        "modes": names(args.modes) if args.modes else None,
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
        "tasks": _tasks(spec, args.tasks) if args.tasks else None,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("models") is None:
        data.pop("models")
    if args.tasks and ACCURACY_MODE not in data["modes"]:
        raise BenchError("--tasks needs 'accuracy' among the modes (e.g. --modes accuracy)")
    return parse_spec(data, "command line" if not args.spec else args.spec)


def run(args: argparse.Namespace) -> int:
    from bench.analysis.report import write_report
    from bench.running.sweep import new_run_dir, run_sweep

    spec = spec_from_args(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise BenchError(f"--resume: {str(run_dir)!r} is not a run directory")
    else:
        run_dir = new_run_dir(spec, args.out or spec.out)
    command = shlex.join(["python", "-m", "bench", *sys.argv[1:]])
    run_sweep(
        spec,
        run_dir,
        resume=bool(args.resume),
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        command=command,
        executor=args.executor,
        ray_cpus_per_cell=args.ray_cpus_per_cell,
    )
    print(f"results: {run_dir / 'results.jsonl'}")
    if not args.no_report:
        print(f"report:  {write_report(run_dir)}")
    return 0
