"""The shared interface, checked for every registered model: later models are held to it for free."""

import os

import pytest
import torch

import bench
from models.modules import tensor_bytes
from models.modules.state import detach_state
from tests.helpers import TINY, tiny_model

# A plug-in is held to the same contract: the GRU example always, and any model named in the environment
# (TITANS_BENCH_CONFORMANCE="mypkg.models:build,other") without editing this file.
EXTRA = [m.strip() for m in os.environ.get("TITANS_BENCH_CONFORMANCE", "").split(",") if m.strip()]
MODELS = [*bench.list_models(), "tests.plugins.gru:build", *EXTRA]
T = 23  # not a multiple of any chunk size or window used by the families


@pytest.fixture(params=MODELS)
def model(request):
    return tiny_model(request.param).eval()


def ids(batch=2, length=T, seed=0):
    return torch.randint(
        0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def test_every_family_is_registered():
    assert "transformer" in MODELS


def test_output_shape_and_backend(model):
    logits = model(ids())
    assert logits.shape == (2, T, TINY["vocab_size"])
    assert logits.dtype == torch.float64
    assert isinstance(model.backend, str) and model.backend


def test_causal(model):
    x = ids()
    base = model(x)
    for t in (0, 7, T - 1):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % TINY["vocab_size"]
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(out[:, t:], base[:, t:]), "a changed token must change its own logits"


def test_step_reproduces_forward(model):
    x = ids()
    full = model(x)
    state = model.init_state(2)
    for t in range(T):
        logits, state = model.step(x[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)


def test_prefill_then_step_reproduces_forward(model):
    x = ids()
    full = model(x)
    split = 9
    logits, state = model.prefill(x[:, :split])
    torch.testing.assert_close(logits, full[:, split - 1], rtol=1e-9, atol=1e-9)  # the last position only
    # every position of the prompt, through the blocks' own prefill
    h = model.embed(x[:, :split])
    for block in model.blocks:
        h, _ = block.prefill(h)
    torch.testing.assert_close(model.head(h), full[:, :split], rtol=1e-9, atol=1e-9)
    for t in range(split, T):
        logits, state = model.step(x[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)


def test_state_bytes_counts_the_real_state(model):
    for length in (5, T):
        _, state = model.prefill(ids(batch=3, length=length))
        assert model.state_bytes(3, length) == tensor_bytes(state)


def test_state_bytes_grows_as_declared(model):
    small, large = model.state_bytes(2, 64), model.state_bytes(2, 65536)
    assert small > 0
    if model.state_growth == "constant":
        assert large == small
    elif model.state_growth == "linear":
        assert model.state_bytes(2, 2048) == 2 * model.state_bytes(2, 1024)
    else:  # bounded: grows, then stops
        assert small <= model.state_bytes(2, 32768) == large


def test_every_parameter_is_trained(model):
    model.train()
    x = ids()
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


def test_flops_per_token_positive(model):
    assert model.flops_per_token(1024) > 0
    assert model.flops_per_token(4096) >= model.flops_per_token(1024)


def test_state_passing_continues_the_sequence(model):
    """A model that declares state passing gives, on a sequence cut in two windows with the (detached)
    state carried, the logits of the whole; one that does not refuses it."""
    x = ids()
    if not model.supports_state_passing:
        with pytest.raises(ValueError, match="state passing is not supported"):
            model(x, return_state=True)
        return
    full = model(x)
    first, state = model(x[:, :9], return_state=True)
    torch.testing.assert_close(first, full[:, :9], rtol=1e-9, atol=1e-9)
    second, _ = model(x[:, 9:], state=detach_state(state), return_state=True)
    torch.testing.assert_close(second, full[:, 9:], rtol=1e-9, atol=1e-9)


def test_trace_is_by_position(model):
    """Every diagnostic is [B, T] in float32; a model that carries a recurrent state (declares state
    passing) reports its norm in every block."""
    trace = model.trace(ids())
    for key, values in trace.items():
        assert values.shape == (2, T) and values.dtype == torch.float32, key
    if model.supports_state_passing:
        assert {f"block{i}.state_norm" for i in range(len(model.blocks))} <= trace.keys()
