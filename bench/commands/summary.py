"""``python -m bench summary RUN [RUN ...]``: one page that answers the question across runs (the committed
reports: ``python -m bench summary reports/*`` writes ``reports/README.md``).

Arguments that are not run directories (a report's markdown file, a validation folder) are left out and
listed. Exit codes: 0 written; 2 bad input (no run among the arguments, or an output file this command did
not write); 3 an internal error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.errors import BenchError

HELP = "one page that ranks the models on every question the given runs answer"
MARK = "<!-- written by python -m bench summary: regenerate it rather than edit it -->"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (others are left out, and listed)")
    parser.add_argument("--out", help="where to write the page (default: README.md beside the runs)")


def run(args: argparse.Namespace) -> int:
    from bench.analysis.summary import summary_markdown
    from bench.results import RESULTS
    from bench.results.outputs import check_output_file, write_output_file

    runs = [Path(r) for r in args.runs if (Path(r) / RESULTS).is_file()]
    skipped = [r for r in args.runs if Path(r) not in runs]
    if not runs:
        raise BenchError(f"no run directory (a folder with {RESULTS}) among {' '.join(args.runs)}")
    root = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
    root = root if len(runs) > 1 else root.parent
    out = Path(args.out) if args.out else root / "README.md"
    # The write policy (bench/results/outputs.py): never onto a run, never over a page it did not write.
    inputs = {
        **{f"the run {str(r)!r}": r for r in runs},
        **{f"{str(r)!r}'s results": r / RESULTS for r in runs},
    }
    check_output_file(out, "--out", inputs, MARK)
    text = summary_markdown([r.resolve() for r in runs], root)
    write_output_file(out, "\n" + text, MARK)
    if skipped:
        print(f"left out (no {RESULTS}): {', '.join(skipped)}")
    print(f"summary: {out}")
    return 0
