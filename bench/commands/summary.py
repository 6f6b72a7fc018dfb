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

    runs = [Path(r) for r in args.runs if (Path(r) / RESULTS).is_file()]
    skipped = [r for r in args.runs if Path(r) not in runs]
    if not runs:
        raise BenchError(f"no run directory (a folder with {RESULTS}) among {' '.join(args.runs)}")
    root = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
    root = root if len(runs) > 1 else root.parent
    out = Path(args.out) if args.out else root / "README.md"
    if out.exists() and MARK not in out.read_text(errors="replace"):
        raise BenchError(
            f"--out {str(out)!r} exists and was not written by this command; choose another --out"
        )
    text = summary_markdown([r.resolve() for r in runs], root)
    out.write_text(MARK + "\n\n" + text)
    if skipped:
        print(f"left out (no {RESULTS}): {', '.join(skipped)}")
    print(f"summary: {out}")
    return 0
