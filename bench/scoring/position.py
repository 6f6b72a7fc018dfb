"""State tracking (a running group product asked at every position): recall scoring by position, plus the
longest prefix still answered well.

Every position is asked and its distance is the position + 1 (bench/tasks/state.py), so the distance bins
are position buckets and ``beyond_train`` scores the positions past the training length. Each entry also
holds ``longest_prefix_90``: the longest prefix length L such that the accuracy over the examples is at
least 90% at every position < L (bench.scoring.bins.longest_prefix; L = the evaluation length when no
position falls short).
"""

from __future__ import annotations

from typing import Any

import torch

from bench.scoring.base import IGNORE, Examples
from bench.scoring.bins import longest_prefix
from bench.scoring.distance import RecallScorer
from bench.scoring.registry import register_scorer

PREFIX_LEVEL = 0.9  # longest_prefix_90: the longest prefix at which a model is still this accurate


@register_scorer("position")
class StateScorer(RecallScorer):
    section = "state"

    def extra(self, predictions: torch.Tensor, held: Examples) -> dict[str, Any]:
        asked = held.targets != IGNORE
        return {"longest_prefix_90": longest_prefix(predictions == held.targets, asked, PREFIX_LEVEL)}
