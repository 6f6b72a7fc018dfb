"""Recall tasks (MQAR, S-NIAH): accuracy of the greedy predictions, counted by distance.

Scoring works on *items*: each asked position is one item for a task scored per position (MQAR: one
query), and each example is one item for an ``exact`` task (S-NIAH: a needle's whole value is right or
wrong as a unit), at the largest distance among its asked positions. An evaluation entry holds
``accuracy`` (the mean per-example score), ``n_examples``, ``n_items``, ``by_distance`` (doubling bins:
``{"max_distance", "correct", "total"}``), ``nonfinite`` (the fraction of examples whose logits were not
all finite: a model that diverges beyond its training length would otherwise score a silent 0), and
``beyond_train``: the accuracy over the items whose distance exceeds the training length L (None where
there are none), with ``beyond_train_items`` and ``beyond_train_examples``. Its columns: ``acc_T{n}`` and
``acc_beyond_T{n}`` (the extrapolation figure the overall one can hide), higher is better.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from bench.scoring.base import IGNORE, NO_DISTANCE, Column, Examples, Inference, Scorer, Validation, mean_loss
from bench.scoring.bins import bin_by_distance
from bench.scoring.registry import register_scorer


class Items(NamedTuple):
    """The scored items of a set of examples, one entry each: 1-D tensors of equal length."""

    distance: torch.Tensor  # long
    correct: torch.Tensor  # bool
    example: torch.Tensor  # long: the index of the example the item belongs to


def score_predictions(predictions: torch.Tensor, targets: torch.Tensor, exact: bool) -> torch.Tensor:
    """Per-example score in [0, 1] of predicted tokens [n, T]: the fraction of asked positions right, or
    with ``exact`` 1 only when every asked position is right."""
    asked = targets != IGNORE
    right = ((predictions == targets) & asked).sum(1)
    n_asked = asked.sum(1)
    if exact:
        return (right == n_asked).float()
    return right.float() / n_asked.clamp(min=1)


def score_items(predictions: torch.Tensor, examples: Examples, exact: bool) -> Items:
    """The scored items of predicted tokens [n, T]: asked positions, or whole examples if ``exact``."""
    asked = examples.targets != IGNORE
    right = predictions == examples.targets
    if not exact:
        example, _ = asked.nonzero(as_tuple=True)
        return Items(examples.distances[asked], right[asked], example)
    has = asked.any(1)
    distance = examples.distances.masked_fill(~asked, NO_DISTANCE).max(1).values
    correct = (right | ~asked).all(1)
    return Items(distance[has], correct[has], has.nonzero(as_tuple=True)[0])


@register_scorer("distance")
class RecallScorer(Scorer):
    section = "recall"
    metric = "accuracy"
    higher_is_better = True
    unit = "fraction"
    stops_early = True

    @property
    def exact(self) -> bool:
        return bool(getattr(self.task, "exact", False))

    def validate(self, model, held: Examples, infer: Inference) -> Validation:
        nll, predictions, finite = infer.run(model, held)
        accuracy = score_predictions(predictions, held.targets, self.exact).mean().item()
        return Validation(mean_loss(nll, finite, held), accuracy)

    def evaluate(self, model, held: Examples, infer: Inference, train_len: int) -> dict[str, Any]:
        predictions, finite = infer.predict(model, held.inputs)
        items = score_items(predictions, held, self.exact)
        beyond = items.distance > train_len
        n_beyond = int(beyond.sum())
        return {
            "accuracy": score_predictions(predictions, held.targets, self.exact).mean().item(),
            "nonfinite": float((~finite).float().mean()),
            "n_examples": held.n,
            "n_items": len(items.distance),
            "by_distance": bin_by_distance(items.distance, items.correct, held.inputs.shape[1]),
            "beyond_train": float(items.correct[beyond].float().mean()) if n_beyond else None,
            "beyond_train_items": n_beyond,
            "beyond_train_examples": len(items.example[beyond].unique()),
            **self.extra(predictions, held),
        }

    def extra(self, predictions: torch.Tensor, held: Examples) -> dict[str, Any]:
        """Figures a subclass adds to every entry."""
        return {}

    def columns(self, entries: list[dict[str, Any]], train_len: int) -> dict[str, Column]:
        out = {f"acc_T{e['eval_len']}": Column(e.get("accuracy"), True, "fraction") for e in entries}
        out.update(
            {
                f"acc_beyond_T{e['eval_len']}": Column(e["beyond_train"], True, "fraction")
                for e in entries
                if e.get("beyond_train") is not None
            }
        )
        return out
