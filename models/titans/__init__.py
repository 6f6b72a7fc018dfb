"""Titans (Behrouz, Zhong, Mirrokni 2024): the neural long-term memory and the models built on it.

The memory op in fla's layout: ``naive_recurrent_titans_memory`` (naive.py, the per-token reference),
``chunk_titans_memory`` (chunk.py, chunk-parallel, for training and prefill) and
``fused_recurrent_titans_memory`` (fused_recurrent.py, token by token, for decoding). ``model`` registers
``titans-lmm``, ``titans-mal`` and ``titans-mag``; ``mac`` registers ``titans-mac``.
"""

from models.titans import mac, model
from models.titans.chunk import chunk_titans_memory
from models.titans.fused_recurrent import fused_recurrent_titans_memory
from models.titans.naive import MemoryState, memory_grads, naive_recurrent_titans_memory

__all__ = [
    "MemoryState",
    "chunk_titans_memory",
    "fused_recurrent_titans_memory",
    "mac",
    "memory_grads",
    "model",
    "naive_recurrent_titans_memory",
]
