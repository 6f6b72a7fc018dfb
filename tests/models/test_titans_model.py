"""Titans LMM, MAL, MAG and MAC models: the fast memory path equals the per-token reference at model level,
the persistent tokens, windows and segments do what the paper says, and bf16 keeps a float32 memory."""

import pytest
import torch

import bench
from bench.errors import BenchError
from models.modules import tensor_bytes
from models.titans.model import LMM
from tests.helpers import tiny_model

X = torch.randint(0, 37, (2, 29), generator=torch.Generator().manual_seed(3))


# Windows and segments shorter than X, so that they matter.
SHORT = {
    "titans-lmm": {},
    "titans-mal": {"window": 6},
    "titans-mag": {"window": 6},
    "titans-mac": {"segment": 6},
}


@pytest.mark.parametrize("name", list(SHORT))
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_chunked_model_equals_recurrent_reference(name, chunk_size):
    extra = SHORT[name]
    fast = tiny_model(name, chunk_size=chunk_size, memory_depth=2, **extra)
    slow = tiny_model(name, chunk_size=chunk_size, memory_depth=2, backend="torch-recurrent", **extra)
    slow.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(X), slow(X), rtol=1e-10, atol=1e-10)
    assert fast.backend.startswith("torch-chunked") and slow.backend.startswith("torch-recurrent")


def test_gradients_of_chunked_model_equal_reference():
    fast = tiny_model("titans-lmm", memory_depth=3, chunk_size=8)
    slow = tiny_model("titans-lmm", memory_depth=3, chunk_size=8, backend="torch-recurrent")
    slow.load_state_dict(fast.state_dict())
    for model in (fast, slow):
        model(X).pow(2).mean().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_persistent_tokens_shape_every_output():
    model = tiny_model("titans-lmm", n_persistent=3)
    before = model(X)
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.persistent.add_(0.5)
    assert not torch.allclose(model(X)[:, 0], before[:, 0])  # even the first token sees them


def test_memory_learns_at_test_time():
    """Retrieval depends on what the memory was written with earlier in the same sequence."""
    model = tiny_model("titans-lmm", n_layers=1)
    a, b = X.clone(), X.clone()
    b[:, :5] = (b[:, :5] + 1) % 37
    assert not torch.allclose(model(a)[:, -1], model(b)[:, -1])


@pytest.mark.parametrize("name", ["titans-mal", "titans-mag", "titans-mac"])
def test_state_is_bounded_by_the_window(name):
    model = tiny_model(name, **({"segment": 8} if name == "titans-mac" else {"window": 8}))
    assert model.state_bytes(1, 8) == model.state_bytes(1, 10_000 * 8) > model.state_bytes(1, 2)


@pytest.mark.parametrize("name", ["titans-mag", "titans-mac"])
@pytest.mark.parametrize("prompt", [0, 1, 5, 6, 11])
def test_short_windows_and_segments_decode_like_forward(name, prompt):
    extra = {"window": 4, "n_persistent": 3} if name == "titans-mag" else {"segment": 6, "n_persistent": 2}
    model = tiny_model(name, chunk_size=4, **extra).eval()
    full = model(X)
    if prompt:
        logits, state = model.prefill(X[:, :prompt])
        torch.testing.assert_close(logits, full[:, prompt - 1], rtol=1e-9, atol=1e-9)
        assert tensor_bytes(state) == model.state_bytes(X.shape[0], prompt)
    else:
        state = model.init_state(X.shape[0])
    for t in range(prompt, X.shape[1]):
        logits, state = model.step(X[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)


def test_mag_attention_keeps_the_persistent_tokens_in_view():
    """With a window of 2, only the persistent tokens carry the attention branch beyond it."""
    model = tiny_model("titans-mag", window=2, n_persistent=2, n_layers=1)
    mixer = model.blocks[0].mixer
    h = torch.randn(1, 12, 32, dtype=torch.float64)
    before = mixer.attention(mixer._with_persistent(h))[:, -1]
    with torch.no_grad():
        mixer.persistent.add_(0.5)
    after = mixer.attention(mixer._with_persistent(h))[:, -1]
    assert not torch.allclose(before, after)


def test_mac_is_causal_across_and_inside_segments():
    model = tiny_model("titans-mac", segment=5)
    base = model(X)
    for t in (0, 3, 5, 12):  # the first, inside, and the start of a segment
        changed = X.clone()
        changed[:, t] = (changed[:, t] + 1) % 37
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(out[:, t], base[:, t])


def test_mac_carries_earlier_segments_only_through_the_memory():
    """Attention sees one segment; a token three segments back still matters, through the memory."""
    model = tiny_model("titans-mac", segment=4, n_layers=1)
    changed = X.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 37
    assert not torch.allclose(model(changed)[:, 12:], model(X)[:, 12:])
    with torch.no_grad():
        theta, _, alpha = model.blocks[0].mixer.lmm.gates.proj.bias.view(3, -1)
        theta.fill_(-1e4)  # no step size and no forgetting: a memory that never changes
        alpha.fill_(-1e4)
    torch.testing.assert_close(model(changed)[:, 12:], model(X)[:, 12:], rtol=0, atol=1e-12)


def test_bf16_model_keeps_a_float32_memory():
    model = tiny_model("titans-lmm").to(torch.bfloat16)
    logits, state = model.prefill(X)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert all(w.dtype == torch.float32 for w in state[0].memory.weights)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "triton"}, "unknown Titans backend"),
        ({"activation": "relu6"}, "unknown memory activation"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model("titans-lmm", **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"memory_depth": 0}, "argument 'memory_depth': Input should be greater than 0"),
        ({"n_persistent": -1}, "argument 'n_persistent': Input should be greater than or equal to 0"),
        ({"window": 8}, "does not accept argument.*window"),  # titans-lmm has no attention
    ],
)
def test_bad_sizes_are_named_by_the_config(kwargs, message):
    with pytest.raises(BenchError, match=message):
        tiny_model("titans-lmm", **kwargs)
    # the mixer checks its own arguments too, for use without the registry
    if "memory_depth" in kwargs or "n_persistent" in kwargs:
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"{name} must be >= {1 if name == 'memory_depth' else 0}"):
            LMM(32, 2, 16, **kwargs)


