"""A test-only model whose training blows up: after ``after`` forward passes in training mode its
output turns to NaN, as a model with a too-high learning rate does, but every time and at once. With
``nan_beyond``, it trains fine but its output is NaN on sequences longer than that: a model that diverges
beyond its training length."""

import torch

from models.modules import LanguageModel
from tests.plugins.gru import GRUMixer


class _Unstable(GRUMixer):
    def __init__(self, d_model: int, after: int, nan_beyond: int | None):
        super().__init__(d_model)
        self.after, self.calls, self.nan_beyond = after, 0, nan_beyond

    def forward(self, x):
        if self.training:
            self.calls += 1
        y = super().forward(x)
        too_long = self.nan_beyond is not None and x.shape[1] > self.nan_beyond
        return y * torch.nan if self.calls > self.after or too_long else y


def build(vocab_size=32, d_model=16, n_layers=1, backend="auto", after=3, nan_beyond=None):
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: _Unstable(d_model, after, nan_beyond))
