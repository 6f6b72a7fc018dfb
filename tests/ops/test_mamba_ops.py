"""Mamba / Mamba2 operators: the blocked selective scan and the chunked SSD equal their per-step
references (forward, final state and gradients, the initial state's included), every path run on a
sequence cut in two with the state carried equals the whole, the decoding steps agree with the scans,
and the references equal mamba-ssm's own pure-PyTorch ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.mamba import (
    selective_scan,
    selective_scan_recurrent,
    selective_state_update,
    ssd_chunked,
    ssd_recurrent,
    ssd_step,
)
from tests import upstream
from tests.ops.split import carried

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest error relative to the largest expected magnitude (absolute where that is exactly zero)."""
    scale = expected.double().abs().max().item() or 1.0
    return (actual.double() - expected.double()).abs().max().item() / scale


def with_grads(op, inputs: dict, **kwargs) -> tuple[list[torch.Tensor], dict]:
    """Outputs of ``op`` and the gradients of a fixed random functional of all of them."""
    inputs = {name: x.detach().clone().requires_grad_() for name, x in inputs.items()}
    outputs = op(**inputs, **kwargs)
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    gen = torch.Generator().manual_seed(2)
    loss = sum((out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum() for out in outputs)
    loss.backward()
    return [out.detach() for out in outputs], {name: x.grad for name, x in inputs.items()}


def assert_same(op_a, op_b, inputs: dict, tol: float, kwargs_a=None, kwargs_b=None) -> None:
    outs_a, grads_a = with_grads(op_a, inputs, **(kwargs_a or {}))
    outs_b, grads_b = with_grads(op_b, inputs, **(kwargs_b or {}))
    for out_a, out_b in zip(outs_a, outs_b, strict=True):
        assert out_a.shape == out_b.shape and out_a.dtype == out_b.dtype
        assert rel_err(out_a, out_b) < tol
    for name in grads_b:
        assert rel_err(grads_a[name], grads_b[name]) < tol, name


def scan_inputs(
    batch=2, dim=6, d_state=4, length=37, groups=0, dtype=torch.float64, initial=False, full=True
):
    """Selective-scan inputs as Mamba produces them: A < 0, delta through softplus with a bias.
    ``groups`` 0 means B, C of shape (b, N, L), otherwise (b, G, N, L)."""
    gen = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    bc_shape = (batch, d_state, length) if groups == 0 else (batch, groups, d_state, length)
    inputs = {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) - 1.0,
        "A": -torch.exp(randn(dim, d_state)),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
    }
    if full:
        inputs |= {"D": randn(dim), "z": randn(batch, dim, length), "delta_bias": 0.5 * randn(dim)}
    if initial:
        inputs["initial_state"] = randn(batch, dim, d_state)
    return inputs


SCAN_CASES = [  # (length, chunk_size); None picks it from the sizes
    (37, None),
    (37, 8),
    (64, 16),
    (5, 16),
    (1, None),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("length,chunk", SCAN_CASES)
def test_selective_scan_equals_recurrent(length, chunk, initial, dtype):
    inputs = scan_inputs(length=length, dtype=dtype, initial=initial)
    kwargs = dict(delta_softplus=True, return_last_state=True)
    assert_same(
        selective_scan, selective_scan_recurrent, inputs, TOL[dtype], {**kwargs, "chunk_size": chunk}, kwargs
    )


@pytest.mark.parametrize("groups", [1, 3])
def test_selective_scan_groups_equal_recurrent(groups):
    inputs = scan_inputs(groups=groups, initial=True, full=False)
    kwargs = dict(delta_softplus=True, return_last_state=True)
    assert_same(selective_scan, selective_scan_recurrent, inputs, 1e-10, {**kwargs, "chunk_size": 8}, kwargs)


def test_selective_scan_bfloat16_keeps_dtype():
    inputs = {name: x.to(torch.bfloat16) for name, x in scan_inputs().items()}
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert rel_err(out, selective_scan_recurrent(**inputs, delta_softplus=True)) < 1e-2


SCAN_TIME_DIMS = {"u": -1, "delta": -1, "z": -1, "B": -1, "C": -1}
# (length, cut, chunk_size): cuts inside a block or chunk, after the first token, before the last
SPLITS = [
    (37, 13, 8),
    (37, 1, 8),
    (37, 36, 16),
    (64, 24, 16),
]


@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("length,at,chunk", SPLITS)
@pytest.mark.parametrize("chunked", [False, True])
def test_selective_scan_carries_its_state_across_a_cut(chunked, length, at, chunk, initial):
    """Outputs, final state and every gradient (the initial state's too, and through the carried state)
    as if the sequence had been scanned whole."""
    inputs = scan_inputs(length=length, initial=initial, groups=0 if initial else 2)  # B, C both layouts
    kwargs = dict(delta_softplus=True, return_last_state=True)
    op, op_kwargs = (
        (selective_scan, kwargs | {"chunk_size": chunk}) if chunked else (selective_scan_recurrent, kwargs)
    )
    split = carried(op, at, SCAN_TIME_DIMS, -1, "initial_state", **op_kwargs)
    assert_same(split, op, inputs, 1e-10, kwargs_b=op_kwargs)


def test_selective_state_update_steps_through_the_scan():
    inputs = scan_inputs(length=9, initial=True)
    out, last = selective_scan_recurrent(**inputs, delta_softplus=True, return_last_state=True)
    state = inputs["initial_state"]
    for t in range(9):
        y, state = selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t],
            inputs["C"][..., t], D=inputs["D"], z=inputs["z"][..., t], dt_bias=inputs["delta_bias"],
            dt_softplus=True,
        )  # fmt: skip
        assert rel_err(y, out[..., t]) < 1e-12
    assert rel_err(state, last) < 1e-12


