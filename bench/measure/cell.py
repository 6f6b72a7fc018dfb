"""Measure one timing cell in the current process: throughput, memory, state size, FLOPs of one model.

What each mode times, per call (the report repeats it):

- ``train``: one optimizer step as users train: forward, loss, backward, gradient clipping and AdamW, with
  the accuracy cells' precision recipe (float32 master weights; bf16/fp16 cells run under autocast);
  the peak memory therefore holds weights, gradients, AdamW's two moments and the activations.
- ``prefill``: ``model.prefill(prompt)`` in inference mode, as a serving stack does it: the hidden states,
  the decoding state, and the logits of the last position only. Weights in the cell's dtype.
- ``decode``: ``decode_tokens`` calls of ``model.step`` after a prompt of seq_len tokens; the prompt is
  processed once, untimed, and every call starts from a fresh copy of its state. Its memory is measured
  after the prompt (weights, the state and what a step needs); the prompt's own peak is recorded beside it
  as ``prompt_peak_mem_bytes``.
"""

from __future__ import annotations

import contextlib
import copy
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
from bench.registry import build, model_config
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
        setup = PromptState(model, ids)
        holder = setup.holder
        step = compiled(model.step, cell)

        def decode():
            with torch.inference_mode():
                state = holder["state"]
                for t in range(cell.decode_tokens):
                    _, state = step(tokens[t], state)

        return decode, B * cell.decode_tokens, setup
    raise ValueError(f"mode {cell.mode!r} is not a timing mode")


class PromptState:
    """A decode cell's untimed setup: the state after a prompt of seq_len tokens, in ``holder["state"]``.

    Called before every decoding call, it processes the prompt the first time and afterwards gives a fresh
    copy of that prompt's state (the steps replace the state, so each call needs its own), which costs a
    copy instead of a whole prefill: at T = 4096 the prefill before each call would cost more than the
    steps timed. ``prompt()`` processes the prompt again, as the memory trace's prompt phase does. A state
    that cannot be copied is rebuilt by a prefill each time."""

    def __init__(self, model, ids: torch.Tensor):
        self.model, self.ids, self.holder = model, ids, {}
        self.copyable = True

    def prompt(self) -> None:
        self.holder.clear()  # the previous state goes before the prompt makes the next
        with torch.inference_mode():
            self.holder["prompt"] = self.holder["state"] = self.model.prefill(self.ids)[1]

    def __call__(self) -> None:
        if "prompt" not in self.holder or not self.copyable:
            self.prompt()
            return
        self.holder.pop("state", None)
        try:
            with torch.inference_mode():
                self.holder["state"] = copy.deepcopy(self.holder["prompt"])
        except Exception:  # noqa: BLE001 - a plug-in's state that deepcopy cannot copy: prefill again
            self.copyable = False
            self.prompt()


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
        if cell.mode == "train":
            fn()
        if setup:
            with trace.phase("prompt"):
                setup.prompt()
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


def cuda_memory(memory: PeakMemory, fn, setup) -> dict:
    """The CUDA figures of one call after warm-up: ``max_memory_allocated`` (the prompt's apart)."""
    record: dict[str, Any] = {}
    if setup:
        memory.reset()
        setup.prompt()
        record["prompt_peak_mem_bytes"] = memory.peak()
    memory.reset()
    fn()
    stats = torch.cuda.memory_stats(memory.device)
    return record | dict(
        peak_mem_bytes=memory.peak(),
        peak_mem_gross_bytes=memory.gross_peak(),
        peak_mem_source=memory.source,
        peak_mem_reserved_bytes=torch.cuda.max_memory_reserved(memory.device),
        alloc_retries=stats.get("num_alloc_retries", 0),
    )


def resident_memory(memory: PeakMemory, isolated: bool) -> dict:
    """The CPU's gross figure: the resident size at its peak over the timed calls (reset before them;
    for decode the copies of the prompt's state between calls included), the runtime included."""
    return dict(
        peak_mem_gross_bytes=memory.gross_peak(),
        mem_baseline_bytes=memory.baseline,
        peak_mem_gross_source=memory.source
        + ("" if isolated or memory.resettable else " (shared process: an upper bound)"),
    )


def measure_cell(cell: TimingCell, isolated: bool = True) -> dict:
    """Everything measured for a timing cell (train / prefill / decode), as a flat dict."""
    device = torch.device(cell.device)
    cpu_start = time.process_time()
    if cell.threads:
        torch.set_num_threads(cell.threads)
    # The runtime's resident size after imports and before the model, for reading the CPU's gross figure
    # against (what PyTorch initialises on first use, the optimizer's machinery say, lands in the gross
    # figure: the exact count never sees it).
    memory = PeakMemory(device)
    model, autocast = make_model(cell, device)
    fn, work, setup = step_callable(cell, model, device, autocast)
    warm = warm_up(fn, device, setup, min_calls=cell.warmup, max_calls=cell.warmup_max)
    record: dict[str, Any] = {}
    if device.type == "cuda":  # outside the timed region, once: the kernels one call launches, per token
        record.update(cuda_memory(memory, fn, setup))
        if setup:
            setup()
        record["dispatches_per_token"] = count_dispatches(fn, device) / work

    memory.reset()
    samples = time_samples(fn, cell.repeats, device, setup)
    if device.type == "cpu":
        record.update(resident_memory(memory, isolated))
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
        model_settings=model_config(cell.model, cell.build_kwargs()),
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
