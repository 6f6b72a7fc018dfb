"""Running an op on a sequence cut in two, the second part continuing from the first's final state."""

from __future__ import annotations

from collections.abc import Callable

import torch


def carried(
    op: Callable, at: int, time_dims: dict[str, int], out_time_dim: int, state_name: str, **fixed
) -> Callable:
    """``op`` as two calls: tokens [0, at) from the inputs' initial state (if any), then [at, T) from the
    first call's final state, kept in the graph so gradients cross the cut. ``op`` returns (output, final
    state); ``time_dims`` names the time dim of every input that has one. Returns a function of the same
    inputs giving (the two outputs concatenated along ``out_time_dim``, the second call's final state)."""

    def run(**inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def part(start: int, stop: int | None) -> dict[str, torch.Tensor]:
            out = {}
            for name, x in inputs.items():
                dim = time_dims.get(name)
                if dim is None:
                    out[name] = x
                else:
                    end = x.shape[dim] if stop is None else stop
                    out[name] = x.narrow(dim, start, end - start)
            return out

        first, second = part(0, at), part(at, None)
        out_first, state = op(**first, **fixed)
        out_second, state = op(**{**second, state_name: state}, **fixed)
        return torch.cat([out_first, out_second], dim=out_time_dim), state

    return run
