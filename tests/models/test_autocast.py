"""Every model trains under bf16 autocast, the recipe of timed training and of accuracy cells on a GPU:
the fast paths' own matmuls must not be half-cast behind their backward's back (Mamba's scan once was)."""

import pytest
import torch

import bench
from tests.helpers import TINY

FAST = [(name, "torch-chunked" if name != "transformer" else "auto") for name in bench.list_models()]


@pytest.mark.parametrize("name, backend", FAST)
def test_training_under_bf16_autocast(name, backend):
    model = bench.build(name, **{**TINY, "backend": backend})
    ids = torch.randint(0, TINY["vocab_size"], (2, 23))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
