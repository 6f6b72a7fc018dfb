"""Peak memory of one phase of a cell as the device's own counters give it, with the same recipe: reset
the peak after warm-up, run once, read it.

CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``: tensors only, the runtime excluded. It is
the primary CUDA figure.

CPU: the process's peak resident set size (``VmHWM``), which Linux lets a process reset to its current
size (``/proc/self/clear_refs``, "5"); where the peak cannot be reset (no /proc, or not writable), the
lifetime peak of the process, which the one-process-per-cell executor makes that cell's own. It is the
*gross* CPU figure: the interpreter and torch's libraries (~180 MiB before any model exists), what the
heap kept from earlier phases, pages rather than bytes. ``baseline`` is the resident size after imports
and before the model is built, for reading the gross figure against. The primary CPU figure counts
tensor bytes at the allocator instead (``bench.measure.allocations``), which none of that moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
ALLOCATOR_SOURCE = "CPU allocator: tensor bytes live at the peak, from the profiler's memory events"
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
            self.source = "resident size: VmHWM after a reset, runtime included"
        else:
            self.source = "resident size: ru_maxrss, the cell process's lifetime peak, runtime included"

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
