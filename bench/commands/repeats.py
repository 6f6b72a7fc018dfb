"""A flag given twice is a mistake, not a choice: argparse keeps the last value silently, so that
``--warmup 20 ... --warmup 1`` would run with 1 and never say so. Every option of every command is
stored by these actions instead, which note a repeat; ``bench.cli`` refuses it in one line."""

from __future__ import annotations

import argparse

SEEN = "_options_seen"
REPEATED = "_options_repeated"


def _note(namespace: argparse.Namespace, dest: str, option: str | None, text: str) -> None:
    if option is None:  # a positional argument cannot be repeated
        return
    seen = namespace.__dict__.setdefault(SEEN, {})
    if dest in seen:
        namespace.__dict__.setdefault(REPEATED, []).append(
            f"{option} given twice ({seen[dest]}, then {text})"
        )
    seen[dest] = text


class StoreOnce(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        _note(namespace, self.dest, option_string, repr(values))
        setattr(namespace, self.dest, values)


class StoreTrueOnce(argparse.Action):
    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(
            option_strings, dest, nargs=0, const=True, default=default, required=required, help=help
        )

    def __call__(self, parser, namespace, values, option_string=None):
        _note(namespace, self.dest, option_string, None)
        setattr(namespace, self.dest, True)


def refuse_repeats(parser: argparse.ArgumentParser) -> None:
    """Make the options ``parser`` is given from now on note a repeat."""
    parser.register("action", None, StoreOnce)
    parser.register("action", "store", StoreOnce)
    parser.register("action", "store_true", StoreTrueOnce)


def repeated(args: argparse.Namespace) -> str | None:
    """The first repeated option, in words, or None."""
    found = getattr(args, REPEATED, None)
    return found[0] if found else None
