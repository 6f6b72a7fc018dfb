"""The four Titans models under the mixer contract of models.modules.lm: state passing (a sequence cut into
windows with the state carried equals the whole sequence, outputs and gradients), the trace of the memory
by position, and evaluation with the memory's writes switched off."""

from __future__ import annotations

import pytest
import torch

from models.modules.state import detach_state
from tests.helpers import tiny_model

X = torch.randint(0, 37, (2, 29), generator=torch.Generator().manual_seed(3))
# windows and segments shorter than X, persistent tokens, chunks that straddle the cuts
MODELS = {
    "titans-lmm": {"n_persistent": 2},
    "titans-mal": {"window": 6},
    "titans-mag": {"window": 5, "n_persistent": 3},
    "titans-mac": {"segment": 6, "n_persistent": 2},
}
VARIANTS = [
    {},
    {"gate_granularity": "head", "memory_norm_affine": False},
    {"gate_granularity": "layer", "forgetting": "to_init"},
    {"forgetting": "none", "memory_depth": 3},
]


def build(name: str, **overrides):
    return tiny_model(name, chunk_size=4, **{**MODELS[name], **overrides})


def perturbed(model):
    """The model with every parameter moved off its initial value, so that gains of 1 and biases of 0 do
    not hide a missing path."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v}" for k, v in v.items()) or "default"
)
@pytest.mark.parametrize("name", list(MODELS))
def test_windows_with_the_state_carried_equal_the_whole_sequence(name, variant):
    model = perturbed(build(name, **variant))
    assert model.supports_state_passing
    full = model(X)
    for cuts in ([11], [4, 17], [6, 12, 24]):  # inside chunks and segments, on their edges, several windows
        state, outs = None, []
        for a, b in zip([0, *cuts], [*cuts, X.shape[1]], strict=True):
            logits, state = model(X[:, a:b], state=state, return_state=True)
            outs.append(logits)
        torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_through_a_carried_state_equal_the_whole_sequence(name):
    model = perturbed(build(name))

    def grads(windows):
        model.zero_grad(set_to_none=True)
        state, outs = None, []
        for a, b in windows:
            logits, state = model(X[:, a:b], state=state, return_state=True)
            outs.append(logits)
        torch.cat(outs, 1).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    whole, split = grads([(0, 29)]), grads([(0, 10), (10, 29)])
    for n, g in whole.items():
        torch.testing.assert_close(split[n], g, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_detached_state_passes_values_but_no_gradient(name):
    model = perturbed(build(name))
    logits, state = model(X[:, :12], return_state=True)
    logits2, _ = model(X[:, 12:], state=detach_state(state), return_state=True)
    torch.testing.assert_close(torch.cat([logits, logits2], 1), model(X), rtol=1e-10, atol=1e-10)
    model.zero_grad(set_to_none=True)
    logits2.square().mean().backward()
    # the initial memory acts on a continuation only through the state (forgetting decays toward 0), cut off
    initial = [p for n, p in model.named_parameters() if "memory_init" in n]
    assert initial and all(p.grad is None or not p.grad.any() for p in initial)
    assert any(p.grad is not None and p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_from_none_is_forward(name):
    model = perturbed(build(name))
    h = torch.randn(2, 13, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for block in model.blocks:
        y, _ = block.mixer.forward_from(h, None)
        assert torch.equal(y, block.mixer(h))


@pytest.mark.parametrize("name", list(MODELS))
def test_trace_reports_the_memory_by_position(name):
    model = perturbed(build(name, memory_depth=3))
    trace = model.trace(X)
    per_block = ["state_norm", "state_norm_ratio"] + [
        f"{g}.l{i}" for i in range(3) for g in ("theta", "eta", "alpha", "m0_left")
    ]
    assert set(trace) == {f"block{b}.{key}" for b in range(2) for key in per_block}
    for key, values in trace.items():
        assert values.shape == X.shape and values.dtype == torch.float32, key
        assert torch.isfinite(values).all(), key
    ratio = trace["block0.state_norm_ratio"]
    assert ((ratio > 0.5) & (ratio < 2.0)).all()  # small writes over a tiny sequence
    left = trace["block1.m0_left.l2"]
    assert ((left > 0) & (left <= 1)).all() and (left[:, 1:] <= left[:, :-1]).all()  # decays, never grows


def test_m0_left_is_the_product_of_one_minus_alpha_and_the_memory_agrees():
    """By hand on a tiny case: per position the product of (1 - alpha) since the sequence began, averaged
    over heads and channels; with the writes off, the memory is exactly M_0 scaled per column by it."""
    model = perturbed(build("titans-lmm", n_persistent=0, n_layers=1, n_heads=2, head_dim=4, memory_depth=2))
    mixer, T = model.blocks[0].mixer, 5
    h = torch.randn(1, T, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    trace = mixer.trace(h)
    _, _, alpha = mixer.gates(h)  # per layer [1, H, T, d_in]
    for i, a in enumerate(alpha):
        H, C = a.shape[1], a.shape[3]
        by_hand = torch.zeros(T, dtype=torch.float64)
        for t in range(T):
            total = 0.0
            for head in range(H):
                for c in range(C):
                    product = 1.0
                    for tau in range(t + 1):
                        product *= 1.0 - a[0, head, tau, c].item()
                    total += product
            by_hand[t] = total / (H * C)
        torch.testing.assert_close(trace[f"m0_left.l{i}"][0].double(), by_hand, rtol=1e-6, atol=0)
    mixer.set_test_time_writes(False)
    _, state = mixer.prefill(h)
    for w, m0, a in zip(state.memory.weights, mixer.memory_init, alpha, strict=True):
        kept = torch.prod(1 - a, dim=2)  # [1, H, d_in]: per column of M_0
        torch.testing.assert_close(w, m0.unsqueeze(0) * kept.unsqueeze(-2), rtol=1e-12, atol=1e-14)
    assert torch.equal(mixer.trace(h)["theta.l0"], torch.zeros(1, T))


@pytest.mark.parametrize("forgetting", ["none", "to_init"])
@pytest.mark.parametrize("name", list(MODELS))
def test_writes_off_keep_the_initial_memory(name, forgetting):
    """theta = 0 at evaluation: without forgetting (or forgetting toward M_0) the memory is M_0 at every
    position, so its norm ratio is 1 and the fraction of M_0 left is 1; the writes matter otherwise."""
    model = perturbed(build(name, forgetting=forgetting))
    assert model.has_test_time_writes
    with_writes = model(X)
    with model.test_time_writes_off():
        without = model(X)
        trace = model.trace(X)
        _, state = model.prefill(X)
    assert not torch.allclose(with_writes, without)
    torch.testing.assert_close(model(X), with_writes, rtol=0, atol=0)  # switched back on
    for key, values in trace.items():
        if key.endswith(("state_norm_ratio", "m0_left.l0", "m0_left.l1")):
            torch.testing.assert_close(values, torch.ones_like(values), rtol=1e-6, atol=0, msg=key)
        if ".theta." in key:
            assert torch.equal(values, torch.zeros_like(values)), key
    for block, s in zip(model.blocks, state, strict=True):
        lmm = block.mixer if name == "titans-lmm" else block.mixer.lmm
        lmm_state = s if name == "titans-lmm" else s.memory if name == "titans-mac" else s[0]
        memory = lmm_state.memory
        for w, m0 in zip(memory.weights, lmm.memory_init, strict=True):
            torch.testing.assert_close(w, m0.expand_as(w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS[1:] + [{"memory_init_scale": 0.25, "gate_rank": None}])
@pytest.mark.parametrize("name", list(MODELS))
def test_variants_equal_the_recurrent_reference(name, variant):
    fast = perturbed(build(name, **variant))
    slow = build(name, backend="torch-recurrent", **variant)
    slow.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(X), slow(X), rtol=1e-10, atol=1e-10)


def test_gradients_of_the_default_model_equal_the_reference():
    fast = perturbed(tiny_model("titans-lmm", memory_depth=2, chunk_size=8, forgetting="to_init"))
    slow = tiny_model(
        "titans-lmm", memory_depth=2, chunk_size=8, forgetting="to_init", backend="torch-recurrent"
    )
    slow.load_state_dict(fast.state_dict())
    for model in (fast, slow):
        model(X).pow(2).mean().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_gate_shapes_and_the_initial_memory_scale():
    model = tiny_model("titans-lmm", n_heads=2, head_dim=8, memory_depth=2, memory_init_scale=0.5, n_layers=1)
    mixer = model.blocks[0].mixer
    theta, eta, alpha = mixer.gates(torch.randn(3, 5, 32, dtype=torch.float64))
    assert [tuple(t.shape) for t in theta] == [(3, 2, 5, 8), (3, 2, 5, 32)]
    assert mixer.memory_init[0].std().item() == pytest.approx(0.5, rel=0.15)  # the first layer: std 1 x 0.5
    head = tiny_model("titans-lmm", gate_granularity="head", forgetting="none", n_layers=1).blocks[0].mixer
    theta, eta, alpha = head.gates(torch.randn(3, 5, 32, dtype=torch.float64))
    assert theta.shape == (3, 1, 5) and not alpha.any()
    assert head.gates.proj.out_features == 2  # theta and eta only: nothing learns alpha
