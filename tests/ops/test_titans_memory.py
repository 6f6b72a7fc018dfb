"""The chunked and the token-by-token (decoding) Titans memory against the per-token reference: outputs,
final state and gradients."""

from __future__ import annotations

import functools

import pytest
import torch

from models.titans import (
    MemoryState,
    chunk_titans_memory,
    fused_recurrent_titans_memory,
    memory_grads,
    naive_recurrent_titans_memory,
)

B, H, D, HIDDEN = 2, 3, 5, 7
GATE_NAMES = ("theta", "eta", "alpha")


def make_inputs(T: int, n_layers: int, dtype: torch.dtype, gates: str = "random", seed: int = 0) -> dict:
    """Random inputs that require grad. gates: random | no_momentum | no_decay | plain | strong."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=dtype)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    sizes = [D] + [HIDDEN] * (n_layers - 1) + [D]
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    params = tuple(randn(H, d_out, d_in) / d_in**0.5 for d_in, d_out in pairs)
    k = torch.nn.functional.normalize(randn(B, H, T, D), dim=-1)
    inputs = dict(q=randn(B, H, T, D), k=k, v=randn(B, H, T, D), theta=0.3 * rand(B, H, T))
    inputs["eta"], inputs["alpha"] = rand(B, H, T), 0.5 * rand(B, H, T)
    if gates in ("no_momentum", "plain"):
        inputs["eta"] = torch.zeros(B, H, T, dtype=dtype)
    if gates in ("no_decay", "plain"):
        inputs["alpha"] = torch.zeros(B, H, T, dtype=dtype)
    if gates == "strong":  # eta and 1 - alpha near 0.5: products shrink by ~2^-64 over a chunk of 64
        inputs["eta"], inputs["alpha"] = 0.45 + 0.1 * rand(B, H, T), 0.45 + 0.1 * rand(B, H, T)
    for name, t in inputs.items():
        inputs[name] = t.requires_grad_()
    inputs["params"] = tuple(p.requires_grad_() for p in params)
    return inputs


def call(fn, inputs: dict, sl: slice = slice(None), **kwargs) -> tuple[torch.Tensor, MemoryState]:
    q, k, v = (inputs[n][:, :, sl] for n in ("q", "k", "v"))
    theta, eta, alpha = (inputs[n][:, :, sl] for n in GATE_NAMES)
    return fn(q, k, v, theta, eta, alpha, inputs["params"], **kwargs)


def differentiable_leaves(inputs: dict) -> list[torch.Tensor]:
    return [inputs[n] for n in ("q", "k", "v", *GATE_NAMES)] + list(inputs["params"])


def scalar_loss(y: torch.Tensor, state: MemoryState, with_state: bool = True) -> torch.Tensor:
    """A loss touching every output and (unless told not to) every final-state tensor, with random weights."""
    gen = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    for t in (*state.weights, *state.momentum) if with_state else ():
        loss = loss + (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
    return loss


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_states_close(a: MemoryState, b: MemoryState, tol: float) -> None:
    assert a.pos == b.pos
    for group_a, group_b in zip(a, b, strict=True):
        if isinstance(group_a, int):
            continue
        for ta, tb in zip(group_a, group_b, strict=True):
            assert ta.shape == tb.shape
            assert rel_err(ta, tb) < tol


def check_against_reference(
    inputs: dict, tol: float, with_state: bool = True, fn=chunk_titans_memory, **kwargs
) -> None:
    leaves = differentiable_leaves(inputs)
    y_ref, state_ref = call(naive_recurrent_titans_memory, inputs, **kwargs)
    grads_ref = torch.autograd.grad(scalar_loss(y_ref, state_ref, with_state), leaves)
    y, state = call(fn, inputs, **kwargs)
    grads = torch.autograd.grad(scalar_loss(y, state, with_state), leaves)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert rel_err(y, y_ref) < tol
    assert_states_close(state, state_ref, tol)
    names = ["q", "k", "v", *GATE_NAMES] + [f"params[{i}]" for i in range(len(inputs["params"]))]
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        assert rel_err(g, g_ref) < tol, name


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("chunk_size, T", [(1, 9), (4, 23), (16, 37), (64, 70)])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_chunked_matches_reference_float64(
    n_layers: int, chunk_size: int, T: int, residual: bool, norm: bool
) -> None:
    inputs = make_inputs(T, n_layers, torch.float64, seed=n_layers * 100 + chunk_size)
    check_against_reference(inputs, 1e-10, chunk_size=chunk_size, residual=residual, norm=norm)


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_layer_normed_memory_matches_reference(n_layers: int, activation: str, with_state: bool) -> None:
    inputs = make_inputs(13, n_layers, torch.float64, gates="strong", seed=21)
    for fn in (chunk_titans_memory, fused_recurrent_titans_memory):
        check_against_reference(
            inputs, 1e-10, with_state, fn=fn, chunk_size=4, activation=activation, norm=True
        )


def test_layer_norm_keeps_retrieval_bounded_when_the_weights_blow_up() -> None:
    inputs = make_inputs(9, 2, torch.float64, seed=3)
    with torch.no_grad():
        y, state = call(chunk_titans_memory, inputs, chunk_size=4, norm=True)
        huge = MemoryState(*(tuple(1e6 * w for w in group) for group in state[:3]), state.pos)
        y_huge, _ = call(chunk_titans_memory, inputs, slice(0, 4), chunk_size=4, norm=True, state=huge)
    q = inputs["q"][:, :, :4]
    assert ((y_huge - q).norm(dim=-1) <= inputs["q"].shape[-1] ** 0.5 + 1e-6).all()  # |LN(h)| = sqrt(D)


@pytest.mark.parametrize("gates", ["no_momentum", "no_decay", "plain"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_chunked_matches_reference_without_momentum_or_decay(n_layers: int, gates: str) -> None:
    inputs = make_inputs(11, n_layers, torch.float64, gates=gates)
    check_against_reference(inputs, 1e-10, chunk_size=4)


@pytest.mark.parametrize("n_layers", [2, 3])
def test_chunked_matches_reference_silu(n_layers: int) -> None:
    inputs = make_inputs(13, n_layers, torch.float64, seed=7)
    check_against_reference(inputs, 1e-10, chunk_size=4, activation="silu")


@pytest.mark.parametrize("n_layers", [1, 2])
def test_gradients_when_the_final_state_is_unused(n_layers: int) -> None:
    # the chunked backward skips the end-of-sequence state update when nothing differentiates the state
    inputs = make_inputs(10, n_layers, torch.float64, seed=4)
    check_against_reference(inputs, 1e-10, with_state=False, chunk_size=4)


@pytest.mark.parametrize("gates", ["random", "strong"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_chunked_matches_reference_float32_chunk64(n_layers: int, gates: str) -> None:
    inputs = make_inputs(70, n_layers, torch.float32, gates=gates, seed=3)
    check_against_reference(inputs, 1e-4, chunk_size=64)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("chunk_size, T", [(1, 5), (4, 11)])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_fused_recurrent_matches_reference_float64(
    n_layers: int, chunk_size: int, T: int, residual: bool, activation: str
) -> None:
    inputs = make_inputs(T, n_layers, torch.float64, seed=n_layers * 10 + chunk_size)
    check_against_reference(
        inputs,
        1e-10,
        fn=fused_recurrent_titans_memory,
        chunk_size=chunk_size,
        residual=residual,
        activation=activation,
    )


@pytest.mark.parametrize("gates", ["plain", "strong"])
def test_fused_recurrent_matches_reference_float32(gates: str) -> None:
    inputs = make_inputs(20, 2, torch.float32, gates=gates, seed=8)
    check_against_reference(inputs, 1e-5, fn=fused_recurrent_titans_memory, chunk_size=8)


def test_decoding_after_a_chunked_prefill() -> None:
    # the model's path: prefill with the chunked op, then decode token by token from its state
    T, split = 13, 6
    inputs = make_inputs(T, 2, torch.float64, seed=12)
    with torch.no_grad():
        y_full, state_full = call(naive_recurrent_titans_memory, inputs, chunk_size=4)
        ys, state = [], call(chunk_titans_memory, inputs, slice(0, split), chunk_size=4)[1]
        for t in range(split, T):
            y, state = call(fused_recurrent_titans_memory, inputs, slice(t, t + 1), chunk_size=4, state=state)
            ys.append(y)
    assert rel_err(torch.cat(ys, dim=2), y_full[:, :, split:]) < 1e-12
    assert_states_close(state, state_full, 1e-12)


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize(
    "fn", [chunk_titans_memory, fused_recurrent_titans_memory, naive_recurrent_titans_memory]
)
@pytest.mark.parametrize("split", [1, 3, 4, 6, 12])
def test_split_call_equals_one_call(fn, split: int, norm: bool) -> None:
    inputs = make_inputs(13, 2, torch.float64, seed=split)
    leaves = differentiable_leaves(inputs)
    y_full, state_full = call(fn, inputs, chunk_size=4, norm=norm)
    y1, state1 = call(fn, inputs, slice(0, split), chunk_size=4, norm=norm)
    assert state1.pos == split % 4
    y2, state2 = call(fn, inputs, slice(split, None), chunk_size=4, state=state1, norm=norm)
    y_split = torch.cat([y1, y2], dim=2)
    assert rel_err(y_split, y_full) < 1e-12
    assert_states_close(state2, state_full, 1e-12)
    grads_full = torch.autograd.grad(scalar_loss(y_full, state_full), leaves)
    grads_split = torch.autograd.grad(scalar_loss(y_split, state2), leaves)
    for g, g_ref in zip(grads_split, grads_full, strict=True):
        assert rel_err(g, g_ref) < 1e-10


def test_state_is_shared_between_implementations() -> None:
    inputs = make_inputs(13, 3, torch.float64, seed=5)
    y_full, state_full = call(naive_recurrent_titans_memory, inputs, chunk_size=4)
    y1, state1 = call(naive_recurrent_titans_memory, inputs, slice(0, 6), chunk_size=4)
    y2, state2 = call(chunk_titans_memory, inputs, slice(6, None), chunk_size=4, state=state1)
    assert rel_err(torch.cat([y1, y2], dim=2), y_full) < 1e-12
    assert_states_close(state2, state_full, 1e-12)


@pytest.mark.parametrize(
    "fn", [chunk_titans_memory, fused_recurrent_titans_memory, naive_recurrent_titans_memory]
)
def test_token_by_token_equals_one_call(fn) -> None:
    T = 11
    inputs = make_inputs(T, 2, torch.float64, seed=11)
    with torch.no_grad():
        y_full, state_full = call(fn, inputs, chunk_size=4)
        state, ys = None, []
        for t in range(T):
            y, state = call(fn, inputs, slice(t, t + 1), chunk_size=4, state=state)
            ys.append(y)
    assert rel_err(torch.cat(ys, dim=2), y_full) < 1e-12
    assert_states_close(state, state_full, 1e-12)


def test_inner_gradient_treats_keys_and_values_as_data() -> None:
    # In MAC the keys come from attention over the memory's own retrieval, so they depend on the weights;
    # the memory's update must still be the partial derivative with k and v held fixed.
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(B, H, D, D, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, H, D, generator=gen, dtype=torch.float64)
    k = torch.tanh((w @ x.unsqueeze(-1)).squeeze(-1))  # keys and values that depend on w
    v = k.flip(-1)
    (u,) = memory_grads((w,), k, v, residual=False)
    (expected,) = memory_grads((w.detach(),), k.detach(), v.detach(), residual=False)
    assert rel_err(u, expected) < 1e-14
    assert u.requires_grad  # and the outer loop can still train through it


def test_linear_memory_gradient_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    w, k, v = (torch.randn(B, H, *s, generator=gen, dtype=torch.float64) for s in ((D, D), (D,), (D,)))
    (u,) = memory_grads((w,), k, v, residual=False)
    expected = 2.0 * ((w @ k.unsqueeze(-1)).squeeze(-1) - v).unsqueeze(-1) * k.unsqueeze(-2)
    assert rel_err(u, expected) < 1e-12


@pytest.mark.parametrize(
    "fn", [chunk_titans_memory, fused_recurrent_titans_memory, naive_recurrent_titans_memory]
)
def test_unknown_activation_raises(fn) -> None:
    inputs = make_inputs(3, 2, torch.float64)
    with pytest.raises(ValueError, match="tanhh"):
        call(fn, inputs, activation="tanhh")


def test_state_shapes_and_bytes() -> None:
    inputs = make_inputs(6, 2, torch.float32)
    _, state = call(chunk_titans_memory, inputs, chunk_size=4)
    assert state.pos == 2
    assert [tuple(w.shape) for w in state.weights] == [(B, H, HIDDEN, D), (B, H, D, HIDDEN)]
    assert state.nbytes() == 3 * B * H * (HIDDEN * D * 2) * 4


def test_bf16_autocast_keeps_float32_state() -> None:
    inputs = make_inputs(9, 2, torch.float32, seed=2)
    with torch.no_grad():
        y_ref, _ = call(chunk_titans_memory, inputs, chunk_size=4)
        low = {n: inputs[n].bfloat16() for n in ("q", "k", "v", *GATE_NAMES)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, state = chunk_titans_memory(*low.values(), inputs["params"], chunk_size=4)
    assert y.dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for w in (*state.weights, *state.momentum, *state.base))
    assert rel_err(y.float(), y_ref) < 3e-2


def test_empty_sequence_returns_state_unchanged() -> None:
    inputs = make_inputs(5, 2, torch.float64)
    y1, state1 = call(chunk_titans_memory, inputs, chunk_size=4)
    y, state = call(chunk_titans_memory, inputs, slice(5, 5), chunk_size=4, state=state1)
    assert y.shape == (B, H, 0, D)
    assert_states_close(state, state1, 1e-15)


@pytest.mark.slow
def test_compiled_steps_compile_without_graph_breaks_and_match_the_reference() -> None:
    """The compiled path (chunk steps through torch.compile with fullgraph=True, so a graph break raises):
    outputs, final state and gradients against the per-token reference, in float32. The shapes are those
    of test_titans_model's compiled model, so that one compilation serves both."""
    import torch._dynamo.utils

    gen = torch.Generator().manual_seed(0)
    D, hidden, T = 8, 32, 40  # two whole chunks, compiled, then a partial one, eager
    inputs = dict(
        q=torch.randn(1, 2, T, D, generator=gen),
        k=torch.nn.functional.normalize(torch.randn(1, 2, T, D, generator=gen), dim=-1),
        v=torch.randn(1, 2, T, D, generator=gen),
        theta=0.3 * torch.rand(1, 2, T, generator=gen),
        eta=torch.rand(1, 2, T, generator=gen),
        alpha=0.5 * torch.rand(1, 2, T, generator=gen),
    )
    inputs = {name: t.requires_grad_() for name, t in inputs.items()}
    inputs["params"] = tuple(
        (torch.randn(2, d_out, d_in, generator=gen) / d_in**0.5).requires_grad_()
        for d_in, d_out in ((D, hidden), (hidden, D))
    )
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    compiled = functools.partial(chunk_titans_memory, compiled=True)
    check_against_reference(inputs, 1e-4, fn=compiled, chunk_size=16, norm=True)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == breaks
