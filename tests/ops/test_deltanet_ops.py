"""DeltaNet / Gated DeltaNet operators: the chunked forms equal the per-token references (forward, final
state and gradients, the initial state's included), every path run on a sequence cut in two with the
state carried equals the whole, and the references equal fla's own naive implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.deltanet import (
    delta_rule_chunked,
    delta_rule_recurrent,
    gated_delta_rule_chunked,
    gated_delta_rule_recurrent,
)
from tests import upstream
from tests.ops.split import carried

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest error relative to the largest expected magnitude (absolute where that is exactly zero,
    as for the gradient on the first decay when there is no initial state)."""
    scale = expected.double().abs().max().item() or 1.0
    return (actual.double() - expected.double()).abs().max().item() / scale


def make_inputs(batch=2, heads=2, length=37, dk=8, dv=6, dtype=torch.float64, gated=False, initial=False):
    """Leaf tensors as a DeltaNet layer would feed them: unit-norm keys, beta in (0, 1), g <= 0."""
    gen = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    inputs = {
        "q": randn(batch, heads, length, dk),
        "k": F.normalize(randn(batch, heads, length, dk), dim=-1),
        "v": randn(batch, heads, length, dv),
        "beta": randn(batch, heads, length).sigmoid(),
    }
    if gated:
        inputs["g"] = F.logsigmoid(randn(batch, heads, length) + 2.0)
    if initial:
        inputs["initial_state"] = randn(batch, heads, dk, dv)
    return {name: x.requires_grad_() for name, x in inputs.items()}


