"""What every synthetic task shares: a strict config, a seeded generator, a scorer, and the bookkeeping
that keeps training data apart from the data a model is evaluated on.

A task's examples are an :class:`Examples` triple (inputs, targets, distances), each LongTensor [n, T]:

- ``targets[i, t]`` is the token the model must predict after reading ``inputs[i, : t + 1]``, or
  ``IGNORE`` where nothing is asked: loss and accuracy only ever look at the asked positions;
- ``distances[i, t]`` is, where something is asked, how far back the evidence for the answer lies: the
  position ``t`` at which the answer token is asked minus the position at which that same token appeared
  as evidence in the input (so it is >= 1, and a model that attends to itself and the ``w - 1`` tokens
  before it can copy the answer only when the distance is at most ``w - 1``). ``NO_DISTANCE`` (-1) where
  nothing is asked. Each task's docstring states its exact definition; a task without evidence to recall
  (e.g. a running state) may put the position itself, so that scoring by distance is scoring by position.

Scoring works on *items*: each asked position is one item for a task scored per position (MQAR: one
query), and each example is one item for an ``exact`` task (S-NIAH: a needle's whole value is right or
wrong as a unit), at the largest distance among its asked positions. :func:`bin_by_distance` counts them
in doubling bins (distance <= 1, 2, 4, ...), as RULER reports depth and Zoology gap length.

``generate(n, seq_len, seed, train_len)`` also knows the length the model is trained at: an evaluation
longer than that may place its evidence differently, so that most of what is asked lies further back than
anything seen in training (each task's ``eval_placement`` option: ``"stretch"``, or ``"train"`` to keep the
training distribution at every length).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict

from bench.errors import BenchError

IGNORE = -100  # cross_entropy's ignore_index
NO_DISTANCE = -1  # in ``distances`` where nothing is asked

Placement = Literal["stretch", "train"]
Split = Literal["train", "validation", "test"]


class Examples(NamedTuple):
    """What ``Task.generate`` returns: ``n`` examples of length ``T``, each tensor LongTensor [n, T]."""

    inputs: torch.Tensor
    targets: torch.Tensor  # IGNORE where nothing is asked
    distances: torch.Tensor  # evidence-to-question distance where something is asked, NO_DISTANCE elsewhere

    @property
    def n(self) -> int:
        return len(self.inputs)

    def take(self, index) -> Examples:
        """The examples selected by ``index`` (a mask, indices or a slice)."""
        return Examples(self.inputs[index], self.targets[index], self.distances[index])


class Items(NamedTuple):
    """The scored items of a set of examples, one entry each: 1-D tensors of equal length."""

    distance: torch.Tensor  # long
    correct: torch.Tensor  # bool
    example: torch.Tensor  # long: the index of the example the item belongs to


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
    # True: every position is asked and its distance is the position + 1 (a running state, nothing to
    # recall): the evaluation also records the longest prefix the model gets right (see longest_prefix).
    scored_by_position: ClassVar[bool] = False
    # True: scored by the loss (negative log-likelihood) of every asked position, not by the argmax
    # (language modelling, bench/tasks/lm.py): the evaluation records bits per byte by position instead
    # of accuracy, and training runs its whole step budget.
    loss_scored: ClassVar[bool] = False

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

    def score(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example score in [0, 1] for predicted tokens [n, T] (e.g. the argmax of the logits)."""
        return score_predictions(predictions, targets, self.exact)

    def items(self, predictions: torch.Tensor, examples: Examples) -> Items:
        """The scored items of predicted tokens [n, T]: asked positions, or whole examples if ``exact``."""
        return score_items(predictions, examples, self.exact)

    def fail(self, message: str) -> BenchError:
        return BenchError(f"task {self.name!r}: {message}")


def score_predictions(predictions: torch.Tensor, targets: torch.Tensor, exact: bool) -> torch.Tensor:
    asked = targets != IGNORE
    right = ((predictions == targets) & asked).sum(1)
    n_asked = asked.sum(1)
    if exact:
        return (right == n_asked).float()
    return right.float() / n_asked.clamp(min=1)


def score_items(predictions: torch.Tensor, examples: Examples, exact: bool) -> Items:
    asked = examples.targets != IGNORE
    right = predictions == examples.targets
    if not exact:
        example, _ = asked.nonzero(as_tuple=True)
        return Items(examples.distances[asked], right[asked], example)
    has = asked.any(1)
    distance = examples.distances.masked_fill(~asked, NO_DISTANCE).max(1).values
    correct = (right | ~asked).all(1)
    return Items(distance[has], correct[has], has.nonzero(as_tuple=True)[0])


def doubling_bounds(length: int) -> list[int]:
    """1, 2, 4, ... up to the first power of two >= ``length - 1`` (the largest distance in a sequence of
    ``length`` tokens), at least [1]."""
    bounds = [1]
    while bounds[-1] < length - 1:
        bounds.append(2 * bounds[-1])
    return bounds


def bin_by_distance(distance: torch.Tensor, correct: torch.Tensor, length: int) -> list[dict[str, int]]:
    """Items counted in doubling bins: the bin with bound ``d`` holds distances in (d/2, d] (the first,
    distances <= 1). Every bin up to ``length`` is listed, empty ones with total 0."""
    out, low = [], 0
    for bound in doubling_bounds(length):
        inside = (distance > low) & (distance <= bound)
        out.append({"max_distance": bound, "correct": int(correct[inside].sum()), "total": int(inside.sum())})
        low = bound
    return out


def longest_prefix(correct: torch.Tensor, asked: torch.Tensor, level: float = 0.9) -> int:
    """The longest prefix length L at which the model is still at least ``level`` correct: the largest L
    such that, at every position t < L, the accuracy over the examples (``correct`` and ``asked`` bool
    [n, T]; positions nobody was asked are skipped) is >= ``level``. 0 if the first position already falls
    short; T if none does (then the model's true figure is at least T: the evaluation is too short to see
    where it fails). Each position's accuracy is a mean over n examples: with n = 128 a position whose true
    accuracy is 0.93 falls below 0.9 with probability 0.11 (0.95: 0.012), so the figure is noisy near 0.9."""
    n_asked = asked.sum(0)
    accuracy = (correct & asked).sum(0).double() / n_asked.clamp(min=1)
    failing = ((accuracy < level) & (n_asked > 0)).nonzero()
    return int(failing[0, 0]) if len(failing) else correct.shape[1]


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
