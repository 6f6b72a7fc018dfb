"""The sections of REPORT.md that render accuracy records, one module each, registered by name. A scorer
(bench/scoring) names the section its records go to (``Scorer.section``); a new kind of scoring brings its
section along (a module here, or a plug-in registering one with ``register_section``).

A section is ``section(rows, run_dir) -> markdown lines``: ``rows`` are the typed records of one section
(bench.results.AccuracyRow), and the section writes its plots into ``run_dir``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.registry import SECTIONS

Section = Callable[[list[Any], Path], list[str]]


def register_section(name: str) -> Callable[[Section], Section]:
    """Decorator: ``@register_section("recall")`` above a section function."""
    return SECTIONS.register(name)


def get_section(name: str) -> Section:
    return SECTIONS.get(name).load()


__all__ = ["Section", "get_section", "register_section"]