@pytest.mark.parametrize("name", ["titans-lmm", "titans-mal", "titans-mag", "titans-mac"])
def test_memory_stays_finite_at_initialisation_on_long_inputs(name):
    """With aligned keys (MAC's memory reads attention outputs) a too-large initial step size diverged."""
    torch.manual_seed(1)
    model = bench.build(name, d_model=128, n_layers=4, vocab_size=64)
    with torch.no_grad():
        logits = model(torch.randint(0, 64, (1, 1024), generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(logits).all()


def test_mac_decoding_cache_never_outgrows_one_segment():
    model = tiny_model("titans-mac", segment=5, n_persistent=2).eval()
    state = model.init_state(2)
    for t in range(X.shape[1]):
        _, state = model.step(X[:, t], state)
        assert all(s.cache.k.shape[2] <= 2 + 2 * 5 for s in state)


def test_empty_inputs_and_a_windowless_mag():
    for name in ("titans-mac", "titans-mag"):
        assert tiny_model(name)(X[:, :0]).shape == (2, 0, 37)
    full = tiny_model("titans-mag", window=None)  # every token in view: the persistent tokens need no sinks
    torch.testing.assert_close(full.prefill(X)[0], full(X)[:, -1], rtol=1e-9, atol=1e-9)


def test_memory_without_its_layer_norm_also_equals_the_reference():
    fast = tiny_model("titans-lmm", memory_norm=False, chunk_size=4)
    slow = tiny_model("titans-lmm", memory_norm=False, chunk_size=4, backend="torch-recurrent")
    slow.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(X), slow(X), rtol=1e-10, atol=1e-10)
    normed = tiny_model("titans-lmm", chunk_size=4)
    # the same weights (the norm's gain and bias stay at 1 and 0): only the norm differs, and it matters
    missing = normed.load_state_dict(fast.state_dict(), strict=False).missing_keys
    assert all(key.endswith(("memory_norm_weight", "memory_norm_bias")) for key in missing) and missing
    assert not torch.allclose(fast(X), normed(X))


@pytest.mark.slow
def test_compiled_memory_equals_eager():
    """compile_memory: the memory's chunk steps through torch.compile. The memory's shapes (2 heads of 8,
    hidden 32, 2 whole chunks of 16 and a partial one) are those of test_titans_memory's compiled test, so
    that one compilation serves both."""
    kwargs = dict(vocab_size=37, d_model=16, n_layers=1, n_heads=2, head_dim=8, backend="torch-chunked")
    eager = bench.build("titans-lmm", **kwargs)
    compiled = bench.build("titans-lmm", compile_memory=True, **kwargs)
    compiled.load_state_dict(eager.state_dict())
    x = X[:1, :].repeat(1, 2)[:, :40]
    outs = []
    for model in (eager, compiled):
        out = model(x)
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("granularity, length", [("head", 1024), ("channel", 2048)])
def test_memory_dispatches_per_token_within_the_issue_budget(granularity, length):
    """Issue 14's budget for one layer at chunk 16 (measured at T=4096; here shorter, where the
    per-sequence work weighs more): at most 10 operator calls per token for forward + backward, 3 for an
    inference forward. Gates per channel add per-sequence work (their coefficients' recurrences run over
    a chunk's tokens once for all chunks, some 4,000 calls in all) and almost nothing per chunk: they are
    held to the budget at 2,048 tokens."""
    from bench.measure.launches import count_dispatches

    model = bench.build("titans-lmm", vocab_size=512, d_model=128, n_layers=1, backend="torch-chunked",
                        gate_granularity=granularity)  # fmt: skip
    x = torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(0))

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()

    def inference():
        with torch.inference_mode():
            model(x)

    counts = []
    for fn in (train_step, inference):
        fn()
        counts.append(count_dispatches(fn, "cpu") / x.numel())
    assert counts[0] <= 10 and counts[1] <= 3, counts
