"""What every task shares: a strict config, a seeded generator of examples, the scorer that scores a model
on them, and the bookkeeping that keeps training data apart from the data a model is evaluated on.

A task's examples are :class:`~bench.scoring.base.Examples` (inputs, targets, distances; that module says
what each holds). ``generate(n, seq_len, seed, train_len)`` also knows the length the model is trained
at: an evaluation longer than that may place its evidence differently, so that most of what is asked lies
further back than anything seen in training (each task's ``eval_placement`` option: ``"stretch"``, or
``"train"`` to keep the training distribution at every length).

A task declares how it is scored with one attribute, ``scorer``: the name of a registered scorer
(bench/scoring: "distance" for recall, "position" for a running state, "loss" for language modelling).
``exact`` tells the recall scorer that a needle's whole value is one item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from bench.errors import BenchError
from bench.scoring import IGNORE, NO_DISTANCE, Examples, Scorer, get_scorer

Placement = Literal["stretch", "train"]
Split = Literal["train", "validation", "test"]

__all__ = ["IGNORE", "NO_DISTANCE", "Examples", "Placement", "Split", "Task", "TaskConfig"]


class TaskConfig(BaseModel):
    """A task's own settings, given as ``args`` in the sweep file. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Task:
    """A task. Subclasses set ``Config`` and ``scorer`` and implement ``vocab_size``, ``check_len`` and
    ``generate``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    # How a model is scored on it: a registered scorer's name (bench/scoring).
    scorer: ClassVar[str] = "distance"
    # For the recall scorer. False: an example scores the fraction of its asked positions that are right
    # (MQAR). True: an example scores 1 only if every asked position is right (a needle's whole value).
    exact: ClassVar[bool] = False

    def __init__(self, config: TaskConfig):
        self.config = config

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def check_len(self, seq_len: int) -> None:
        """Raise BenchError, naming the problem, if examples of this length cannot be made."""

    def generate(self, n: int, seq_len: int, seed: int, train_len: int | None = None) -> Examples:
        """``n`` examples of length ``seq_len``, the same ones for the same seed. ``train_len``: the length
        the model is (or was) trained at; None, or a ``seq_len`` not above it, gives the training
        distribution."""
        raise NotImplementedError

    def examples(
        self, split: Split, n: int, seq_len: int, seed: int, train_len: int | None = None
    ) -> Examples:
        """``n`` examples of one split, "train", "validation" or "test". A synthetic task draws every split
        from the same distribution, kept apart by the seed (the caller derives one per split and stream:
        :func:`derive_seed`); a task over a corpus draws from that split's documents, and may return fewer
        than ``n`` (as many documents as are long enough)."""
        return self.generate(n, seq_len, seed, train_len)

    def train_stream(self, batch_size: int, seq_len: int, seed: int) -> Iterator[Examples]:
        """Training batches for state-passing training: row i of each batch continues row i of the batch
        before it (the next ``seq_len`` tokens of one long stream), so that a recurrent state carried from
        one batch to the next has read what came before. Only a task made of long text has one."""
        raise self.fail("has no stream of text to carry a state along (state passing needs one, e.g. lm)")

    def examples_with_bytes(
        self, split: Split, n: int, seq_len: int, seed: int, train_len: int | None = None
    ) -> tuple[Examples, torch.Tensor]:
        """For a task scored by loss: :meth:`examples` and the bytes of text each target stands for [n, T]
        (bits per byte divide by them). One token is one byte unless the task says otherwise."""
        examples = self.examples(split, n, seq_len, seed, train_len)
        return examples, torch.ones_like(examples.targets)

    def pinned_args(self) -> dict[str, Any]:
        """Arguments the sweep adds to a cell's ``task_args`` when it makes the cells: what a result depends
        on beyond the arguments given (a corpus's fingerprint), so that it is part of the cell's key and
        checked where the cell runs. Validated by ``Config`` like every argument."""
        return {}

    def stretches(self, seq_len: int, train_len: int | None) -> bool:
        """Whether examples of ``seq_len`` use the evaluation placement that stretches the distances."""
        placement = getattr(self.config, "eval_placement", "train")
        return placement == "stretch" and train_len is not None and seq_len > train_len

    def chance(self) -> str | None:
        """What a model that has learned nothing scores, in words (the reports print it beside the
        results); None where no single figure says it."""
        return None

    def fail(self, message: str) -> BenchError:
        return BenchError(f"task {self.name!r}: {message}")

    def make_scorer(self) -> Scorer:
        """The scorer of this task's cells."""
        return get_scorer(self.scorer)(self)


def derive_seed(seed: int, *stream: object) -> int:
    """A seed for one stream of data (e.g. "train", step 12), unrelated to every other stream's seed,
    so that train, validation and test examples come from generators that never share a state."""
    text = repr((seed, *stream)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def example_ids(examples: Examples) -> list[bytes]:
    """One hashable identity per example (its full inputs and targets; distances follow from them)."""
    both = torch.cat([examples.inputs, examples.targets], dim=1).cpu().numpy()
    return [row.tobytes() for row in both]


def drop_seen(examples: Examples, seen: set[bytes]) -> Examples:
    """The examples whose identity is not in ``seen``. Different seed streams make a repeat unlikely,
    not impossible (a small task has few distinct examples), so training batches pass through this."""
    if not seen:
        return examples
    keep = torch.tensor([i not in seen for i in example_ids(examples)], device=examples.inputs.device)
    if keep.all():
        return examples
    return examples.take(keep)
