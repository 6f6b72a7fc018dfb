"""Test models for the state-tracking tasks (bench/tasks/state.py) whose scores are known without training.

- ``answer="state"``: at every position, the true running product of the elements read so far, computed
  with the group's multiplication table (``group``: "Z2", "Z5", "A5", ...): 100% at every position and
  every length;
- ``answer="identity"``: always the identity element (token 0), whatever it reads: right exactly where the
  running product happens to be the identity, which for uniform inputs has probability 1 / order at every
  position, independently across positions (bench/tasks/state.py): the chance level.

Each has one parameter, a bias added to every logit, so that the optimizer has something to update (its
gradient is zero: a constant shift of the logits changes no probability, and no argmax). It implements the
model interface the harness uses: forward, prefill, step, init_state, state_bytes, flops_per_token,
backend, n_params.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.tasks.groups import group

CONFIDENCE = 10.0  # logit of the answered element above all others


class StateOracle(nn.Module):
    backend = "torch"
    state_growth = "constant"

    def __init__(self, vocab_size: int, group_name: str, answer: str):
        super().__init__()
        self.group = group(group_name)
        if vocab_size != self.group.order:
            raise ValueError(f"vocab_size {vocab_size} is not the order {self.group.order} of {group_name}")
        if answer not in ("state", "identity"):
            raise ValueError(f"answer must be 'state' or 'identity', not {answer!r}")
        self.vocab_size, self.answer = vocab_size, answer
        self.bias = nn.Parameter(torch.zeros(()))

    def _logits(self, answers: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(answers, self.vocab_size).to(self.bias.dtype)
        return CONFIDENCE * one_hot + self.bias

    def _run(self, ids: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Running products of ids [B, T] after the state ``start`` [B]: ([B, T], the state after them)."""
        table = self.group.table.to(ids.device)
        states, state = [], start
        for t in range(ids.shape[1]):
            state = table[state, ids[:, t]]
            states.append(state)
        return torch.stack(states, 1), state

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        start = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        states, _ = self._run(input_ids, start)
        return self._logits(states if self.answer == "state" else torch.zeros_like(states))

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self.bias.device)  # the identity

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor):
        states, last = self._run(input_ids, self.init_state(input_ids.shape[0]))
        answers = states if self.answer == "state" else torch.zeros_like(states)
        return self._logits(answers[:, -1]), last

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: torch.Tensor):
        states, last = self._run(token_ids[:, None], state)
        answers = states[:, 0] if self.answer == "state" else torch.zeros_like(last)
        return self._logits(answers), last

    def state_bytes(self, batch_size: int, seq_len: int) -> int:
        return batch_size * 8  # one int64 element index

    def flops_per_token(self, seq_len: int) -> float:
        return 1.0  # one table lookup

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build(
    vocab_size: int = 2,
    d_model: int = 16,
    n_layers: int = 1,
    backend: str = "auto",
    group: str = "Z2",
    answer: str = "state",
):
    """``d_model`` and ``n_layers`` are accepted, as every factory must, and unused."""
    if backend not in ("auto", "torch"):
        raise ValueError(f"state_oracle has only the 'torch' backend, not {backend!r}")
    return StateOracle(vocab_size, group, answer)
