"""What every synthetic task shares: a strict config, a seeded generator, a scorer, and the bookkeeping
that keeps training data apart from the data a model is evaluated on.

A task's examples are (inputs, targets), both LongTensor [n, T]. ``targets[i, t]`` is the token the model
must predict after reading ``inputs[i, : t + 1]``, or ``IGNORE`` where nothing is asked: loss and accuracy
only ever look at the asked positions.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from bench.errors import BenchError

IGNORE = -100  # cross_entropy's ignore_index


class TaskConfig(BaseModel):
    """A task's own settings, given as ``args`` in the sweep file. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Task:
    """A synthetic task. Subclasses set ``Config`` and implement ``vocab_size``, ``check_len`` and
    ``generate``; ``exact`` picks the scorer."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    # False: an example scores the fraction of its asked positions that are right (MQAR).
    # True: an example scores 1 only if every asked position is right (a needle's whole value).
    exact: ClassVar[bool] = False

    def __init__(self, config: TaskConfig):
        self.config = config

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def check_len(self, seq_len: int) -> None:
        """Raise BenchError, naming the problem, if examples of this length cannot be made."""

    def generate(self, n: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples of length ``seq_len``, the same ones for the same seed."""
        raise NotImplementedError

    def score(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example score in [0, 1] for predicted tokens [n, T] (e.g. the argmax of the logits)."""
        return score_predictions(predictions, targets, self.exact)

    def fail(self, message: str) -> BenchError:
        return BenchError(f"task {self.name!r}: {message}")


def score_predictions(predictions: torch.Tensor, targets: torch.Tensor, exact: bool) -> torch.Tensor:
    asked = targets != IGNORE
    right = ((predictions == targets) & asked).sum(1)
    n_asked = asked.sum(1)
    if exact:
        return (right == n_asked).float()
    return right.float() / n_asked.clamp(min=1)


def derive_seed(seed: int, *stream: object) -> int:
    """A seed for one stream of data (e.g. "train", step 12), unrelated to every other stream's seed,
    so that train, validation and test examples come from generators that never share a state."""
    text = repr((seed, *stream)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def example_ids(inputs: torch.Tensor, targets: torch.Tensor) -> list[bytes]:
    """One hashable identity per example (its full inputs and targets)."""
    both = torch.cat([inputs, targets], dim=1).cpu().numpy()
    return [row.tobytes() for row in both]


def drop_seen(
    inputs: torch.Tensor, targets: torch.Tensor, seen: set[bytes]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples whose identity is not in ``seen``. Different seed streams make a repeat unlikely,
    not impossible (a small task has few distinct examples), so training batches pass through this."""
    if not seen:
        return inputs, targets
    keep = torch.tensor([i not in seen for i in example_ids(inputs, targets)], device=inputs.device)
    if keep.all():
        return inputs, targets
    return inputs[keep], targets[keep]
