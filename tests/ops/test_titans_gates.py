"""The Titans memory ops with gates per memory layer and per channel, forgetting toward the initial memory
and a LayerNorm with a learnable gain and bias: chunked and token-by-token against the per-token reference
in float64, outputs, final state and gradients w.r.t. everything (q, k, v, every gate, the initial memory,
the gain and bias)."""

from __future__ import annotations

import pytest
import torch

from models.titans import chunk_titans_memory, fused_recurrent_titans_memory, naive_recurrent_titans_memory
from models.titans.channel_coefficients import channel_coefficients
from models.titans.chunk import chunk_coefficients, layer_coefficients
from tests.ops.test_titans_memory import assert_states_close, rel_err, scalar_loss

B, H, D, HIDDEN = 2, 3, 5, 7
NAMES = ("theta", "eta", "alpha")
OPS = [chunk_titans_memory, fused_recurrent_titans_memory]


def make_case(T: int, n_layers: int, gates: str = "channel", seed: int = 0, strong: bool = False,
              affine: bool = False, dtype=torch.float64) -> dict:  # fmt: skip
    """Random inputs that require grad. gates: head ([B, H, T] shared by the layers), layer ([B, H, T] per
    layer), channel ([B, H, T, d_in] per layer) or mixed (theta per channel, eta per layer, alpha shared).
    strong: eta and 1 - alpha near 0.5, so that products over a chunk vanish."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    sizes = [D] + [HIDDEN] * (n_layers - 1) + [D]
    d_ins = sizes[:-1]
    params = [
        torch.randn(H, o, i, generator=gen, dtype=dtype) / i**0.5
        for i, o in zip(sizes, sizes[1:], strict=False)
    ]
    case = dict(
        q=torch.randn(B, H, T, D, generator=gen, dtype=dtype),
        k=torch.nn.functional.normalize(torch.randn(B, H, T, D, generator=gen, dtype=dtype), dim=-1),
        v=torch.randn(B, H, T, D, generator=gen, dtype=dtype),
    )

    def gate(name: str, form: str):
        lo, width = {"theta": (0.0, 0.3), "eta": (0.0, 1.0), "alpha": (0.0, 0.5)}[name]
        if strong and name != "theta":
            lo, width = 0.45, 0.1
        if form == "head":
            return lo + width * rand(B, H, T)
        return [lo + width * (rand(B, H, T) if form == "layer" else rand(B, H, T, d)) for d in d_ins]

    mixed = dict(zip(NAMES, ("channel", "layer", "head"), strict=True))
    forms = mixed if gates == "mixed" else dict.fromkeys(NAMES, gates)
    for name in NAMES:
        case[name] = gate(name, forms[name])
    if affine:
        case["norm_weight"] = 1.0 + 0.5 * torch.randn(H, D, generator=gen, dtype=dtype)
        case["norm_bias"] = 0.3 * torch.randn(H, D, generator=gen, dtype=dtype)
    for t in leaves(case):
        t.requires_grad_()
    case["params"] = tuple(params)
    for p in params:
        p.requires_grad_()
    return case


def leaves(case: dict) -> list[torch.Tensor]:
    out = [case[n] for n in ("q", "k", "v")]
    for name in NAMES:
        out += [case[name]] if isinstance(case[name], torch.Tensor) else list(case[name])
    out += list(case.get("params", ()))
    return out + [case[n] for n in ("norm_weight", "norm_bias") if n in case]


def sliced(case: dict, sl: slice) -> dict:
    def cut(g):
        return g[:, :, sl] if isinstance(g, torch.Tensor) else [t[:, :, sl] for t in g]

    return {n: cut(case[n]) for n in ("q", "k", "v", *NAMES)}


def call(fn, case: dict, sl: slice = slice(None), **kwargs):
    args = sliced(case, sl)
    extra = {n: case[n] for n in ("norm_weight", "norm_bias") if n in case}
    return fn(*(args[n] for n in ("q", "k", "v", *NAMES)), case["params"], **extra, **kwargs)


def check(case: dict, fn, tol: float = 1e-10, with_state: bool = True, **kwargs) -> None:
    ts = leaves(case)
    y_ref, s_ref = call(naive_recurrent_titans_memory, case, **kwargs)
    g_ref = torch.autograd.grad(scalar_loss(y_ref, s_ref, with_state), ts, allow_unused=True)
    y, s = call(fn, case, **kwargs)
    g = torch.autograd.grad(scalar_loss(y, s, with_state), ts, allow_unused=True)
    assert rel_err(y, y_ref) < tol
    assert_states_close(s, s_ref, tol)
    for i, (a, b) in enumerate(zip(g, g_ref, strict=True)):
        assert (a is None) == (b is None), i
        if b is not None:
            assert rel_err(a, b) < tol, f"gradient {i} of {len(ts)}"


@pytest.mark.parametrize("fn", OPS)
@pytest.mark.parametrize("gates", ["head", "layer", "channel", "mixed"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_gate_shapes_match_reference(fn, gates: str, n_layers: int) -> None:
    # chunk 4 over 11 tokens: two whole chunks and one that straddles the sequence's end
    case = make_case(11, n_layers, gates, seed=n_layers)
    check(case, fn, chunk_size=4, norm=True)


@pytest.mark.parametrize("fn", OPS)
@pytest.mark.parametrize("forget_to_init", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_variants_match_reference(fn, forget_to_init: bool, affine: bool, n_layers: int) -> None:
    case = make_case(10, n_layers, "channel", seed=10 + n_layers, affine=affine)
    check(case, fn, chunk_size=4, norm=True, forget_to_init=forget_to_init)


@pytest.mark.parametrize("gates", ["head", "layer", "channel"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("norm", [True, False])
def test_variants_without_the_norm_or_residual(gates: str, residual: bool, norm: bool) -> None:
    case = make_case(9, 2, gates, seed=5, affine=norm)
    check(case, chunk_titans_memory, chunk_size=4, norm=norm, residual=residual, forget_to_init=True)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("chunk_size, T", [(1, 5), (16, 37)])
def test_strong_channel_gates_and_long_chunks(activation: str, chunk_size: int, T: int) -> None:
    case = make_case(T, 2, "channel", seed=chunk_size, strong=True, affine=True)
    check(case, chunk_titans_memory, chunk_size=chunk_size, norm=True, activation=activation,
          forget_to_init=True)  # fmt: skip


def test_no_forgetting_is_alpha_zero() -> None:
    case = make_case(9, 2, "channel", seed=7, affine=True)
    # shared by the layers, beside per-channel gates
    case["alpha"] = torch.zeros(B, H, 9, dtype=torch.float64, requires_grad=True)
    for fn in OPS:
        check(case, fn, chunk_size=4, norm=True)


def test_gradients_when_the_final_state_is_unused() -> None:
    case = make_case(10, 3, "channel", seed=4, affine=True)
    check(case, chunk_titans_memory, with_state=False, chunk_size=4, norm=True, forget_to_init=True)


@pytest.mark.parametrize("fn", [*OPS, naive_recurrent_titans_memory])
@pytest.mark.parametrize("split", [1, 3, 4, 6])
@pytest.mark.parametrize("forget_to_init", [False, True])
def test_continuing_from_a_state_equals_one_call(fn, split: int, forget_to_init: bool) -> None:
    """A state carried from a first call (mid-chunk or not), gradients through it included."""
    case = make_case(13, 2, "channel", seed=split, affine=True)
    kw = dict(chunk_size=4, norm=True, forget_to_init=forget_to_init)
    ts = leaves(case)
    y_full, s_full = call(fn, case, **kw)
    y1, s1 = call(fn, case, slice(0, split), **kw)
    y2, s2 = call(fn, case, slice(split, None), state=s1, **kw)
    y_split = torch.cat([y1, y2], dim=2)
    assert rel_err(y_split, y_full) < 1e-12
    assert_states_close(s2, s_full, 1e-12)
    g_full = torch.autograd.grad(scalar_loss(y_full, s_full), ts)
    g_split = torch.autograd.grad(scalar_loss(y_split, s2), ts)
    for a, b in zip(g_split, g_full, strict=True):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("fn", OPS)
def test_a_given_initial_state_matches_reference(fn) -> None:
    """Continuing from an arbitrary state (not one the op made), gradients w.r.t. that state too."""
    case = make_case(11, 2, "channel", seed=9, affine=True)
    gen = torch.Generator().manual_seed(2)
    _, made = call(naive_recurrent_titans_memory, case, slice(0, 2), chunk_size=4, norm=True)
    state = type(made)(
        *(tuple((t.detach() + 0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype)).requires_grad_()
                for t in group) for group in made[:3]),
        made.pos,
    )  # fmt: skip
    state_leaves = [t for group in state[:3] for t in group]
    results = []
    for op in (naive_recurrent_titans_memory, fn):
        y, s = call(op, case, slice(2, None), chunk_size=4, norm=True, state=state, forget_to_init=True)
        results.append((y, s, torch.autograd.grad(scalar_loss(y, s), leaves(case) + state_leaves)))
    (y_ref, s_ref, g_ref), (y, s, g) = results
    assert rel_err(y, y_ref) < 1e-10
    assert_states_close(s, s_ref, 1e-10)
    for a, b in zip(g, g_ref, strict=True):
        assert rel_err(a, b) < 1e-10


def test_float32_channel_gates_chunk64() -> None:
    case = make_case(70, 2, "channel", seed=3, strong=True, affine=True, dtype=torch.float32)
    check(case, chunk_titans_memory, tol=1e-4, chunk_size=64, norm=True, forget_to_init=True)


def test_per_channel_coefficients_are_the_scalar_ones_per_channel() -> None:
    """layer_coefficients with C channels equals chunk_coefficients run on each channel alone."""
    gen = torch.Generator().manual_seed(0)
    n, C = 6, 4
    theta, eta, alpha = (torch.rand(2, n, C, generator=gen, dtype=torch.float64) for _ in range(3))
    ac, gs, neg_g, mix = layer_coefficients(theta, eta, alpha, 3)
    for c in range(C):
        A, cc, G, s, e = chunk_coefficients(theta[..., c], eta[..., c], alpha[..., c])
        torch.testing.assert_close(ac[..., c], torch.stack([A, cc, 1 - A], dim=-1))
        torch.testing.assert_close(neg_g[..., c], -G)
        torch.testing.assert_close(gs[..., c], -torch.stack([G[..., -1, :], s], dim=-1))
        torch.testing.assert_close(mix[..., 1, 1, c], e)


@pytest.mark.parametrize("fn", [*OPS, naive_recurrent_titans_memory])
def test_forgetting_toward_the_initial_memory_without_writes_keeps_it(fn) -> None:
    """theta = 0: nothing is written, so decay shrinks the memory while forgetting toward M_0 keeps it."""
    case = make_case(9, 2, "channel", seed=1)
    case["theta"] = [torch.zeros_like(t) for t in case["theta"]]
    with torch.no_grad():
        _, kept = call(fn, case, chunk_size=4, norm=True, forget_to_init=True)
        _, decayed = call(fn, case, chunk_size=4, norm=True)
    for w, w0, w_dec in zip(kept.weights, case["params"], decayed.weights, strict=True):
        torch.testing.assert_close(w, w0.expand_as(w), rtol=0, atol=1e-14)
        assert w_dec.norm() < 0.9 * w.norm()


@pytest.mark.parametrize("fn", [*OPS, naive_recurrent_titans_memory])
def test_bad_gate_shapes_are_named(fn) -> None:
    case = make_case(5, 2, "channel")
    case["eta"] = case["eta"][:1]
    with pytest.raises(ValueError, match="eta: 1 tensors for 2 memory layers"):
        call(fn, case)
    case = make_case(5, 2, "channel")
    case["alpha"] = [case["alpha"][0][..., :2], case["alpha"][1]]
    with pytest.raises(ValueError, match=r"alpha of memory layer 0 must be \[B, H, T\] or \[B, H, T, 5\]"):
        call(fn, case)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("with_pair", [False, True])
def test_channel_coefficients_backward_by_gradcheck(n: int, with_pair: bool) -> None:
    """The hand-written backward of the per-channel coefficients against finite differences, every output
    used, gates broadcast from one value per head."""
    gen = torch.Generator().manual_seed(n)
    theta = torch.rand(2, n, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    eta = torch.rand(2, n, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(2, n, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    z, x = (torch.randn(2, n, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    inputs = (theta, eta, alpha, z, x) if with_pair else (theta, eta, alpha)

    def fn(*args):
        return channel_coefficients(*args[:3], pair=args[3:] if with_pair else None)

    assert torch.autograd.gradcheck(fn, inputs)
