"""Exact tensor memory on the CPU: the bytes PyTorch's CPU allocator hands out, counted from the allocator's
own reports, the CPU counterpart of CUDA's ``max_memory_allocated``.

PyTorch keeps no CPU memory statistics and offers no Python hook into its CPU allocator; what it has is
the allocator's reporting to the profiler: while the profiler runs with ``profile_memory``, c10's CPU
allocator reports every allocation and every free, with its address and size, as an event. Summed in
order, those events give the tensor bytes live at every moment, and their maximum over a marked phase is
that phase's peak. What counts: every tensor the cell's code allocates (weights, gradients, optimizer
state, activations, decoding states, and the temporaries an operator allocates inside itself). What does
not: the interpreter, torch's libraries, the profiler's own bookkeeping (it allocates with malloc, not
through the tensor allocator), and buffers that libraries take from malloc themselves (oneDNN and MKL
scratch space), which the resident size, kept beside it as the gross figure, still sees. Unlike the
resident size it does not depend on what the heap kept from earlier phases or on page granularity: the
same code allocates the same bytes in the same order, so rounds agree to the byte.

Only allocations made while the trace runs are known, so a trace must begin before anything it should
count exists (``bench.measure.cell.traced_cpu_memory`` builds the model inside it); a free of an older
tensor is ignored. The alternatives were worse: a TorchDispatchMode sees the outputs of operators but not
their internal temporaries and slows every operator by a Python call; an allocator of our own needs a
compiled extension.

What it costs, in CPU time on the 2-core machine: the profiler records every operator call of the traced
code, and reading the records back costs a few microseconds each; a cell's trace (a model build and one
call under the profiler, two for a training step) took as long as 1.7-4 prefill calls, 6-10 training
steps, or, for decode, about one and a half prompts; about a quarter of the default run's timing cells'
time, which pays for the dispatch count too (counted from the same records).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from typing import Any

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function

PHASE_PREFIX = "bench::phase::"


def walk(roots: list[Any]) -> Iterator[Any]:
    """Every event of a profiler event tree, depth first."""
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


class AllocationTrace:
    """Counts the CPU allocator's bytes while active; ``phase(name)`` marks a stretch whose peak is wanted.

    ``peaks[name]``: the most tensor bytes live at once during the phase, counting every allocation made
    since the trace began and not yet freed (what was live before the trace is not known, and not
    counted). ``phase_events[name]``: the profiler's event for the phase, whose subtree holds the operator
    calls made inside it (for counting dispatches from the same run)."""

    def __init__(self) -> None:
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.peaks: dict[str, int] = {}
        self.phase_events: dict[str, Any] = {}
        self.allocated_bytes = 0  # live at the trace's end, of what it saw allocated

    def __enter__(self) -> AllocationTrace:
        self._profile.__enter__()
        return self

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with record_function(PHASE_PREFIX + name):
            yield

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        if exc[0] is None:
            self._count(self._profile.profiler.kineto_results.experimental_event_tree())

    def _count(self, roots: list[Any]) -> None:
        allocations = []
        for node in walk(roots):
            if node.tag == _EventType.Allocation:
                fields = node.extra_fields
                allocations.append((node.start_time_ns, fields.ptr, fields.alloc_size))
            elif node.tag == _EventType.TorchOp and node.name.startswith(PHASE_PREFIX):
                self.phase_events[node.name[len(PHASE_PREFIX) :]] = node
        allocations.sort(key=lambda a: a[0])  # the tree groups events by thread; the heap is one, in time
        times, totals = live_totals(allocations)
        self.allocated_bytes = totals[-1] if totals else 0
        for name, node in self.phase_events.items():
            first = bisect.bisect_left(times, node.start_time_ns)
            last = bisect.bisect_right(times, node.end_time_ns)
            at_start = totals[first - 1] if first else 0  # a phase may allocate nothing at all
            self.peaks[name] = max([at_start, *totals[first:last]])


def live_totals(allocations: list[tuple[int, int, int]]) -> tuple[list[int], list[int]]:
    """(time, ptr, size) events, in time order (size < 0 for a free) -> the events' times and the bytes
    live after each. A free of an allocation the trace never saw (older than the trace) changes nothing."""
    live: dict[int, int] = {}
    times, totals, total = [], [], 0
    for time_ns, ptr, size in allocations:
        if size > 0:
            live[ptr] = size
            total += size
        else:
            total -= live.pop(ptr, 0)
        times.append(time_ns)
        totals.append(total)
    return times, totals
