"""The Transformer baseline: SDPA paths equal the explicit reference, windows are honoured everywhere."""

import pytest
import torch

from bench.errors import BenchError
from models.modules.attention import Attention, reference_attention, windowed_sdpa
from tests.helpers import tiny_model


@pytest.mark.parametrize("window", [1, 4, 8, 23, 40])
def test_windowed_sdpa_equals_reference(window):
    q, k, v = (torch.randn(2, 3, 23, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(windowed_sdpa(q, k, v, window), reference_attention(q, k, v, window))


@pytest.mark.parametrize("T", [5, 16, 23])
@pytest.mark.parametrize("window, n_sink", [(1, 1), (4, 2), (4, 4), (4, 5), (4, 7), (8, 3), (23, 5), (40, 2)])
def test_windowed_sdpa_with_sinks_equals_reference(window, n_sink, T):
    q, k, v = (torch.randn(2, 3, T, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(
        windowed_sdpa(q, k, v, window, n_sink), reference_attention(q, k, v, window, n_sink)
    )


def test_sinks_stay_visible_beyond_the_window():
    q, k, v = (torch.randn(1, 1, 16, 4, dtype=torch.float64) for _ in range(3))
    v2 = v.clone()
    v2[:, :, 1] += 1.0  # a sink: every query sees it
    v2[:, :, 2] += 1.0  # not a sink: only queries 2..5 see it through the window of 4
    out, out2 = reference_attention(q, k, v, 4, 2), reference_attention(q, k, v2, 4, 2)
    assert not torch.isclose(out[:, :, 1:], out2[:, :, 1:]).all(-1).any()
    v3 = v2.clone()
    v3[:, :, 1] -= 1.0
    out3 = reference_attention(q, k, v3, 4, 2)
    torch.testing.assert_close(out3[:, :, 6:], out[:, :, 6:])


@pytest.mark.parametrize("prompt", [0, 3, 6, 15])
@pytest.mark.parametrize("backend", ["sdpa-flash", "torch"])
def test_attention_with_sinks_decodes_like_forward(backend, prompt):
    torch.manual_seed(0)
    attention = Attention(16, 2, window=4, backend=backend, n_sink=3).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    full = attention(x)
    if prompt:
        y, cache = attention.prefill(x[:, :prompt])
        torch.testing.assert_close(y, full[:, :prompt])
    else:
        cache = attention.init_state(2, "cpu", torch.float64)
    for t in range(prompt, 21):
        y, cache = attention.step(x[:, t], cache)
        torch.testing.assert_close(y, full[:, t])
    assert cache.k.shape[2] == 3 + 4  # the sinks and a ring of `window` slots
    assert attention.state_bytes(2, 21, torch.float64) == cache.nbytes()


def test_window_really_limits_attention():
    q, k, v = (torch.randn(1, 1, 16, 4, dtype=torch.float64) for _ in range(3))
    out = reference_attention(q, k, v, 4)
    v2 = v.clone()
    v2[:, :, 0] += 1.0  # token 0 is outside the window of every query from position 4 on
    out2 = reference_attention(q, k, v2, 4)
    torch.testing.assert_close(out[:, :, 4:], out2[:, :, 4:])
    assert not torch.allclose(out[:, :, :4], out2[:, :, :4])


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("backend", ["sdpa-flash", "sdpa-math"])
def test_sdpa_backends_equal_reference_model(backend, window):
    ref = tiny_model("transformer", backend="torch", window=window)
    fast = tiny_model("transformer", backend=backend, window=window)
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(0, 37, (2, 23))
    torch.testing.assert_close(fast(x), ref(x))
    assert fast.backend == backend and ref.backend == "torch"


def test_windowed_model_decodes_like_forward():
    model = tiny_model("transformer", window=5).eval()
    x = torch.randint(0, 37, (2, 23))
    full = model(x)
    _, state = model.prefill(x[:, :11])
    for t in range(11, 23):
        logits, state = model.step(x[:, t], state)
        torch.testing.assert_close(logits, full[:, t])
    assert state[0].k.shape[2] == 5  # the cache is a ring of `window` slots, not the whole prefix


def test_unavailable_backend_is_an_error_not_a_fallback():
    if torch.cuda.is_available():
        pytest.skip("on CUDA the efficient kernel exists")  # pragma: no cover - CPU CI never skips
    model = tiny_model("transformer", backend="sdpa-efficient")
    with pytest.raises(RuntimeError):
        model(torch.randint(0, 37, (1, 8)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="not divisible"):
        tiny_model("transformer", n_heads=5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        tiny_model("transformer", backend="flashy")
    with pytest.raises(BenchError, match="does not accept"):
        tiny_model("transformer", widnow=4)


def test_a_capped_cache_says_so_when_overrun():
    attention = Attention(16, 2, max_keys=3).double()
    cache = attention.init_state(1, "cpu", torch.float64)
    for _ in range(3):
        _, cache = attention.step(torch.randn(1, 16, dtype=torch.float64), cache)
    assert cache.k.shape[2] == 3
    with pytest.raises(ValueError, match="at most 3 keys"):
        attention.step(torch.randn(1, 16, dtype=torch.float64), cache)
