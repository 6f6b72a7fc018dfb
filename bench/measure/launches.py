"""Kernel launches: how many operator calls reach the device when a piece of code runs, the count that
bounds a small model on a GPU however fast each kernel is."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._C._profiler import _EventType
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.measure.allocations import walk

# Inductor wraps each call of a compiled graph in a record_function of this form; the generated CPU kernels
# it calls are recorded as its children, but only when compiled with cpp.enable_kernel_profile.
COMPILED_GRAPH_MARK = "## Call CompiledFxGraph"
CPU_KERNEL_PROFILE_FLAG = "torch._inductor.config.cpp.enable_kernel_profile = True"
# A Triton kernel launch marked with a record_function of this prefix (models/titans/triton_chunk.py does):
# on the CPU it runs through Triton's interpreter, whose host-side work inside the mark is not a dispatch.
TRITON_LAUNCH_MARK = "triton::"


def _is_op(event: Any) -> bool:
    return event.tag == _EventType.TorchOp


def _is_aten(event: Any) -> bool:
    return _is_op(event) and event.name.startswith("aten::")


def _is_launch(event: Any) -> bool:
    return _is_aten(event) or (_is_op(event) and event.name.startswith(TRITON_LAUNCH_MARK))


def _under_dispatch(event: Any) -> bool:
    parent = event.parent
    while parent is not None:
        if _is_launch(parent):
            return True
        parent = parent.parent
    return False


def _is_compiled_kernel(event: Any) -> bool:
    parent = event.parent
    return (
        _is_op(event)
        and parent is not None
        and parent.name.startswith(COMPILED_GRAPH_MARK)
        and not _is_aten(event)
        and not event.name.startswith("##")
    )


def count_cpu_dispatches(roots: list[Any]) -> int:
    """The operator calls in the profiler event trees under ``roots`` (the rules of ``count_dispatches``
    on the CPU), e.g. the subtree of one marked phase of an allocation trace."""
    count, regions, regions_with_kernels = 0, set(), set()
    for event in walk(roots):
        if not _is_op(event):
            continue
        if event.name.startswith(COMPILED_GRAPH_MARK):
            regions.add(event.id)
        if _is_launch(event):
            count += not _under_dispatch(event)
        elif _is_compiled_kernel(event):
            count += 1
            regions_with_kernels.add(event.parent.id)
    if regions - regions_with_kernels:
        warnings.warn(
            f"{len(regions - regions_with_kernels)} compiled region(s) recorded no generated kernel: compile "
            f"with {CPU_KERNEL_PROFILE_FLAG} so that they are counted",
            stacklevel=2,
        )
    return count


def count_dispatches(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Run ``fn()`` once under torch.profiler and count the operator calls that reach ``device``.

    On CUDA: every device-side activity the profiler records (kernels, memcpys, memsets), i.e. launches.

    On the CPU: every ``aten::`` operator call with no ``aten::`` operator above it (only outermost calls,
    so ``F.linear`` counts 1, not its transpose and matmul; a view such as ``.mT`` counts 1 too, which a GPU
    would not launch, so this errs high), plus, for code compiled by inductor, each generated kernel it
    calls: the non-aten children of inductor's "## Call CompiledFxGraph ... ##" regions, which the profiler
    records only if the code was compiled with ``torch._inductor.config.cpp.enable_kernel_profile = True``
    (a warning says so when a compiled region shows none). Extern kernels called from compiled code (bmm,
    mm) are aten calls and count through the first rule. Backward passes run by ``fn`` count alike.
    """
    device = torch.device(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    if device.type != "cpu":
        raise ValueError(f"count_dispatches counts on cpu or cuda, not {device.type}")
    return count_cpu_dispatches(prof.profiler.kineto_results.experimental_event_tree())
