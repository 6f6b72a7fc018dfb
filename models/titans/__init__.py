"""Titans neural long-term memory (Behrouz et al. 2024): a per-token reference and a chunked version."""

from .chunk import memory_chunked
from .naive import MemoryState, memory_grads, memory_recurrent

__all__ = ["MemoryState", "memory_chunked", "memory_grads", "memory_recurrent"]
