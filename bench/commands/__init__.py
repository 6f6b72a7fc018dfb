"""The commands of ``python -m bench``, one module each (as asv's are): ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> exit code``."""

from bench.commands import compare, list_models, report, run, summary, validate

COMMANDS = {
    "run": run,
    "report": report,
    "compare": compare,
    "validate": validate,
    "summary": summary,
    "list": list_models,
}

__all__ = ["COMMANDS"]
