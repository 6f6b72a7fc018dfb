"""The peer implementation: lucidrains' titans-pytorch ``NeuralMemory`` as a mixer in our shell.

Not a built-in: it is loaded the way any user's plug-in is, by path, and only where the package is
installed (``pip install 'titans-bench[peers]'``):

    python -m bench run --models titans-lmm,baselines.titans_pytorch:build

Note what is compared: by default titans-pytorch takes every gradient inside a sequence at the memory's
*initial* weights, while our ``titans-lmm`` takes each chunk's gradients at the memory left by the
previous chunk, as the paper's §3.2 says.
"""

from __future__ import annotations

import torch

from models.modules.dtypes import tensor_bytes
from models.modules.lm import LanguageModel, Mixer


class PeerNeuralMemory(Mixer):
    backend = "titans-pytorch"
    state_growth = "constant"

    def __init__(
        self, d_model: int, n_heads: int, chunk_size: int, memory_depth: int, memory_expansion: float
    ):
        super().__init__()
        try:
            from titans_pytorch import NeuralMemory
        except ImportError:
            raise ValueError(
                "the titans-pytorch peer needs its package: pip install 'titans-bench[peers]'"
            ) from None
        self.memory = NeuralMemory(
            dim=d_model, chunk_size=chunk_size, heads=n_heads, dim_head=d_model // n_heads,
            default_model_kwargs=dict(depth=memory_depth, expansion_factor=memory_expansion),
        )  # fmt: skip
        self.d_model, self.chunk_size = d_model, chunk_size
        self._bytes_per_sequence: int | None = None

    def forward(self, x):
        return self.memory(x)[0]

    def prefill(self, x):
        return self.memory(x)

    def init_state(self, batch_size, device, dtype):
        return None  # titans-pytorch builds its state on the first call

    def step(self, x, state):
        y, state = self.memory(x.unsqueeze(1), state=state)
        return y[:, 0], state

    def state_bytes(self, batch_size, seq_len, dtype):
        # The peer's state is opaque (weights, momentum, a partial-chunk cache): measure it once on one
        # sequence of a whole chunk, where the cache is empty.
        if self._bytes_per_sequence is None:
            p = next(self.parameters())
            with torch.no_grad():
                x = torch.zeros(1, self.chunk_size, self.d_model, device=p.device, dtype=p.dtype)
                self._bytes_per_sequence = tensor_bytes(self.memory(x)[1])
        return batch_size * self._bytes_per_sequence

    def flops_per_token(self, seq_len):
        memory = sum(p.numel() for p in self.memory.memory_model.parameters())
        return (
            2.0 * 4 * self.d_model**2 + 12.0 * memory
        )  # projections + key forward/backward, update, retrieval


def build(
    vocab_size: int = 256,
    d_model: int = 256,
    n_layers: int = 2,
    backend: str = "auto",
    n_heads: int | None = None,
    chunk_size: int = 64,
    memory_depth: int = 2,
    memory_expansion: float = 4.0,
    mlp_hidden: int | None = None,
) -> LanguageModel:
    if backend not in ("auto", "titans-pytorch"):
        raise ValueError(f"the titans-pytorch peer has only the 'titans-pytorch' backend, not {backend!r}")
    heads = n_heads or max(1, d_model // 64)
    return LanguageModel(
        vocab_size, d_model, n_layers,
        lambda i: PeerNeuralMemory(d_model, heads, chunk_size, memory_depth, memory_expansion),
        mlp_hidden=mlp_hidden,
    )  # fmt: skip
