"""Shared layers: the causal convolution's one-token paths equal its whole-sequence form."""

from __future__ import annotations

import pytest
import torch

from models.modules import CausalConv1d


@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv_token_by_token_equals_whole_sequence(bias: bool) -> None:
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4, bias=bias).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y_full, state_full = conv(x)
    state, ys_forward, ys_step = None, [], []
    step_state = conv.init_state(2, "cpu", torch.float64)
    for t in range(9):
        y, state = conv(x[:, t : t + 1], state)  # the first call has no state: the whole-sequence path
        ys_forward.append(y)
        y_step, step_state = conv.step(x[:, t], step_state)
        ys_step.append(y_step)
    assert torch.allclose(torch.cat(ys_forward, 1), y_full, rtol=1e-12, atol=1e-12)
    assert torch.allclose(torch.stack(ys_step, 1), y_full, rtol=1e-12, atol=1e-12)
    assert torch.equal(state, state_full) and torch.equal(step_state, state_full)
