"""``python -m bench report``: rewrite REPORT.md and the plots of a run from its results file.

Exit codes: 0 written; 2 bad input (no results, or none readable); 3 an internal error.
"""

from __future__ import annotations

import argparse

from bench.errors import BenchError

HELP = "write REPORT.md and plots for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory or results.jsonl")


def run(args: argparse.Namespace) -> int:
    from bench.analysis.report import write_report
    from bench.results import results_path

    path = results_path(args.run)
    if not path.exists():
        raise BenchError(f"no results file at {str(path)!r}")
    print(write_report(path.parent))
    return 0
