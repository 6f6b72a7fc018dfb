"""Command line: ``python -m bench {run,report,compare,validate,list}``.

Every user mistake ends as one line on stderr and exit code 2; results already written stay as they are.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bench.errors import BenchError

EXIT_BAD_INPUT = 2


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _tasks(spec, text: str) -> list:
    """--tasks a,b: a task the spec already lists keeps its args there; any other gets its defaults."""
    listed = {t.display: t for t in spec.tasks}
    return [listed[n].model_dump() if n in listed else {"name": n} for n in _names(text)]


def _spec_from_args(args: argparse.Namespace):
    from bench.config import default_spec, load_spec, parse_spec, preset_spec
    from bench.sweep import resolve_device

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
        "models": _names(args.models) if args.models else None,
        "seq_lens": _ints("--seq-lens", args.seq_lens) if args.seq_lens else None,
        "batch_sizes": _ints("--batch-sizes", args.batch_sizes) if args.batch_sizes else None,
        "dtypes": _names(args.dtypes) if args.dtypes else None,
        "modes": _names(args.modes) if args.modes else None,
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
        "tasks": _tasks(spec, args.tasks) if args.tasks else None,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("models") is None:
        data.pop("models")
    if args.tasks and "accuracy" not in data["modes"]:
        raise BenchError("--tasks needs 'accuracy' among the modes (e.g. --modes accuracy)")
    return parse_spec(data, "command line" if not args.spec else args.spec)


def cmd_run(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.sweep import new_run_dir, run_sweep

    spec = _spec_from_args(args)
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


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.results import results_path

    path = results_path(args.run)
    if not path.exists():
        raise BenchError(f"no results file at {str(path)!r}")
    print(write_report(path.parent))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bench.validate import run_validation

    run_dir, ok = run_validation(
        _names(args.models) if args.models else None, args.device, args.seq_len, args.out
    )
    print(f"saved: {run_dir / 'VALIDATE.md'}")
    return 0 if ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare_runs, to_markdown

    for name, value in (
        ("--threshold", args.threshold),
        ("--mem-threshold", args.mem_threshold),
        ("--acc-threshold", args.acc_threshold),
    ):
        if value < 0:
            raise BenchError(f"{name} must be >= 0, got {value}")
    if not 0 < args.alpha < 1:
        raise BenchError(f"--alpha must be in (0, 1), got {args.alpha}")
    comp = compare_runs(
        args.base, args.new, args.threshold, args.alpha, args.mem_threshold, args.acc_threshold
    )
    text = to_markdown(comp, show_unchanged=args.all)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 1 if comp.regressions else 0


def cmd_list(args: argparse.Namespace) -> int:
    from bench.registry import describe_backends, list_models

    for name in list_models():
        backends = describe_backends(name)
        text = ", ".join(f"{b}" if ok is True else f"{b} (unavailable: {ok})" for b, ok in backends.items())
        print(f"{name:18s} {text or '(backends not declared)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep (default: a small CPU sweep, or 1K-16K tokens on CUDA)")
    run.add_argument("spec", nargs="?", help="sweep file (TOML)")
    run.add_argument("--models", help="comma-separated names or package.module:factory strings")
    run.add_argument("--seq-lens", help="e.g. 256,1024")
    run.add_argument("--batch-sizes", help="e.g. 1,4")
    run.add_argument("--dtypes", help="float32, bfloat16, float16, float64")
    run.add_argument("--modes", help="train, prefill, decode, accuracy")
    run.add_argument("--tasks", help="accuracy tasks, e.g. mqar,niah-pk (see bench/tasks)")
    run.add_argument(
        "--preset",
        help="a packaged sweep as the base spec: 'paper' = the GPU accuracy sweep (larger); 'cpu-accuracy' = "
        "the default run's recall tasks with equal training steps for every model",
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
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="write REPORT.md and plots for a run")
    report.add_argument("run", help="run directory or results.jsonl")
    report.set_defaults(func=cmd_report)

    val = sub.add_parser("validate", help="check every backend of every model against its slow reference")
    val.add_argument("--models", help="comma-separated names (default: all registered)")
    val.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    val.add_argument("--seq-len", type=int, default=100, help="not a multiple of the chunk sizes, on purpose")
    val.add_argument("--out", help="directory for VALIDATE.md and validate.json")
    val.set_defaults(func=cmd_validate)

    cmp = sub.add_parser("compare", help="compare two runs; exit 1 on a significant regression")
    cmp.add_argument("base", help="run directory or results.jsonl of the baseline")
    cmp.add_argument("new", help="run directory or results.jsonl to check")
    cmp.add_argument("--threshold", type=float, default=0.10, help="timing ratio that counts (default 0.10)")
    cmp.add_argument("--alpha", type=float, default=0.01, help="Mann-Whitney U significance level")
    cmp.add_argument(
        "--mem-threshold", type=float, default=0.10, help="relative memory/state growth that counts"
    )
    cmp.add_argument("--acc-threshold", type=float, default=0.05, help="absolute accuracy drop that counts")
    cmp.add_argument("--markdown", help="also write the markdown table here (e.g. for a PR comment)")
    cmp.add_argument("--all", action="store_true", help="list unchanged metrics too")
    cmp.set_defaults(func=cmd_compare)

    lst = sub.add_parser("list", help="registered models and the backends available here")
    lst.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
