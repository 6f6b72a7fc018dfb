"""Measure one cell in the current process: throughput, memory, state size and FLOPs of one model."""

from __future__ import annotations

import gc
import resource
from typing import Any

import torch
import torch.nn.functional as F

from bench.registry import build
from bench.running.environment import peak_flops
from bench.running.timing import summarize, time_samples
from bench.spec.cells import TimingCell


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_model(cell: TimingCell, device: torch.device):
    torch.manual_seed(cell.seed)
    model = build(cell.model, **cell.build_kwargs())
    return model.to(device=device, dtype=getattr(torch, cell.dtype))


def step_callable(cell: TimingCell, model, device: torch.device):
    """The callable timed for the cell's mode, the tokens one call processes, and an untimed setup."""
    g = torch.Generator(device="cpu").manual_seed(cell.seed + 1)
    B, T, V = cell.batch_size, cell.seq_len, cell.vocab_size
    ids = torch.randint(0, V, (B, T), generator=g).to(device)
    if cell.mode == "train":
        model.train()
        targets = torch.randint(0, V, (B, T), generator=g).to(device)

        def train_step():
            model.zero_grad(set_to_none=True)
            logits = model(ids)
            F.cross_entropy(logits.float().view(-1, V), targets.view(-1)).backward()

        return train_step, B * T, None
    model.eval()
    if cell.mode == "prefill":

        def prefill():
            with torch.inference_mode():
                model(ids)

        return prefill, B * T, None
    if cell.mode == "decode":
        tokens = torch.randint(0, V, (cell.decode_tokens, B), generator=g).to(device)
        holder: dict[str, Any] = {}

        def setup():  # a fresh state after a prompt of seq_len tokens, rebuilt before every repeat
            holder.pop("state", None)
            with torch.inference_mode():
                holder["state"] = model.prefill(ids)[1]

        def decode():
            with torch.inference_mode():
                state = holder["state"]
                for t in range(cell.decode_tokens):
                    _, state = model.step(tokens[t], state)

        return decode, B * cell.decode_tokens, setup
    raise ValueError(f"mode {cell.mode!r} is not a timing mode")


def measure_cell(cell: TimingCell, isolated: bool = True) -> dict:
    """Everything measured for a timing cell (train / prefill / decode), as a flat dict."""
    device = torch.device(cell.device)
    if cell.threads:
        torch.set_num_threads(cell.threads)
    model = make_model(cell, device)
    fn, work, setup = step_callable(cell, model, device)
    rss_before = _rss_bytes()

    record: dict[str, Any] = {}
    if device.type == "cuda":
        for _ in range(cell.warmup):
            if setup:
                setup()
            fn()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        if setup:
            setup()
        fn()
        torch.cuda.synchronize(device)
        stats = torch.cuda.memory_stats(device)
        record.update(
            peak_mem_bytes=torch.cuda.max_memory_allocated(device),
            peak_mem_reserved_bytes=torch.cuda.max_memory_reserved(device),
            alloc_retries=stats.get("num_alloc_retries", 0),
            peak_mem_source="cuda.max_memory_allocated",
        )
        samples = time_samples(fn, cell.repeats, 0, device, setup)  # warmed up above
    else:
        samples = time_samples(fn, cell.repeats, cell.warmup, device, setup)
        record.update(
            peak_mem_bytes=_peak_rss_bytes(),
            mem_baseline_bytes=rss_before,
            # ru_maxrss cannot be reset: it is this cell's own peak only when the process measured
            # nothing else, which the process-per-cell executor guarantees.
            peak_mem_source="ru_maxrss" if isolated else "ru_maxrss (shared process: an upper bound)",
        )

    flops = model.flops_per_token(cell.seq_len)
    timing = summarize(samples, work)
    record.update(timing)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_flops(gpu, cell.dtype)
    # Training costs about three forward passes (forward, and backward for activations and weights).
    factor = {"train": 3.0, "prefill": 1.0, "decode": 1.0}[cell.mode]
    record.update(
        backend=model.backend,
        n_params=model.n_params(),
        state_bytes=model.state_bytes(cell.batch_size, cell.seq_len),
        flops_per_token=flops,
        achieved_flops=factor * flops * timing["tokens_per_s"],
        mfu=(factor * flops * timing["tokens_per_s"] / peak) if peak else None,
        torch_threads=torch.get_num_threads(),
    )
    return record
