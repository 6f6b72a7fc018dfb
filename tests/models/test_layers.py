"""Shared layers: the causal convolution equals F.conv1d and its one-token paths its whole-sequence form."""

from __future__ import annotations

import pytest
import torch

from models.modules import CausalConv1d
from models.modules.state import detach_state


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


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv_equals_conv1d_with_gradients(bias: bool, with_state: bool) -> None:
    """The shifted multiply-adds against PyTorch's depthwise convolution over the inputs padded on the
    left (with zeros, or with the state given): outputs and gradients w.r.t. input, state, weight, bias."""
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4, bias=bias, activation=None).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True) if with_state else None
    y, new_state = conv(x, state)
    left = state if with_state else x.new_zeros(2, 3, 6)
    padded = torch.cat([left, x], dim=1).transpose(1, 2)
    expected = torch.nn.functional.conv1d(padded, conv.weight, conv.bias, groups=6).transpose(1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(new_state, x[:, -3:])
    grad = torch.randn_like(y)
    leaves = [x, conv.weight] + ([conv.bias] if bias else []) + ([state] if with_state else [])
    got = torch.autograd.grad(y, leaves, grad)
    want = torch.autograd.grad(expected, leaves, grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "sdpa-math"])
@pytest.mark.parametrize("window, n_sink", [(3, 0), (4, 2), (5, 6), (40, 0)])
def test_windowed_attention_continues_from_its_state(window: int, n_sink: int, backend: str) -> None:
    """forward_from over windows of a sequence, the cache carried (not detached), equals forward on the
    whole: outputs and gradients; and step goes on from the cache it returns."""
    from models.modules import Attention

    torch.manual_seed(0)
    attention = Attention(16, 2, window=window, n_sink=n_sink, backend=backend).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64, requires_grad=True)
    full = attention(x)
    (g_full,) = torch.autograd.grad(full[:, :21].square().sum(), x)
    state, outs = None, []
    for a, b in ((0, 2), (2, 9), (9, 10), (10, 21)):
        y, state = attention.forward_from(x[:, a:b], state)
        outs.append(y)
    split = torch.cat(outs, 1)
    torch.testing.assert_close(split, full[:, :21], rtol=1e-12, atol=1e-12)
    (g_split,) = torch.autograd.grad(split.square().sum(), x)
    torch.testing.assert_close(g_split, g_full, rtol=1e-12, atol=1e-12)
    assert state.k.shape[2] == min(21, window + n_sink)  # the cache never holds more than it must
    with torch.no_grad():  # decoding after a state built by forward_from (step writes its cache in place)
        state = detach_state(state)
        for t in range(21, 23):
            y, state = attention.step(x[:, t], state)
            torch.testing.assert_close(y, full[:, t], rtol=1e-12, atol=1e-12)


def test_full_attention_has_no_bounded_state_to_continue_from() -> None:
    from models.modules import Attention

    attention = Attention(16, 2).double()
    assert not attention.supports_state_passing
    with pytest.raises(NotImplementedError, match="state passing needs a window"):
        attention.forward_from(torch.randn(1, 3, 16, dtype=torch.float64), None)
