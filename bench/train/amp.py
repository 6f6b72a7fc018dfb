"""The precision a model trains in, for accuracy cells and timing cells' train mode alike."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch


def precision(dtype: str, model: torch.nn.Module, device: torch.device) -> Callable[[], Any]:
    """Move the model to ``dtype`` on ``device`` and return the autocast context its forward runs under.
    Half precision is autocast over float32 weights, because AdamW on half-precision weights loses small
    updates; other dtypes are the weights' own (the context is a no-op)."""
    torch_dtype = getattr(torch, dtype)
    if torch_dtype in (torch.bfloat16, torch.float16):
        model.to(device=device, dtype=torch.float32)
        return lambda: torch.autocast(device.type, dtype=torch_dtype)
    model.to(device=device, dtype=torch_dtype)
    return contextlib.nullcontext
