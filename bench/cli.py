"""Command line: python -m bench {run,report,compare,validate,list}.

Every user mistake ends as one line on stderr and exit code 2; results already written stay as they are.
An internal error is one line too, with exit code 3. Each command's module documents its other codes.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from bench.commands import COMMANDS
from bench.commands.repeats import refuse_repeats, repeated
from bench.errors import BenchError

EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        parser_of_command = sub.add_parser(name, help=command.HELP)
        refuse_repeats(parser_of_command)
        command.add_arguments(parser_of_command)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # a user reads one line, not the source line that warned
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given, for the manifest
    twice = repeated(args)
    if twice:
        print(f"error: {twice}; give it once", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return COMMANDS[args.command].run(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug of ours: one line, a distinct code, never mistaken for a verdict
        where = traceback.extract_tb(err.__traceback__)[-1]
        at = f"{where.filename}:{where.lineno}"
        print(f"internal error: {type(err).__name__}: {err} (at {at}); please report it", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
