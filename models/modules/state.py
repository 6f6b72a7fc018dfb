"""Walking a decoding state: every family's state is tensors inside lists, tuples, dicts, named tuples and
dataclasses (with an explicit ``__dataclass_fields__``, as some hand-written states declare)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """The same structure with ``fn`` applied to every tensor (anything else kept as it is)."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a named tuple
        return type(state)(*(map_state(fn, v) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, v) for v in state)
    fields = getattr(state, "__dataclass_fields__", None)
    if fields is None or isinstance(state, type):
        return state
    # is_dataclass also says True of a plain class that lists its fields by hand: only a real one (its
    # fields are dataclasses.Field) can be rebuilt with replace
    if all(isinstance(f, dataclasses.Field) for f in fields.values()):
        return dataclasses.replace(state, **{f.name: map_state(fn, getattr(state, f.name))
                                            for f in dataclasses.fields(state) if f.init})  # fmt: skip
    copy = object.__new__(type(state))  # a plain class that lists its tensor fields
    copy.__dict__.update(state.__dict__)
    for name in fields:
        setattr(copy, name, map_state(fn, getattr(state, name)))
    return copy


def detach_state(state: Any) -> Any:
    """The state with every tensor detached: carried into the next training window, it passes values but
    no gradients (truncated backpropagation at the window boundary)."""
    return map_state(torch.Tensor.detach, state)
