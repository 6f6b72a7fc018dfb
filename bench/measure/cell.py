"""Measure one timing cell in the current process: throughput, memory, state size, FLOPs of one model.

What each mode times, per call (the report repeats it):

- ``train``: one optimizer step as users train: forward, loss, backward, gradient clipping and AdamW, with
  the accuracy cells' precision recipe (float32 master weights; bf16/fp16 cells run under autocast);
  the peak memory therefore holds weights, gradients, AdamW's two moments and the activations.
- ``prefill``: ``model.prefill(prompt)`` in inference mode, as a serving stack does it: the hidden states,
  the decoding state, and the logits of the last position only. Weights in the cell's dtype.
- ``decode``: ``decode_tokens`` calls of ``model.step`` after a prompt of seq_len tokens; the prompt is
  processed, untimed, before every call. Its memory is measured after the prompt (weights, the state and
  what a step needs); the prompt's own peak is recorded beside it as ``prompt_peak_mem_bytes``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.measure.allocations import AllocationTrace
from bench.measure.flops import peak_flops
from bench.measure.launches import count_cpu_dispatches, count_dispatches
from bench.measure.memory import ALLOCATOR_SOURCE, PeakMemory
from bench.measure.timing import summarize, time_samples, warm_up
from bench.registry import build
from bench.spec.cells import TimingCell
from bench.spec.config import TrainSettings
from bench.train import make_optimizer, non_embedding, precision

HALF = (torch.bfloat16, torch.float16)


def make_model(cell: TimingCell, device: torch.device):
    """The cell's model, seeded, and the autocast context its training runs under (a no-op otherwise)."""
    torch.manual_seed(cell.seed)
    model = build(cell.model, **cell.build_kwargs())
    if cell.mode == "train":
        return model, precision(cell.dtype, model, device)
    return model.to(device=device, dtype=getattr(torch, cell.dtype)), contextlib.nullcontext


def compiled(fn: Callable, cell: TimingCell) -> Callable:
    """``fn`` through torch.compile when the cell asks for it. Generated CPU kernels are profiled, so
    that the dispatch count sees them; decoding steps grow their state, so their shapes are dynamic."""
    if not cell.compile:
        return fn
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    return torch.compile(fn, dynamic=True if cell.mode == "decode" else None)


