"""A test language model whose loss is known in closed form at every position, for the lm task.

- ``favour=None``: every token equally likely whatever it reads: -log2(1 / vocab_size) bits per token at
  every position, exactly 8 bits per byte over bytes;
- ``favour=b``: token ``b`` gets the logit ln(t + 1) at input position t (0-based) and every other token
  0, so it has probability (t + 1) / (t + vocab_size) there: on a document made of ``b`` alone the loss
  of the target at position t + 1 (1-based) is -log2((t + 1) / (t + vocab_size)), falling with position.

It reads nothing but the positions, has one parameter (a bias added to every logit, which changes no
probability: its gradient is zero) so that the optimizer has something to update, and implements the
model interface the harness uses.
"""

from __future__ import annotations

import torch
from torch import nn


class ClosedFormLM(nn.Module):
    backend = "torch"
    state_growth = "constant"

    def __init__(self, vocab_size: int, favour: int | None):
        super().__init__()
        if favour is not None and not 0 <= favour < vocab_size:
            raise ValueError(f"favour {favour} is not a token of a vocabulary of {vocab_size}")
        self.vocab_size, self.favour = vocab_size, favour
        self.bias = nn.Parameter(torch.zeros(()))

    def _logits(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        B, T = ids.shape
        logits = torch.zeros(B, T, self.vocab_size, dtype=self.bias.dtype, device=ids.device)
        if self.favour is not None:
            positions = torch.arange(start, start + T, dtype=self.bias.dtype, device=ids.device)
            logits[:, :, self.favour] = torch.log(positions + 1)
        return logits + self.bias

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._logits(input_ids, 0)

    def init_state(self, batch_size: int) -> int:
        return 0  # the position

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor):
        return self._logits(input_ids, 0)[:, -1], input_ids.shape[1]

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: int):
        return self._logits(token_ids[:, None], state)[:, 0], state + 1

    def state_bytes(self, batch_size: int, seq_len: int) -> int:
        return 8  # the position

    def flops_per_token(self, seq_len: int) -> float:
        return float(self.vocab_size)

    def n_params(self) -> int:
        return 1


def build(
    vocab_size: int = 256,
    d_model: int = 16,
    n_layers: int = 1,
    backend: str = "auto",
    favour: int | None = None,
):
    """``d_model`` and ``n_layers`` are accepted, as every factory must, and unused."""
    if backend not in ("auto", "torch"):
        raise ValueError(f"closed_form_lm has only the 'torch' backend, not {backend!r}")
    return ClosedFormLM(vocab_size, favour)
