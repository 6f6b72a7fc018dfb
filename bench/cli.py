"""Command line: ``python -m bench {run,report,list}``.

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


def _spec_from_args(args: argparse.Namespace):
    from bench.config import default_spec, load_spec, parse_spec
    from bench.sweep import resolve_device

    if args.spec:
        spec = load_spec(args.spec)
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
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("models") is None:
        data.pop("models")
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
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: only cells not yet done")
    run.add_argument("--retry-failed", action="store_true", help="with --resume, also re-run failed cells")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--no-report", action="store_true")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="write REPORT.md and plots for a run")
    report.add_argument("run", help="run directory or results.jsonl")
    report.set_defaults(func=cmd_report)

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
