"""``python -m bench list``: the registered models and which of their backends can run here."""

from __future__ import annotations

import argparse

HELP = "registered models and the backends available here"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from bench.registry import describe_backends, list_models

    for name in list_models():
        backends = describe_backends(name)
        text = ", ".join(f"{b}" if ok is True else f"{b} (unavailable: {ok})" for b, ok in backends.items())
        print(f"{name:18s} {text or '(backends not declared)'}")
    return 0
