"""State passing and diagnostics of Mamba, Mamba2, DeltaNet and Gated DeltaNet (both torch backends), in
float64: a sequence cut into windows with the state carried through ``LanguageModel.forward(ids, state=,
return_state=True)`` gives the logits and, the state left in the graph, the gradients of the whole;
``detach_state`` cuts the gradient at the boundary; ``trace`` reports its documented keys, and its
``state_norm`` after t tokens is the norm of the state ``prefill`` returns after t tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.modules.state import detach_state, map_state
from tests.helpers import TINY, tiny_model

FAMILIES = ["mamba", "mamba2", "deltanet", "gated-deltanet"]
BACKENDS = ["torch-chunked", "torch-recurrent"]
# Chunks that the windows' lengths do not divide.
SMALL = {
    "mamba": {},
    "mamba2": dict(d_state=16, n_heads=4, chunk_size=8),
    "deltanet": dict(n_heads=2, chunk_size=8),
    "gated-deltanet": dict(n_heads=2, chunk_size=8),
}
TRACE_KEYS = {
    "mamba": {"state_norm", "dt", "decay"},
    "mamba2": {"state_norm", "dt", "decay"},
    "deltanet": {"state_norm", "beta"},
    "gated-deltanet": {"state_norm", "beta", "decay"},
}
T = 23
X = torch.randint(0, TINY["vocab_size"], (2, T), generator=torch.Generator().manual_seed(7))
# Where the sequence is cut: once mid-chunk; three windows, the middle one shorter than the conv kernel
# (4), so the window carried out of it still holds a token of the first; and after the first token.
CUTS = [(9,), (9, 11), (1,)]


def model_for(name: str, backend: str = "torch-chunked"):
    torch.manual_seed(0)
    return tiny_model(name, backend=backend, **SMALL[name])


def windows(model, ids: torch.Tensor, cuts: tuple[int, ...]) -> torch.Tensor:
    """Logits of ``ids`` run window by window, the state carried in the graph."""
    bounds = [0, *cuts, ids.shape[1]]
    state, logits = None, []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        out, state = model(ids[:, start:stop], state=state, return_state=True)
        logits.append(out)
    return torch.cat(logits, 1)


def loss_of(logits: torch.Tensor) -> torch.Tensor:
    """A loss that weighs every position differently, so a gradient in the wrong place shows."""
    weights = torch.linspace(0.5, 1.5, logits.shape[1], dtype=logits.dtype)[None, :, None]
    return (F.log_softmax(logits, -1) * weights).sum()


def grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_forward_from_the_initial_state_is_forward(name, backend):
    """``forward_from(x, None)[0]`` is ``forward(x)``, for the mixer and through the shell."""
    model = model_for(name, backend)
    assert model.supports_state_passing
    mixer = model.blocks[0].mixer
    h = model.embed(X)
    y, state = mixer.forward_from(h, None)
    assert torch.equal(y, mixer(h))
    assert type(state) is type(mixer.prefill(h)[1])
    logits, states = model(X, return_state=True)
    assert torch.equal(logits, model(X)) and len(states) == len(model.blocks)
    # the empty decoding state is the initial state too
    logits, _ = model(X, state=model.init_state(X.shape[0]), return_state=True)
    torch.testing.assert_close(logits, model(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cuts", CUTS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_windows_with_the_state_carried_equal_the_whole(name, backend, cuts):
    """Logits, and with the carried state left in the graph, every parameter's gradient."""
    model = model_for(name, backend)
    whole = model(X)
    split = windows(model, X, cuts)
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-10)
    expected = grads(model, loss_of(whole))
    got = grads(model, loss_of(split))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-9, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", FAMILIES)
def test_detach_state_cuts_the_gradient_at_the_boundary(name):
    """With the state detached, the second window's gradients are those from a state computed without any
    graph (the first window contributes nothing), and they differ from the uncut ones."""
    model = model_for(name)
    first, second = X[:, :9], X[:, 9:]
    _, state = model(first, return_state=True)
    cut = detach_state(state)
    assert all(t.requires_grad for t in _tensors(state)) and not any(t.requires_grad for t in _tensors(cut))
    logits, _ = model(second, state=cut, return_state=True)
    got = grads(model, loss_of(logits))
    with torch.no_grad():
        _, constant = model(first, return_state=True)
    logits, _ = model(second, state=constant, return_state=True)
    expected = grads(model, loss_of(logits))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    logits, _ = model(second, state=state, return_state=True)
    uncut = grads(model, loss_of(logits))
    assert any(not torch.allclose(uncut[key], expected[key]) for key in expected)


def _tensors(state) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    map_state(lambda t: found.append(t) or t, state)
    return found


def recurrent_state(name: str, block_state) -> torch.Tensor:
    return block_state.ssm if name.startswith("mamba") else block_state.memory


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_trace_keys_shapes_and_state_norm_equal_prefill(name, backend):
    model = model_for(name, backend)
    trace = model.trace(X)
    n_blocks = len(model.blocks)
    assert set(trace) == {f"block{i}.{key}" for i in range(n_blocks) for key in TRACE_KEYS[name]}
    for key, values in trace.items():
        assert values.shape == X.shape and values.dtype == torch.float32, key
        assert torch.isfinite(values).all(), key
    for i in range(n_blocks):
        norms = trace[f"block{i}.state_norm"]
        assert (norms > 0).all()
        for t in (1, 9, T):
            _, states = model.prefill(X[:, :t])
            state = recurrent_state(name, states[i])
            # summed over heads: Mamba's state [B, d_inner, N] is one head
            expected = torch.linalg.matrix_norm(state).reshape(X.shape[0], -1).sum(-1)
            torch.testing.assert_close(norms[:, t - 1], expected.float(), rtol=1e-6, atol=0)
        if "decay" in TRACE_KEYS[name]:
            decay = trace[f"block{i}.decay"]
            assert ((decay > 0) & (decay < 1)).all()
        if "beta" in TRACE_KEYS[name]:
            beta = trace[f"block{i}.beta"]
            assert ((beta > 0) & (beta < 1)).all()
        if "dt" in TRACE_KEYS[name]:
            assert (trace[f"block{i}.dt"] > 0).all()
