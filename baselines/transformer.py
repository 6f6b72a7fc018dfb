"""Transformer baseline: the shared Llama-style shell with causal softmax attention as the mixer."""

from __future__ import annotations

import torch

from baselines.attention import Attention
from bench.lm import LanguageModel
from bench.registry import register


@register("transformer")
def build_transformer(
    vocab_size: int = 256,
    d_model: int = 256,
    n_layers: int = 2,
    backend: str = "auto",
    n_heads: int | None = None,
    window: int | None = None,
    rope_base: float = 10000.0,
    mlp_hidden: int | None = None,
) -> LanguageModel:
    """``backend``: "auto", "sdpa-flash", "sdpa-efficient", "sdpa-math" or "torch" (explicit reference).
    ``n_heads`` defaults to d_model // 64 (at least 1); ``window`` makes it sliding-window attention."""
    heads = n_heads or max(1, d_model // 64)
    return LanguageModel(
        vocab_size,
        d_model,
        n_layers,
        lambda i: Attention(d_model, heads, window=window, backend=backend, rope_base=rope_base),
        mlp_hidden=mlp_hidden,
    )


def _available_backends() -> dict[str, bool | str]:
    cuda = torch.cuda.is_available()
    return {
        "auto": True,
        "sdpa-flash": True,  # CUDA flash kernel, or PyTorch's CPU flash kernel
        "sdpa-efficient": True if cuda else "needs a CUDA device",
        "sdpa-math": True,
        "torch": True,
    }


build_transformer.available_backends = _available_backends
build_transformer.reference_backend = "torch"
