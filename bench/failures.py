"""How a cell's failure is classified, and what is freed after one."""

from __future__ import annotations

import gc

import torch


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` says the device ran out of memory (a cell's "oom", not a crash)."""
    if isinstance(err, MemoryError):
        return True
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    # CPU tensors that do not fit: "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_cuda() -> None:
    """Give back what a failed cell left on the GPU, so the next attempt starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
