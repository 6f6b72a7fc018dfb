"""Titans neural long-term memory (Behrouz et al. 2024): a per-token reference, a chunked version for
training and prefill, and a token-by-token version for decoding."""

from .chunk import memory_chunked
from .fused_recurrent import memory_fused_recurrent
from .naive import MemoryState, memory_grads, memory_recurrent

__all__ = ["MemoryState", "memory_chunked", "memory_fused_recurrent", "memory_grads", "memory_recurrent"]
