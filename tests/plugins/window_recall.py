"""A test model that recalls exactly the evidence at most ``reach`` tokens back, and nothing further.

At each position it looks for the most recent earlier occurrence of the current token and copies the
token that followed it, if that token lies at most ``reach`` positions back; otherwise it answers token 0,
which is never an answer in MQAR (values are in the upper half of the vocabulary) or S-NIAH (0 is a
marker). With the tasks' definition of distance (bench/tasks/base.py: the position asked minus the
position of the answer token in the evidence) it answers an MQAR query (with ``random_non_queries=False``,
so no stray copy of the key lies between) or a one-token needle right if and only if its distance is at
most ``reach``: the scores by distance are known without any training noise.

It has one parameter, a bias added to every logit, so that the optimizer has something to update (its
gradient is zero: a constant shift of the logits changes no probability). It implements the model
interface the harness uses: forward, prefill, step, init_state, state_bytes, flops_per_token, backend,
n_params.
"""

from __future__ import annotations

import torch
from torch import nn

WRONG = 0  # the answer when the evidence is out of reach
CONFIDENCE = 10.0  # logit of the copied token above all others


class WindowRecall(nn.Module):
    backend = "torch"
    state_growth = "bounded"

    def __init__(self, vocab_size: int, reach: int):
        super().__init__()
        if reach < 1:
            raise ValueError(f"reach must be >= 1, got {reach}")
        self.vocab_size, self.reach = vocab_size, reach
        self.bias = nn.Parameter(torch.zeros(()))

    def predict(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, T]: the token after the most recent earlier occurrence of ``ids[:, t]`` if it lies
        within ``reach`` of t, else WRONG."""
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        earlier = pos[None, :] < pos[:, None]  # [t, p]: p < t
        in_reach = pos[:, None] - (pos[None, :] + 1) <= self.reach  # the copied token, at p + 1
        match = (ids[:, :, None] == ids[:, None, :]) & earlier & in_reach
        last = torch.where(match, pos, -1).max(-1).values  # [B, T]: the most recent such p, or -1
        copied = ids.gather(1, (last + 1).clamp(max=T - 1))
        return torch.where(last >= 0, copied, torch.full_like(copied, WRONG))

    def logits(self, predicted: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(predicted, self.vocab_size).to(self.bias.dtype)
        return CONFIDENCE * one_hot + self.bias

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.logits(self.predict(input_ids))

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, 0, dtype=torch.long, device=self.bias.device)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor):
        return self.forward(input_ids), input_ids[:, -(self.reach + 1) :].clone()

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: torch.Tensor):
        """The last ``reach + 1`` tokens are all it needs: the copied token and the occurrence before it."""
        seen = torch.cat([state, token_ids[:, None]], dim=1)
        return self.forward(seen)[:, -1], seen[:, -(self.reach + 1) :]

    def state_bytes(self, batch_size: int, seq_len: int) -> int:
        return batch_size * min(seq_len, self.reach + 1) * 8  # int64 token ids

    def flops_per_token(self, seq_len: int) -> float:
        return float(min(seq_len, self.reach + 1))  # one comparison per token in reach

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build(vocab_size: int = 32, d_model: int = 16, n_layers: int = 1, backend: str = "auto", reach: int = 8):
    """``d_model`` and ``n_layers`` are accepted, as every factory must, and unused."""
    if backend not in ("auto", "torch"):
        raise ValueError(f"window_recall has only the 'torch' backend, not {backend!r}")
    return WindowRecall(vocab_size, reach)
