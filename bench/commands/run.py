"""``python -m bench run``: run a sweep and write its report.

Exit codes: 0 the sweep finished and at least one cell measured ok (cells that ran out of memory,
crashed, timed out or diverged are results, recorded as such); 1 no cell finished ok, or, with
``--strict``, any cell did not; 2 bad input (nothing was run or written); 3 an internal error; 130 / 143
stopped by SIGINT / SIGTERM (finished cells are kept, and the command that resumes the run is printed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.spec.config import PRESETS, default_spec, load_spec, parse_spec, preset_spec
from bench.spec.flags import add_sweep_flags, apply_sweep_flags, shaping

HELP = "run a sweep (default: a small CPU sweep, or 1K-16K tokens on CUDA)"
EXIT_CELLS_FAILED = 1


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("spec", nargs="?", help="sweep file (TOML); default: the packaged default sweep")
    run.add_argument(
        "--preset",
        help="a packaged sweep as the base spec: "
        + ", ".join(f"'{name}'" for name in sorted(PRESETS))
        + " (see bench/spec/presets)",
    )
    add_sweep_flags(run)  # every flag that sets a sweep field, declared once in bench/spec/config.py
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: only cells not yet done")
    run.add_argument("--retry-failed", action="store_true", help="with --resume, also re-run failed cells")
    run.add_argument(
        "--strict", action="store_true", help="exit 1 unless every cell finished ok (or skipped)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="write results only, no REPORT.md or plots")


def _resumed_spec(run_dir: Path):
    path = run_dir / "spec.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise BenchError(f"--resume: {str(path)!r} cannot be read ({err}); start a new run instead") from None
    return parse_spec(data, str(path))


def spec_from_args(args: argparse.Namespace):
    """The sweep the command line asks for: a file, a preset, a resumed run's spec or the default, with
    the flags laid over it, validated as a whole by the schema."""
    from bench.device import resolve_device

    if args.retry_failed and not args.resume:
        raise BenchError("--retry-failed re-runs failed cells of a run: give it with --resume RUN_DIR")
    if args.spec and args.preset:
        raise BenchError("give a sweep file or --preset, not both")
    if args.spec:
        spec, source = load_spec(args.spec), args.spec
    elif args.preset:
        spec, source = preset_spec(args.preset), f"--preset {args.preset}"
    elif args.resume and Path(args.resume).is_dir() and (Path(args.resume) / "spec.json").exists():
        spec, source = _resumed_spec(Path(args.resume)), "--resume"
    else:
        device = getattr(args, "sweep__device", None) or "auto"
        gpus = getattr(args, "sweep__slurm__gpus_per_cell", None)
        on_slurm = getattr(args, "sweep__executor", None) == "slurm"
        if on_slurm and (device == "cuda" or (gpus or "0") not in ("0", "")):
            device = "cuda"  # on Slurm the GPUs are the compute nodes', which a login node may lack
        else:
            device = resolve_device(device)
        spec, source = default_spec(device), "the default sweep"
    data, given = apply_sweep_flags(args, spec.model_dump(exclude_unset=False))
    if data.get("models") is None:
        data.pop("models")
    if not args.spec and "name" not in given and not args.resume and shaping(given):
        data["name"] = "sweep"  # no longer the packaged sweep: do not report it under that name
    return parse_spec(data, source, given)


def run(args: argparse.Namespace) -> int:
    from bench.analysis.report import write_report
    from bench.running.sweep import Interrupted, new_run_dir, run_sweep

    out = getattr(args, "sweep__out", None)
    if args.resume and out is not None and Path(out).resolve() != Path(args.resume).resolve():
        raise BenchError(
            f"--out {out!r} is not the run being resumed ({args.resume!r}): a resumed run stays in its "
            "folder; leave --out out"
        )
    spec = spec_from_args(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "spec.json").is_file():
            raise BenchError(f"--resume: {str(run_dir)!r} is not a run directory (no spec.json)")
    else:
        run_dir = new_run_dir(spec, spec.out, report=not args.no_report)
    command = shlex.join(["python", "-m", "bench", *getattr(args, "argv", sys.argv[1:])])
    try:
        outcome = run_sweep(
            spec,
            run_dir,
            resume=bool(args.resume),
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
            command=command,
            report=not args.no_report,
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
