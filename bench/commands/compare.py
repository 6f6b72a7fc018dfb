"""``python -m bench compare BASE NEW``: the regressions between two runs.

Exit codes: 0 every metric passed (for a timing: a slowdown beyond the threshold is ruled out); 1 a
regression; 2 bad input or a comparison that cannot decide by its design (too few units to reach alpha,
no cells in common); 3 an internal error; 4 no regression shown, but at least one timing inconclusive:
the data neither show nor rule out a regression, and more rounds would tell.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bench.errors import BenchError

HELP = (
    "compare two runs: exit 0 all passed, 1 a regression, 2 bad input or a comparison that cannot decide, "
    "4 inconclusive (measure more rounds)"
)
EXIT_INCONCLUSIVE = 4


def add_arguments(cmp: argparse.ArgumentParser) -> None:
    cmp.add_argument("base", help="run directory or results.jsonl of the baseline")
    cmp.add_argument("new", help="run directory or results.jsonl to check")
    cmp.add_argument(
        "--threshold",
        type=float,
        default=0.10,
        help="relative change of the median time that counts (%(default)s)",
    )
    cmp.add_argument(
        "--alpha", type=float, default=0.01, help="Mann-Whitney U significance level (%(default)s)"
    )
    cmp.add_argument(
        "--mem-threshold",
        type=float,
        default=0.10,
        help="relative memory/state growth that counts (%(default)s)",
    )
    cmp.add_argument(
        "--mem-floor",
        type=float,
        default=1.0,
        help="MiB: a smaller change of peak memory never counts, whatever its ratio (%(default)s)",
    )
    cmp.add_argument(
        "--acc-threshold", type=float, default=0.05, help="absolute accuracy drop that counts (%(default)s)"
    )
    cmp.add_argument(
        "--bpb-threshold",
        type=float,
        default=0.05,
        help="absolute rise of a language-modelling cell's bits per byte that counts (%(default)s)",
    )
    cmp.add_argument(
        "--min-common",
        type=int,
        default=1,
        help="fewest cells the runs must share, else exit 2: a changed configuration never passes "
        "(%(default)s)",
    )
    cmp.add_argument("--markdown", help="also write the markdown table here (e.g. for a PR comment)")
    cmp.add_argument("--all", action="store_true", help="list unchanged metrics too")


def run(args: argparse.Namespace) -> int:
    from bench.analysis.compare import compare_runs, to_markdown
    from bench.results.outputs import write_output_file

    for name, value in (
        ("--threshold", args.threshold),
        ("--mem-threshold", args.mem_threshold),
        ("--acc-threshold", args.acc_threshold),
        ("--mem-floor", args.mem_floor),
        ("--bpb-threshold", args.bpb_threshold),
    ):
        if not value >= 0 or math.isinf(value):  # NaN fails every comparison: it would flag nothing
            raise BenchError(f"{name} must be a finite number >= 0, got {value}")
    if not 0 < args.alpha < 1:
        raise BenchError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.min_common < 1:
        raise BenchError(f"--min-common must be >= 1, got {args.min_common}")
    markdown = check_markdown(args) if args.markdown else None
    comp = compare_runs(
        args.base,
        args.new,
        args.threshold,
        args.alpha,
        args.mem_threshold,
        args.acc_threshold,
        bpb_threshold=args.bpb_threshold,
        mem_floor=args.mem_floor * 2**20,
    )
    text = to_markdown(comp, show_unchanged=args.all, alpha=args.alpha)
    print(text)
    if markdown is not None:
        write_output_file(markdown, text, MARK)
    if comp.common < args.min_common:
        raise BenchError(
            f"the runs share {comp.common} cell(s), fewer than --min-common {args.min_common}; "
            f"{len(comp.only_base)} only in BASE, {len(comp.only_new)} only in NEW (listed above)"
        )
    if not comp.measured:
        raise BenchError(
            f"nothing was compared: none of the {comp.common} cell(s) the runs share finished ok in both "
            f"(e.g. {comp.changes[0].key}: {comp.changes[0].metric})"
        )
    if comp.unsampled:
        raise BenchError(
            f"{len(comp.unsampled)} timing cell(s) finished ok but have no timing samples to compare, e.g. "
            f"{comp.unsampled[0]}: were they measured by another version?"
        )
    if comp.underpowered:
        raise BenchError(
            f"{len(comp.underpowered)} timing comparison(s) cannot reach p < {args.alpha:g} with their "
            f"samples, e.g. {comp.underpowered[0]}: measure more rounds (bench run --rounds) or repeats, "
            "or raise --alpha"
        )
    if comp.regressions:
        return 1
    if comp.inconclusive:
        print(
            f"inconclusive: {len(comp.inconclusive)} timing(s) neither show nor rule out a regression "
            f"beyond {args.threshold:g}; measure more rounds (bench run --rounds)",
            file=sys.stderr,
        )
        return EXIT_INCONCLUSIVE
    return 0


# The first line of every markdown file compare writes (hidden when rendered): how compare knows a file is
# its own and may be replaced, and any other file is not.
MARK = "<!-- python -m bench compare -->"


def check_markdown(args: argparse.Namespace) -> Path:
    """--markdown's file, checked before the comparison: never one of the inputs, never a file compare
    did not write (bench/results/outputs.py)."""
    from bench.results import results_path
    from bench.results.outputs import check_output_file

    inputs = {}
    for side, given in (("BASE", args.base), ("NEW", args.new)):
        inputs[side] = Path(given)
        inputs[f"{side}'s results file"] = results_path(given)
    return check_output_file(args.markdown, "--markdown", inputs, MARK)
