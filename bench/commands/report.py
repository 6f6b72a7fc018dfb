"""``python -m bench report``: rewrite REPORT.md and the plots of a run from its results file.

Exit codes: 0 written; 2 bad input (no results, or none readable; an output folder the write policy
refuses, bench/results/outputs.py); 3 an internal error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BenchError

HELP = "write REPORT.md and plots for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory or results file (its results.jsonl, or e.g. base.jsonl)")
    parser.add_argument(
        "--out",
        help="folder for REPORT.md and its plots (default: the run's folder; for a results file outside a "
        "run, NAME-report beside it)",
    )


def resolve(given: str, out: str | None):
    """(the results file, the folder the report goes to, what claims that folder under the write policy)."""
    from bench.results import RESULTS
    from bench.results.outputs import claim_folder, recognised

    path = Path(given)
    source = path / RESULTS if path.is_dir() else path
    if not source.is_file():
        raise BenchError(f"no results file at {str(source)!r}")
    in_run = source.name == RESULTS and (path.is_dir() or recognised(source.parent))
    if out is not None:
        return source, Path(out), lambda: claim_folder(out, "--out")
    if in_run:  # the run's own folder: only one this harness wrote
        instead = "give --out a new folder for the report"
        return source, source.parent, lambda: claim_folder(source.parent, "report", True, instead)
    folder = source.with_name(f"{source.stem}-report")
    return source, folder, lambda: claim_folder(folder, "--out")


def run(args: argparse.Namespace) -> int:
    from bench.analysis.report import write_report
    from bench.results import load_rows

    source, out, claim = resolve(args.run, args.out)
    rows = load_rows(source)  # what is wrong with the results is said before where the report may go
    print(write_report(out, source, claim(), rows))
    return 0
