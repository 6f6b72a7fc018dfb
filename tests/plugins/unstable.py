"""A test-only model whose training blows up: after ``after`` forward passes in training mode its
output turns to NaN, as a model with a too-high learning rate does, but every time and at once."""

import torch

from bench.lm import LanguageModel
from tests.plugins.gru import GRUMixer


class _Unstable(GRUMixer):
    def __init__(self, d_model: int, after: int):
        super().__init__(d_model)
        self.after, self.calls = after, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        y = super().forward(x)
        return y * torch.nan if self.calls > self.after else y


def build(vocab_size=32, d_model=16, n_layers=1, backend="auto", after=3):
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Unstable(d_model, after))