def ssd_inputs(
    batch=2, length=37, heads=4, head_dim=3, d_state=5, groups=2, dtype=torch.float64, initial=False
):
    """SSD inputs as Mamba2 produces them: X and A already multiplied by dt, A < 0."""
    gen = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    dt = F.softplus(randn(batch, length, heads) - 1.0)
    inputs = {
        "X": randn(batch, length, heads, head_dim) * dt[..., None],
        "A": -torch.exp(randn(heads)) * dt,
        "B": randn(batch, length, groups, d_state),
        "C": randn(batch, length, groups, d_state),
    }
    if initial:
        inputs["initial_states"] = randn(batch, heads, head_dim, d_state)
    return inputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("length,chunk", [(37, 8), (64, 16), (5, 16), (1, 4)])
@pytest.mark.parametrize("groups", [1, 4])
def test_ssd_chunked_equals_recurrent(groups, length, chunk, initial, dtype):
    inputs = ssd_inputs(length=length, groups=groups, dtype=dtype, initial=initial)
    assert_same(ssd_chunked, ssd_recurrent, inputs, TOL[dtype], {"chunk_size": chunk})


SSD_TIME_DIMS = {"X": 1, "A": 1, "B": 1, "C": 1}


@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("length,at,chunk", SPLITS)
@pytest.mark.parametrize("chunked", [False, True])
def test_ssd_carries_its_state_across_a_cut(chunked, length, at, chunk, initial):
    inputs = ssd_inputs(length=length, initial=initial)
    op, op_kwargs = (ssd_chunked, {"chunk_size": chunk}) if chunked else (ssd_recurrent, {})
    split = carried(op, at, SSD_TIME_DIMS, 1, "initial_states", **op_kwargs)
    assert_same(split, op, inputs, 1e-10, kwargs_b=op_kwargs)


def test_mamba2_step_is_the_head_form_of_the_selective_state_update():
    """Mamba2's decoding step through selective_state_update (A, dt broadcast over the head dims)
    is ssd_step."""
    gen = torch.Generator().manual_seed(4)
    batch, heads, head_dim, d_state, groups = 2, 4, 3, 5, 2
    state = torch.randn(batch, heads, head_dim, d_state, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, heads, head_dim, generator=gen, dtype=torch.float64)
    dt = F.softplus(torch.randn(batch, heads, generator=gen, dtype=torch.float64))
    A = -torch.rand(heads, generator=gen, dtype=torch.float64)
    B, C = torch.randn(2, batch, groups, d_state, generator=gen, dtype=torch.float64)
    y, new_state = selective_state_update(
        state, x, dt[..., None].expand(-1, -1, head_dim), A[:, None, None].expand(-1, head_dim, d_state), B, C
    )
    y_ssd, state_ssd = ssd_step(state, x * dt[..., None], A * dt, B, C)
    assert rel_err(y, y_ssd) < 1e-12 and rel_err(new_state, state_ssd) < 1e-12


@pytest.mark.upstream
@pytest.mark.parametrize("groups", [0, 2])
@pytest.mark.parametrize("full", [False, True])
def test_selective_scan_matches_mamba_ssm(full, groups):
    reference = upstream.require(upstream.mamba_selective_scan_ref, "mamba-ssm")
    inputs = scan_inputs(dtype=torch.float32, full=full, groups=groups)
    kwargs = dict(delta_softplus=True, return_last_state=True)
    # the reference's backward runs through its Python loop: fine at this length
    assert_same(selective_scan, reference, inputs, 1e-4, kwargs, kwargs)
    assert_same(selective_scan_recurrent, reference, inputs, 1e-4, kwargs, kwargs)


@pytest.mark.upstream
@pytest.mark.parametrize("heads", [False, True])
def test_selective_state_update_matches_mamba_ssm(heads):
    reference = upstream.require(upstream.mamba_selective_state_update_ref, "mamba-ssm")
    gen = torch.Generator().manual_seed(5)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    batch, dim, d_state = 2, 6, 4
    lead = (batch, 4, dim) if heads else (batch, dim)  # head form: 4 heads of dim channels, 2 groups
    param = lead[1:]
    bc = (batch, 2, d_state) if heads else (batch, d_state)
    args = (
        randn(*lead, d_state),
        randn(*lead),
        randn(*lead),
        -torch.exp(randn(*param, d_state)),
        randn(*bc),
        randn(*bc),
    )
    kwargs = dict(D=randn(*param), z=randn(*lead), dt_bias=randn(*param), dt_softplus=True)
    state = args[0].clone()
    y_ref = reference(state, *args[1:], **kwargs)  # updates state in place
    y, new_state = selective_state_update(*args, **kwargs)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(new_state, state) < 1e-5


@pytest.mark.upstream
@pytest.mark.parametrize("initial", [False, True])
def test_ssd_matches_mamba_ssm(initial):
    reference = upstream.require(upstream.mamba_ssd_minimal_discrete, "mamba-ssm")
    # ssd_minimal_discrete takes B, C per head, needs the length divisible by the chunk and runs in
    # the inputs' dtype, so float64 can be compared tightly
    inputs = ssd_inputs(length=48, groups=4, initial=initial)
    initial_states = inputs.get("initial_states")
    y_ref, state_ref = reference(
        inputs["X"], inputs["A"], inputs["B"], inputs["C"], 16,
        initial_states=None if initial_states is None else initial_states[:, None],
    )  # fmt: skip
    for chunk in (16, 13):
        y, state = ssd_chunked(**inputs, chunk_size=chunk)
        assert rel_err(y, y_ref) < 1e-10 and rel_err(state, state_ref) < 1e-10
    y, state = ssd_recurrent(**inputs)
    assert rel_err(y, y_ref) < 1e-10 and rel_err(state, state_ref) < 1e-10
