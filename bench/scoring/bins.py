"""Counting scored items by how far back their evidence lies, in doubling bins (distance <= 1, 2, 4, ...),
as RULER reports depth and Zoology gap length; and the longest prefix a model still gets right."""

from __future__ import annotations

import torch


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
