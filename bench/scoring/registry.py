"""Scorers by name: the built-in ones (every module of this package) and any registered by a plug-in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.registry import SCORERS


def register_scorer(name: str) -> Callable[[Any], Any]:
    """Decorator: ``@register_scorer("distance")`` above a Scorer subclass."""

    def decorate(cls: Any) -> Any:
        cls.name = name
        return SCORERS.register(name)(cls)

    return decorate


def get_scorer(name: str) -> Any:
    """The Scorer class registered as ``name``."""
    return SCORERS.get(name).load()
