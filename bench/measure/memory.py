"""Peak memory of one phase of a cell, on CUDA and on the CPU, with the same recipe: reset the peak after
warm-up, run once, read it.

CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``: tensors only, the runtime excluded.

CPU: the process's peak resident set size (``VmHWM``), which Linux lets a process reset to its current
size (``/proc/self/clear_refs``, "5"). The PyTorch runtime itself holds ~180 MiB before any model exists,
so the figure reported is net of a *baseline*: the resident size after imports and before the model is
built (the weights count; the interpreter, torch's libraries and their allocator caches do not). Where the
peak cannot be reset (no /proc, or not writable), the lifetime peak of the process is used, which the
one-process-per-cell executor makes that cell's own, and the source says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so that memory a phase freed is not
    counted in the next phase's resident size (glibc keeps freed chunks otherwise)."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def rss_bytes() -> int:
    """The resident set size of this process now."""
    kib = _status_kib("VmRSS")
    return 1024 * kib if kib is not None else 0


class PeakMemory:
    """``reset()`` then ``peak()`` around a phase; ``baseline`` is what the runtime held before the model."""

    def __init__(self, device: torch.device):
        self.device = device
        release_freed_memory()
        self.baseline = rss_bytes() if device.type == "cpu" else 0
        self.resettable = device.type == "cuda" or self._reset_cpu()
        if device.type == "cuda":
            self.source = "cuda.max_memory_allocated"
        elif self.resettable:
            self.source = "VmHWM after reset, minus the runtime baseline"
        else:
            self.source = "ru_maxrss (lifetime peak of the cell's process), minus the runtime baseline"

    @staticmethod
    def _reset_cpu() -> bool:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            return False
        return _status_kib("VmHWM") is not None

    def reset(self) -> None:
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            self._reset_cpu()

    def gross_peak(self) -> int:
        """Bytes at the peak since the last reset, runtime included (on CUDA: allocated tensors)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        kib = _status_kib("VmHWM") if self.resettable else None
        if kib is None:
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
        return 1024 * kib

    def peak(self) -> int:
        """Bytes at the peak since the last reset, above the runtime's baseline."""
        return max(0, self.gross_peak() - self.baseline)
