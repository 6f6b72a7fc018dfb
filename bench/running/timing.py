"""Timing a callable honestly: warm-up outside the timed region, device synchronisation (CUDA events on
GPU), one sample per repeat, raw samples kept."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_samples(
    fn: Callable[[], object],
    repeats: int,
    warmup: int,
    device: torch.device,
    setup: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds per call of ``fn`` for each of ``repeats`` calls, after ``warmup`` untimed calls.
    ``setup`` (untimed) runs before every call, e.g. to rebuild a decoding state."""
    for _ in range(warmup):  # first calls pay JIT, autotuning and allocator growth
        if setup:
            setup()
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        if setup:
            setup()
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


def summarize(samples: list[float], work: float) -> dict:
    """Median and spread of per-call seconds, and the rate ``work / median``."""
    median = statistics.median(samples)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [median, median, median]
    return {
        "samples_s": samples,
        "median_s": median,
        "min_s": min(samples),
        "max_s": max(samples),
        "iqr_s": q[2] - q[0],
        "tokens_per_s": work / median if median > 0 else float("inf"),
    }
