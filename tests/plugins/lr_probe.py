"""A one-parameter test model whose training outcome depends on the learning rate alone, for the
learning-rate grid: logit 0 is 5 - 20 (w - 1)^2 at every position, every other logit 0, w starts at 0.

On a task whose every target is token 0, AdamW moves w towards 1 by about the learning rate per step: a
rate too small never gets there within the budget, a rate too large ends the cosine schedule still
oscillating around it. Over 30 steps (warm-up 3) the validation loss is smallest near lr 0.27, far above a
grid of 1e-3 to 1e-2, while every rate from 0.09 up gets the argmax right everywhere (a tie in accuracy
that only the loss breaks).
"""

from __future__ import annotations

import torch
from torch import nn


class LRProbe(nn.Module):
    backend = "torch"
    state_growth = "constant"

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*input_ids.shape, self.vocab_size, dtype=self.w.dtype, device=input_ids.device)
        logits[..., 0] = 5.0 - 20.0 * (self.w - 1.0) ** 2
        return logits

    def n_params(self) -> int:
        return 1

    def state_bytes(self, batch_size: int, seq_len: int) -> int:
        return 0

    def flops_per_token(self, seq_len: int) -> float:
        return 1.0


def build(vocab_size: int = 8, d_model: int = 8, n_layers: int = 1, backend: str = "auto") -> LRProbe:
    return LRProbe(vocab_size)
