"""Titans neural long-term memory (Behrouz et al. 2024): a per-token reference, a chunked version for
training and prefill, and a token-by-token version for decoding."""

from .chunk import chunk_titans_memory
from .fused_recurrent import fused_recurrent_titans_memory
from .naive import MemoryState, memory_grads, naive_recurrent_titans_memory

__all__ = [
    "MemoryState",
    "chunk_titans_memory",
    "fused_recurrent_titans_memory",
    "memory_grads",
    "naive_recurrent_titans_memory",
]
