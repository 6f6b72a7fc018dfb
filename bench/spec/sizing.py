"""Parameter-matched sweeps: each model sized to a budget of non-embedding parameters.

Papers compare architectures at equal parameters (the Titans paper at 170M to 760M); at one width and
depth the families differ by up to ~2x. The rule every built-in family follows (a family may declare
another knob with ``size_knob=`` at registration): keep d_model, the depth and the mixer as they are, and
solve for the width of the SwiGLU MLP of every block (``mlp_hidden``, a multiple of 8) so that the
non-embedding parameter count lands within ``TOLERANCE`` of the budget. Models are built on the meta
device, so sizing costs no memory and almost no time (a model that cannot be is built for real).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from bench.errors import BenchError
from bench.plugins import build_to_check
from bench.registry import MODELS

TOLERANCE = 0.05
STEP = 8


def non_embedding_params(name: str, kwargs: dict[str, Any]) -> int:
    return build_to_check(name, name, **kwargs).n_params_non_embedding()


def size_for_budget(name: str, label: str, kwargs: dict[str, Any], budget: int) -> dict[str, Any]:
    """The knob setting that puts model ``name`` (built with ``kwargs``) within 5% of ``budget``
    non-embedding parameters, e.g. {"mlp_hidden": 344}; a BenchError naming the model when none can."""
    knob = MODELS.get(name).get("size_knob") or "mlp_hidden"
    if knob in kwargs:
        raise BenchError(
            f"model {label!r} sets {knob} itself; a param_budget (--param-budget) sizes it, so leave it out"
        )

    def count(value: int) -> int:
        return non_embedding_params(name, {**kwargs, knob: value})

    lo, hi = 1, STEP
    while count(hi) < budget:  # the count grows with the knob: bracket the budget, then bisect
        lo, hi = hi, 2 * hi
        if hi > 1 << 24:
            raise BenchError(
                f"model {label!r} cannot reach a param_budget (--param-budget) of {budget:,} by its {knob}"
            )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < budget else (lo, mid)
    best = min({lo, hi, max(STEP, round(hi / STEP) * STEP)}, key=lambda v: abs(count(v) - budget))
    got = count(best)
    if abs(got - budget) > TOLERANCE * budget:
        smallest = count(1)
        why = f"even with {knob}=1 it has {smallest:,}" if smallest > budget else f"the closest is {got:,}"
        raise BenchError(
            f"model {label!r} cannot be sized to a param_budget (--param-budget) of {budget:,} non-embedding "
            f"parameters (within {TOLERANCE:.0%}) by its {knob}: {why}"
        )
    return {knob: best}


@functools.cache
def _sized(name: str, label: str, kwargs_json: str, budget: int) -> str:
    return json.dumps(size_for_budget(name, label, json.loads(kwargs_json), budget))


def sized(name: str, label: str, kwargs: dict[str, Any], budget: int) -> dict[str, Any]:
    """:func:`size_for_budget`, remembered: a sweep sizes the same model at the same shape once per task,
    learning rate and seed otherwise."""
    return json.loads(_sized(name, label, json.dumps(kwargs, sort_keys=True), budget))