def step_callable(
    cell: TimingCell, model, device: torch.device, autocast: Callable[[], Any] = contextlib.nullcontext
):
    """The callable timed for the cell's mode, the tokens one call processes, and an untimed setup."""
    g = torch.Generator(device="cpu").manual_seed(cell.seed + 1)
    B, T, V = cell.batch_size, cell.seq_len, cell.vocab_size
    ids = torch.randint(0, V, (B, T), generator=g).to(device)
    if cell.mode == "train":
        model.train()
        targets = torch.randint(0, V, (B, T), generator=g).to(device)
        settings = TrainSettings()
        optimizer = make_optimizer(model, settings)

        forward = compiled(model, cell)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                logits = forward(ids)
            F.cross_entropy(logits.float().view(-1, V), targets.view(-1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()

        return train_step, B * T, None
    model.eval()
    if cell.mode == "prefill":
        run_prefill = compiled(model.prefill, cell)

        def prefill():
            with torch.inference_mode():
                run_prefill(ids)

        return prefill, B * T, None
    if cell.mode == "decode":
        tokens = torch.randint(0, V, (cell.decode_tokens, B), generator=g).to(device)
        holder: dict[str, Any] = {}

        def setup():  # a fresh state after a prompt of seq_len tokens, rebuilt before every repeat
            holder.pop("state", None)
            with torch.inference_mode():
                holder["state"] = model.prefill(ids)[1]

        step = compiled(model.step, cell)

        def decode():
            with torch.inference_mode():
                state = holder["state"]
                for t in range(cell.decode_tokens):
                    _, state = step(tokens[t], state)

        return decode, B * cell.decode_tokens, setup
    raise ValueError(f"mode {cell.mode!r} is not a timing mode")


def model_flops_per_token(cell: TimingCell, model) -> float:
    """Forward FLOPs per token of what one call of the cell computes.

    ``flops_per_token(T)`` is the model's average over a causal sequence of T tokens, head included. A
    prefill computes the head at the last position only; a decode step at context t costs the marginal
    (t + 1) f(t + 1) - t f(t), averaged over the decoded tokens."""
    T = cell.seq_len
    if cell.mode == "decode":
        n = cell.decode_tokens
        return ((T + n) * model.flops_per_token(T + n) - T * model.flops_per_token(T)) / n
    flops = model.flops_per_token(T)
    if cell.mode == "prefill":
        flops -= 2.0 * cell.d_model * cell.vocab_size * (1 - 1 / T)
    return flops


def warm_runtime(cell: TimingCell, device: torch.device) -> None:
    """Run the cell's code once on a tiny copy of its model (short sequence, small vocabulary), so that
    what PyTorch initialises on first use (the optimizer's first step alone imports ~150 MiB of compiler
    machinery, kernels and thread pools register lazily) belongs to the runtime's baseline and not to the
    model's memory. Nothing of the tiny model is kept."""
    tiny = cell.model_copy(
        update={"seq_len": min(cell.seq_len, 16), "vocab_size": min(cell.vocab_size, 64), "decode_tokens": 1}
    )
    model, autocast = make_model(tiny, device)
    fn, _, setup = step_callable(tiny, model, device, autocast)
    if setup:
        setup()
    fn()


def traced_cpu_memory(cell: TimingCell, device: torch.device) -> dict:
    """The tensor bytes at the peak of one call (and of the decode cell's prompt), counted at the CPU
    allocator, on a fresh copy of the cell's model built inside the trace, so that everything the call
    has live counts: weights, optimizer state, the decoding state, the inputs, the activations. The first
    call makes what stays between calls (AdamW's moments, caches); the second is the one measured. Its
    dispatches per token are counted from the same trace."""
    start = time.perf_counter()
    with AllocationTrace() as trace:
        model, autocast = make_model(cell, device)
        fn, work, setup = step_callable(cell, model, device, autocast)
        if setup:
            setup()
        fn()
        if setup:
            with trace.phase("prompt"):
                setup()
        with trace.phase("call"):
            fn()
    record = {
        "peak_mem_bytes": trace.peaks["call"],
        "dispatches_per_token": count_cpu_dispatches([trace.phase_events["call"]]) / work,
        "peak_mem_source": ALLOCATOR_SOURCE,
    }
    if setup:
        record["prompt_peak_mem_bytes"] = trace.peaks["prompt"]
    record["mem_trace_s"] = time.perf_counter() - start
    return record


def resident_memory(memory: PeakMemory, fn, setup, isolated: bool) -> dict:
    """The peak of one call after warm-up as the device's own counter gives it: on CUDA
    max_memory_allocated (the primary figure there), on the CPU the resident size (the gross figure, the
    runtime included; the allocator's count is the primary one)."""
    record: dict[str, Any] = {}
    cuda = memory.device.type == "cuda"
    if setup:
        memory.reset()
        setup()
        if cuda:
            record["prompt_peak_mem_bytes"] = memory.peak()
    memory.reset()
    fn()
    record.update(peak_mem_gross_bytes=memory.gross_peak(), mem_baseline_bytes=memory.baseline)
    if cuda:
        stats = torch.cuda.memory_stats(memory.device)
        record.update(
            peak_mem_bytes=memory.peak(),
            peak_mem_source=memory.source,
            peak_mem_reserved_bytes=torch.cuda.max_memory_reserved(memory.device),
            alloc_retries=stats.get("num_alloc_retries", 0),
        )
    else:
        record["peak_mem_gross_source"] = memory.source + (
            "" if isolated or memory.resettable else " (shared process: an upper bound)"
        )
    return record


def measure_cell(cell: TimingCell, isolated: bool = True) -> dict:
    """Everything measured for a timing cell (train / prefill / decode), as a flat dict."""
    device = torch.device(cell.device)
    cpu_start = time.process_time()
    if cell.threads:
        torch.set_num_threads(cell.threads)
    if device.type == "cpu":
        warm_runtime(cell, device)
    memory = PeakMemory(device)  # the runtime's baseline: after imports, before the model
    model, autocast = make_model(cell, device)
    fn, work, setup = step_callable(cell, model, device, autocast)
    warm = warm_up(fn, device, setup, min_calls=cell.warmup, max_calls=cell.warmup_max)
    record = resident_memory(memory, fn, setup, isolated)
    if device.type == "cuda":  # outside the timed region, once: the kernels one call launches, per token
        if setup:
            setup()
        record["dispatches_per_token"] = count_dispatches(fn, device) / work

    samples = time_samples(fn, cell.repeats, device, setup)
    timing = summarize(samples, work)
    record.update(timing, warmup_calls=warm.calls, warmup_settled=warm.settled)
    if cell.compile:  # the first call compiled the model: its time beyond a steady call
        record["compile_s"] = max(0.0, warm.seconds[0] - timing["median_s"])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    tf32 = torch.backends.cuda.matmul.allow_tf32
    peak = peak_flops(gpu, cell.dtype, tf32)
    flops = model_flops_per_token(cell, model)
    # Training costs about three forward passes (forward, and backward for activations and weights).
    factor = 3.0 if cell.mode == "train" else 1.0
    achieved = factor * flops * timing["tokens_per_s"]
    record.update(
        backend=model.backend,
        n_params=model.n_params(),
        n_params_non_embedding=non_embedding(model),
        state_bytes=model.state_bytes(cell.batch_size, cell.seq_len),
        forward_flops_per_token=model.flops_per_token(cell.seq_len),  # the model's own figure, head included
        flops_per_token=flops,  # of what one call of this mode computes (see model_flops_per_token)
        achieved_flops=achieved,
        peak_flops=peak,
        mfu=achieved / peak if peak else None,
        torch_threads=torch.get_num_threads(),
        # read by OpenMP when the process started (bench/running/isolation.py sets it for cells)
        thread_wait_policy=os.environ.get("OMP_WAIT_POLICY") or "OpenMP's default (spin, then sleep)",
    )
    if device.type == "cpu":
        del model, fn, setup  # the trace measures a copy of its own
        record.update(traced_cpu_memory(cell, device))
    record["cpu_s"] = time.process_time() - cpu_start  # every thread of the cell's process
    return record
