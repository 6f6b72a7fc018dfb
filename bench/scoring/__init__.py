"""How a trained model is scored on a task's held-out examples: one scorer per kind of scoring, each in a
file of its own, registered by name (``@register_scorer``) and declared by the tasks that use it.

- ``distance`` (recall: MQAR, S-NIAH): accuracy of the greedy predictions, by the distance between the
  evidence and the question, and past the training length;
- ``position`` (state tracking): the same by position, and the longest prefix still 90% right;
- ``loss`` (language modelling): bits per byte by position, and what the context beyond the training
  length is worth.

A new kind of scoring is one new file here (or in a plug-in): a :class:`~bench.scoring.base.Scorer`
subclass, and the report section it names (``bench.analysis.sections``).
"""

from bench.scoring.base import (
    IGNORE,
    NO_DISTANCE,
    Column,
    Examples,
    Inference,
    Scorer,
    Validation,
)
from bench.scoring.registry import get_scorer, register_scorer

__all__ = [
    "IGNORE",
    "NO_DISTANCE",
    "Column",
    "Examples",
    "Inference",
    "Scorer",
    "Validation",
    "get_scorer",
    "register_scorer",
]
