"""A complete third-party baseline in one file: a GRU mixer in the shared language-model shell.

This is the README's worked example. Use it with ``--models tests.plugins.gru:build`` or register it
under a name through the ``titans_bench.models`` entry-point group of your own package.
"""

import torch
from torch import nn

from models.modules import LanguageModel, Mixer


class GRUMixer(Mixer):
    backend = "torch"
    state_growth = "constant"

    def __init__(self, d_model: int):
        super().__init__()
        self.gru = nn.GRU(d_model, d_model, batch_first=True)

    def forward(self, x):
        return self.gru(x)[0]

    def prefill(self, x):
        y, h = self.gru(x)
        return y, h

    def init_state(self, batch_size, device, dtype):
        return torch.zeros(1, batch_size, self.gru.hidden_size, device=device, dtype=dtype)

    def step(self, x, h):
        y, h = self.gru(x.unsqueeze(1), h)
        return y[:, 0], h

    def state_bytes(self, batch_size, seq_len, dtype):
        return batch_size * self.gru.hidden_size * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, seq_len):
        return 2.0 * 6 * self.gru.hidden_size**2  # three gates, input and recurrent matmuls


def build(
    vocab_size: int = 256, d_model: int = 256, n_layers: int = 2, backend: str = "auto"
) -> LanguageModel:
    if backend not in ("auto", "torch"):
        raise ValueError(f"the GRU baseline has only the 'torch' backend, not {backend!r}")
    return LanguageModel(vocab_size, d_model, n_layers, lambda i: GRUMixer(d_model))
