"""How a model family describes itself to whoever runs it: plain data, no harness.

A family module defines one module-level :class:`ModelFamily` per model it offers. A harness finds them by
importing the modules and collecting the instances (titans-bench's registry does), so the model zoo is
usable on its own and the harness never names a family's particulars: it asks the entry which argument
bounds the attention context, what the reference needs, which knob sizes the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.modules.config import ModelConfig


@dataclass(frozen=True)
class ModelFamily:
    """One buildable model.

    Attributes:
        name: the name a user asks for ("titans-mal").
        build: config -> model (a ``LanguageModel`` or anything with its interface).
        config: the family's config class (extends ``ModelConfig``); it validates a build's arguments.
        backends: () -> {backend: True, or the reason it cannot run on this machine}.
        reference: the slow, obviously correct backend every other backend is checked against.
        reference_args: extra arguments the reference build needs (the hybrids' explicit attention).
        context: the argument that bounds what the attention can see ("window", "segment"), or None for a
            model without attention. Its default says what the model sees when nothing is set: a number of
            tokens, or None for the whole sequence (full causal attention).
        size_knob: the argument that sizes the model to a parameter budget without changing its mixer.
    """

    name: str
    build: Callable[[Any], Any]
    config: type[ModelConfig]
    backends: Callable[[], dict[str, bool | str]]
    reference: str | None = None
    reference_args: dict[str, Any] = field(default_factory=dict)
    context: str | None = None
    size_knob: str = "mlp_hidden"

    def __post_init__(self) -> None:
        fields = self.config.model_fields
        for arg in (self.context, self.size_knob, *self.reference_args):
            if arg is not None and arg not in fields:
                raise ValueError(
                    f"model family {self.name!r}: {arg!r} is not a field of {self.config.__name__}"
                )

    def context_default(self) -> int | None:
        """The attention context when none is set (None: everything, or no attention at all)."""
        return None if self.context is None else self.config.model_fields[self.context].default
