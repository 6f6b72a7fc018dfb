"""``python -m bench compare BASE NEW``: the regressions between two runs; exit 1 if there are any."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BenchError

HELP = "compare two runs; exit 1 on a significant regression"


def add_arguments(cmp: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    from bench.analysis.compare import compare_runs, to_markdown

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
