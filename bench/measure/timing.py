"""Timing a callable honestly: warm-up outside the timed region until the timings settle, device
synchronisation (CUDA events on GPU), one sample per repeat, raw samples kept, drift flagged.

A fixed warm-up count is not enough: on a CPU the first calls of a model can run 30-50% slower than later
ones for several calls (allocator growth, caches, the OS placing threads), and a median over a handful of
repeats then understates the steady rate. So warm-up continues past ``min_calls`` until the calls stop
getting faster: until the fastest of the last ``SETTLE_WINDOW`` calls is no more than ``SETTLE_TOLERANCE``
faster than the fastest call before them. A slow outlier (another process taking the core for a moment)
does not hold warm-up back; only a trend does. It stops at a cap in calls and in seconds; the row records
how many warm-up calls ran and whether they settled. What remains is checked on the timed samples:
when the first two differ from the last two by more than ``DRIFT_LIMIT``, the row says so (``drift``) and
the report flags the cell.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench import results

SETTLE_WINDOW = 2  # two calls in a row no faster than before: a trend still shows, at a call less than 3
SETTLE_TOLERANCE = 0.05  # the last calls at most 5% faster than the best before them
DRIFT_LIMIT = 0.15


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(
    fn: Callable[[], object], device: torch.device, setup: Callable[[], object] | None = None
) -> float:
    """Seconds of one call of ``fn``, after an untimed ``setup``."""
    if setup:
        setup()
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Warmup:
    calls: int = 0
    settled: bool = False
    seconds: list[float] = field(default_factory=list)


def settled(times: list[float], window: int = SETTLE_WINDOW, tolerance: float = SETTLE_TOLERANCE) -> bool:
    """Whether the calls stopped getting faster: the best of the last ``window`` is within ``tolerance``
    of the best of the calls before them."""
    if len(times) <= window:
        return False
    return min(times[-window:]) >= (1 - tolerance) * min(times[:-window])


def warm_up(
    fn: Callable[[], object],
    device: torch.device,
    setup: Callable[[], object] | None = None,
    min_calls: int = 2,
    max_calls: int = 12,
    max_seconds: float = 15.0,
) -> Warmup:
    """Call ``fn`` (untimed for the results) until at least ``min_calls`` calls ran and the timings settle,
    or ``max_calls`` / ``max_seconds`` is reached."""
    out = Warmup()
    start = time.perf_counter()
    while out.calls < max(min_calls, 1) or (
        not settled(out.seconds) and out.calls < max_calls and time.perf_counter() - start < max_seconds
    ):
        out.seconds.append(time_once(fn, device, setup))
        out.calls += 1
    out.settled = settled(out.seconds)
    return out


def time_samples(
    fn: Callable[[], object],
    repeats: int,
    device: torch.device,
    setup: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds per call of ``fn`` for each of ``repeats`` calls; ``setup`` (untimed) runs before each."""
    return [time_once(fn, device, setup) for _ in range(repeats)]


def drift(samples: list[float]) -> float | None:
    """Relative change from the first two samples to the last two (None with fewer than four)."""
    if len(samples) < 4:
        return None
    first, last = statistics.mean(samples[:2]), statistics.mean(samples[-2:])
    return first / last - 1.0 if last > 0 else None


def summarize(samples: list[float], work: float) -> dict:
    """Median and spread of per-call seconds, the rate ``work / median``, and the drift check."""
    change = drift(samples)
    return {
        **results.summary(samples, work),
        "tokens_per_call": work,
        "drift": change,
        "drifting": change is not None and abs(change) > DRIFT_LIMIT,
    }
