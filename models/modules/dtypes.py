"""The dtypes models compute in and the bytes their tensors take."""

from __future__ import annotations

from typing import Any

import torch


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype recurrences, decays, norms and memory updates run in: the widest of ``dtypes`` and at least
    float32 (bf16 drifts over a long sequence); float64 stays float64."""
    wide = torch.float32
    for dtype in dtypes:
        wide = torch.promote_types(wide, dtype)
    return wide


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside a state made of tensors, lists, tuples, dicts and dataclasses."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    if callable(getattr(obj, "values", None)):  # mapping-like containers such as TensorDict
        return sum(tensor_bytes(v) for v in obj.values())
    return 0
