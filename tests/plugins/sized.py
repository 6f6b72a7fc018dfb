"""A model whose every allocation is known, so that a memory measure can be held to the byte: float32
weights [vocab, d_model]; a prompt allocates a [B, T, scratch] activation (freed before it returns), the
last position's logits [B, vocab] and a state [B, state]; a step allocates a [B, scratch] activation,
logits [B, vocab] and a new state [B, state]."""

import torch
from torch import nn


class Sized(nn.Module):
    backend = "torch"

    def __init__(self, vocab_size: int, d_model: int, scratch: int, state: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size, d_model))
        self.vocab_size, self.scratch, self.state = vocab_size, scratch, state

    def forward(self, ids):  # [B, T] -> [B, T, vocab], differentiable through the weight
        return self.weight[ids].sum(-1, keepdim=True).expand(-1, -1, self.vocab_size)

    def prefill(self, ids):
        activation = torch.empty(ids.shape[0], ids.shape[1], self.scratch)
        logits, state = torch.empty(ids.shape[0], self.vocab_size), torch.empty(ids.shape[0], self.state)
        del activation
        return logits, state

    def step(self, token, state):
        activation = torch.empty(token.shape[0], self.scratch)
        logits, new = torch.empty(token.shape[0], self.vocab_size), torch.empty(token.shape[0], self.state)
        del activation
        return logits, new

    def init_state(self, batch_size):
        return torch.zeros(batch_size, self.state)

    def n_params(self) -> int:
        return self.weight.numel()

    def state_bytes(self, batch_size: int, seq_len: int) -> int:
        return 4 * batch_size * self.state

    def flops_per_token(self, seq_len: int) -> float:
        return 2.0 * self.weight.shape[1]


def build(vocab_size=32, d_model=8, n_layers=1, backend="auto", scratch=1000, state=300):
    return Sized(vocab_size, d_model, scratch, state)
