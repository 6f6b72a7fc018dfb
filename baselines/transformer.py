"""Transformer baseline: the shared Llama-style shell with causal softmax attention as the mixer."""

from __future__ import annotations

import torch
from pydantic import PositiveFloat, PositiveInt

from models.modules.attention import Attention
from models.modules.catalog import ModelFamily
from models.modules.config import ModelConfig
from models.modules.lm import LanguageModel


class TransformerConfig(ModelConfig):
    """``backend``: "auto", "sdpa-flash", "sdpa-efficient", "sdpa-math" or "torch" (explicit reference).
    ``n_heads`` None means d_model // 64 (at least 1); ``window`` makes it sliding-window attention."""

    n_heads: PositiveInt | None = None
    window: PositiveInt | None = None
    rope_base: PositiveFloat = 10000.0


def transformer_backends() -> dict[str, bool | str]:
    cuda = torch.cuda.is_available()
    return {
        "auto": True,
        "sdpa-flash": True,  # CUDA flash kernel, or PyTorch's CPU flash kernel
        "sdpa-efficient": True if cuda else "needs a CUDA device",
        "sdpa-math": True,
        "torch": True,
    }


def build_transformer(config: TransformerConfig) -> LanguageModel:
    c = config
    heads = c.n_heads or max(1, c.d_model // 64)
    return LanguageModel(
        c.vocab_size,
        c.d_model,
        c.n_layers,
        lambda i: Attention(c.d_model, heads, window=c.window, backend=c.backend, rope_base=c.rope_base),
        mlp_hidden=c.mlp_hidden,
    )


TRANSFORMER = ModelFamily(
    "transformer",
    build_transformer,
    TransformerConfig,
    transformer_backends,
    reference="torch",
    context="window",
)