def run_with_grads(op, inputs: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Output, final state and the gradients of a fixed random functional of both."""
    inputs = {name: x.detach().clone().requires_grad_() for name, x in inputs.items()}
    o, state = op(**inputs, **kwargs)
    gen = torch.Generator().manual_seed(2)
    w_o = torch.randn(o.shape, generator=gen, dtype=o.dtype)
    w_s = torch.randn(state.shape, generator=gen, dtype=state.dtype)
    ((o * w_o).sum() + (state * w_s).sum()).backward()
    return o.detach(), state.detach(), {name: x.grad for name, x in inputs.items()}


CASES = [  # (length, chunk_size): divisible, not divisible, shorter than one chunk, a single token
    (32, 8),
    (37, 8),
    (37, 16),
    (5, 16),
    (1, 4),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("length,chunk", CASES)
@pytest.mark.parametrize("gated", [False, True])
def test_chunked_equals_recurrent(gated, length, chunk, initial, dtype):
    inputs = make_inputs(length=length, dtype=dtype, gated=gated, initial=initial)
    reference, chunked = (
        (gated_delta_rule_recurrent, gated_delta_rule_chunked)
        if gated
        else (delta_rule_recurrent, delta_rule_chunked)
    )
    o_ref, s_ref, g_ref = run_with_grads(reference, inputs)
    o, s, g = run_with_grads(chunked, inputs, chunk_size=chunk)
    tol = TOL[dtype]
    assert o.dtype == dtype and s.shape == s_ref.shape
    assert rel_err(o, o_ref) < tol
    assert rel_err(s, s_ref) < tol
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < tol, name


@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_chunked_equals_recurrent_with_negative_eigenvalues(gated, initial):
    """beta in (0, 2), as DeltaNet's ``allow_neg_eigval`` makes it: the transition I - beta k k^T then has
    a negative eigenvalue along k wherever beta > 1, and the chunked form must still equal the reference."""
    inputs = make_inputs(length=37, gated=gated, initial=initial)
    inputs["beta"] = (2 * inputs["beta"].detach()).requires_grad_()
    assert inputs["beta"].max() > 1.5 and inputs["beta"].min() < 0.5
    reference, chunked = (
        (gated_delta_rule_recurrent, gated_delta_rule_chunked)
        if gated
        else (delta_rule_recurrent, delta_rule_chunked)
    )
    o_ref, s_ref, g_ref = run_with_grads(reference, inputs)
    o, s, g = run_with_grads(chunked, inputs, chunk_size=8)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 1e-10, name


TIME_DIMS = {"q": 2, "k": 2, "v": 2, "beta": 2, "g": 2}


@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("length,at,chunk", [(37, 13, 8), (37, 1, 8), (37, 36, 16), (64, 24, 16)])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_state_carried_across_a_cut_equals_the_whole(gated, chunked, length, at, chunk, initial):
    """Outputs, final state and every gradient (the initial state's too, and through the carried state)
    as if the sequence had been run whole; the cuts fall inside chunks, after the first token and before
    the last."""
    inputs = make_inputs(length=length, gated=gated, initial=initial)
    if gated:
        op = gated_delta_rule_chunked if chunked else gated_delta_rule_recurrent
    else:
        op = delta_rule_chunked if chunked else delta_rule_recurrent
    kwargs = {"chunk_size": chunk} if chunked else {}
    o_ref, s_ref, g_ref = run_with_grads(op, inputs, **kwargs)
    o, s, g = run_with_grads(carried(op, at, TIME_DIMS, 2, "initial_state", **kwargs), inputs)
    assert rel_err(o, o_ref) < 1e-10 and rel_err(s, s_ref) < 1e-10
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 1e-10, name


def test_beta_two_is_a_reflection():
    """With v = 0 and beta = 2 the update is S <- (I - 2 k k^T) S, a Householder reflection: the same key
    twice gives S back, and S's component along k flips sign after once (eigenvalue -1; beta <= 1 can
    only shrink it)."""
    inputs = make_inputs(batch=1, heads=1, length=2, initial=True)
    k = inputs["k"].detach()[:, :, :1].expand(1, 1, 2, -1).contiguous()  # the same key twice
    v = torch.zeros_like(inputs["v"].detach())
    beta = torch.full((1, 1, 2), 2.0, dtype=torch.float64)
    q, s0 = inputs["q"].detach(), inputs["initial_state"].detach()
    for op in (delta_rule_recurrent, delta_rule_chunked):
        _, once = op(q[:, :, :1], k[:, :, :1], v[:, :, :1], beta[:, :, :1], initial_state=s0)
        _, twice = op(q, k, v, beta, initial_state=s0)
        along = k[0, 0, 0] @ s0[0, 0]
        torch.testing.assert_close(k[0, 0, 0] @ once[0, 0], -along, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(twice, s0, rtol=1e-12, atol=1e-12)


def test_explicit_scale_and_zero_gate():
    """A log decay of 0 is no decay: the gated rule reduces to the plain one, for any scale."""
    inputs = make_inputs(gated=True, initial=True)
    plain = {name: x for name, x in inputs.items() if name != "g"}
    o_gated, s_gated = gated_delta_rule_chunked(**{**inputs, "g": torch.zeros_like(inputs["g"])}, scale=0.3)
    o_plain, s_plain = delta_rule_recurrent(**plain, scale=0.3)
    assert rel_err(o_gated, o_plain) < 1e-10
    assert rel_err(s_gated, s_plain) < 1e-10


def test_half_precision_inputs_keep_their_dtype():
    inputs = {name: x.detach().to(torch.bfloat16) for name, x in make_inputs(gated=True).items()}
    o, state = gated_delta_rule_chunked(**inputs)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    o_ref, _ = gated_delta_rule_recurrent(**inputs)
    assert rel_err(o, o_ref) < 1e-2


@pytest.mark.upstream
@pytest.mark.parametrize("initial", [False, True])
def test_recurrent_matches_fla_delta_rule(initial):
    fla_recurrence = upstream.require(upstream.fla_delta_rule_recurrence, "fla")
    inputs = {name: x.detach() for name, x in make_inputs(dtype=torch.float32, initial=initial).items()}
    o_fla, s_fla = fla_recurrence(
        inputs["q"], inputs["k"], inputs["v"], inputs["beta"], initial_state=inputs.get("initial_state")
    )
    o, s = delta_rule_recurrent(**inputs)
    assert rel_err(o, o_fla) < 1e-5
    assert rel_err(s, s_fla) < 1e-5
    o, s = delta_rule_chunked(**inputs, chunk_size=16)
    assert rel_err(o, o_fla) < 1e-4
    assert rel_err(s, s_fla) < 1e-4


@pytest.mark.upstream
def test_chunked_matches_fla_delta_rule_chunkwise():
    fla_chunkwise = upstream.require(upstream.fla_delta_rule_chunkwise, "fla")
    inputs = {name: x.detach() for name, x in make_inputs(length=64, dtype=torch.float32).items()}
    o_fla, s_fla = fla_chunkwise(inputs["q"], inputs["k"], inputs["v"], inputs["beta"], chunk_size=16)
    o, s = delta_rule_chunked(**inputs, chunk_size=32)
    assert rel_err(o, o_fla) < 1e-4
    assert rel_err(s, s_fla) < 1e-4


@pytest.mark.upstream
@pytest.mark.parametrize("initial", [False, True])
def test_recurrent_matches_fla_gated_delta_rule(initial):
    fla_recurrence = upstream.require(upstream.fla_gated_delta_rule_recurrence, "fla")
    inputs = {
        name: x.detach() for name, x in make_inputs(dtype=torch.float32, gated=True, initial=initial).items()
    }

    def time_major(x: torch.Tensor) -> torch.Tensor:  # fla's gated reference takes [B, T, H, ...]
        return x.transpose(1, 2)

    o_fla, s_fla = fla_recurrence(
        *(time_major(inputs[name]) for name in ("q", "k", "v", "beta", "g")),
        initial_state=inputs.get("initial_state"),
        output_final_state=True,
    )
    o_fla = time_major(o_fla)
    o, s = gated_delta_rule_recurrent(**inputs)
    assert rel_err(o, o_fla) < 1e-5
    assert rel_err(s, s_fla) < 1e-5
    o, s = gated_delta_rule_chunked(**inputs, chunk_size=16)
    assert rel_err(o, o_fla) < 1e-4
    assert rel_err(s, s_fla) < 1e-4


@pytest.mark.upstream
@pytest.mark.parametrize("initial", [False, True])
def test_chunked_matches_fla_gated_delta_rule_chunk(initial):
    """fla's chunked reference for the gated rule (not loaded by tests/upstream.py: only this test uses it)
    takes an initial state and any length: outputs, final state and every gradient, the initial state's
    included, in float32 (where the reference computes)."""
    module = upstream.require(lambda: upstream._fla_naive("gated_delta_rule"), "fla")
    fla_chunk = module.naive_chunk_gated_delta_rule
    inputs = make_inputs(dtype=torch.float32, gated=True, initial=initial)

    def theirs(q, k, v, g, beta, initial_state=None):
        o, s = fla_chunk(
            *(x.transpose(1, 2) for x in (q, k, v, g, beta)),
            chunk_size=16,
            initial_state=initial_state,
            output_final_state=True,
        )
        return o.transpose(1, 2), s

    o_fla, s_fla, g_fla = run_with_grads(theirs, inputs)
    o, s, g = run_with_grads(gated_delta_rule_chunked, inputs, chunk_size=8)
    assert rel_err(o, o_fla) < 1e-5 and rel_err(s, s_fla) < 1e-5
    for name in g_fla:
        assert rel_err(g[name], g_fla[name]) < 1e-5, name
