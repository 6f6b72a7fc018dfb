"""Which device a sweep or a check runs on."""

from __future__ import annotations

import torch

from bench.errors import BenchError


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" where a CUDA device is, else "cpu"; an unavailable "cuda" is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("device 'cuda' was asked for but no CUDA device is available here")
    return device
