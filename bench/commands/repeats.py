"""A flag given twice with two values is a mistake, not a choice: argparse keeps the last value silently,
so that ``--warmup 20 ... --warmup 1`` would run with 1 and never say so. Every option that takes a value
is stored by this action instead, which notes such a repeat; ``bench.cli`` refuses it in one line. The
same value twice (a script that repeats a default) changes nothing and passes."""

from __future__ import annotations

import argparse

SEEN = "_options_seen"
REPEATED = "_options_repeated"


class StoreOnce(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string is not None:  # a positional argument cannot be repeated
            seen = namespace.__dict__.setdefault(SEEN, {})
            if self.dest in seen and seen[self.dest] != values:
                repeat = f"{option_string} given twice ({seen[self.dest]!r}, then {values!r})"
                namespace.__dict__.setdefault(REPEATED, []).append(repeat)
            seen[self.dest] = values
        setattr(namespace, self.dest, values)


def refuse_repeats(parser: argparse.ArgumentParser) -> None:
    """Make the options ``parser`` is given from now on note a repeat with another value."""
    parser.register("action", None, StoreOnce)
    parser.register("action", "store", StoreOnce)


def repeated(args: argparse.Namespace) -> str | None:
    """The first option given twice with different values, in words, or None."""
    found = getattr(args, REPEATED, None)
    return found[0] if found else None
