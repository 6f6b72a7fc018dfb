"""The Titans memory's Triton kernels (models/titans/triton_chunk.py) against the per-token reference, run on
the CPU through Triton's interpreter (TRITON_INTERPRET=1): outputs, final state and gradients, the state
carried between calls, decoding, the backend at model level, and the launches per token.

Tolerances. In float64 the kernels equal the reference to rounding (1e-10). In float32 the reference itself
is off: the memory's LayerNorm divides by the spread of the last layer's output, which amplifies rounding
(with these random inputs the per-token reference in float32 is up to ~5e-3 off the float64 one in some
gradients). So a float32 result is held to the float64 reference within FP32_FACTOR times the float32
reference's own error plus FP32_FLOOR, per output, state tensor and gradient.

The interpreter runs the kernels as numpy, a few seconds per case: the cases are marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch

import bench
from bench.measure.backend_check import check_model
from bench.measure.launches import count_dispatches
from models.titans import MemoryState, chunk_titans_memory, naive_recurrent_titans_memory, triton_chunk
from models.titans.model import titans_backends
from models.titans.triton_chunk import triton_chunk_titans_memory
from tests.ops import test_titans_memory
from tests.ops.test_titans_memory import (
    GATE_NAMES,
    assert_states_close,
    call,
    differentiable_leaves,
    make_inputs,
    rel_err,
    scalar_loss,
)

FP32_FACTOR, FP32_FLOOR = 10.0, 1e-6
FP64_TOL = 1e-10


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    """Triton's CPU interpreter for every test here, and only here (the backend's availability reads it)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _as(inputs: dict, dtype: torch.dtype) -> dict:
    """The same inputs in another dtype, as fresh leaves."""
    out = {n: v.detach().to(dtype).requires_grad_() for n, v in inputs.items() if n != "params"}
    out["params"] = tuple(p.detach().to(dtype).requires_grad_() for p in inputs["params"])
    return out


def _outputs(fn, inputs: dict, **kwargs) -> list[torch.Tensor]:
    """y, the final weights and momentum, and the gradients of a loss touching all of them, in float64."""
    y, state = call(fn, inputs, **kwargs)
    as64 = MemoryState(*(tuple(t.double() for t in group) for group in state[:3]), state.pos)
    grads = torch.autograd.grad(scalar_loss(y.double(), as64), differentiable_leaves(inputs))
    return [y.double(), *as64.weights, *as64.momentum, *(g.double() for g in grads)]


def _names(n_layers: int) -> list[str]:
    layers = [f"weights[{i}]" for i in range(n_layers)] + [f"momentum[{i}]" for i in range(n_layers)]
    return ["y", *layers, "q", "k", "v", *GATE_NAMES] + [f"params[{i}]" for i in range(n_layers)]


def check_float32(n_layers: int, T: int, gates: str = "random", seed: int = 0, **kwargs) -> None:
    inputs64 = make_inputs(T, n_layers, torch.float64, gates=gates, seed=seed)
    truth = _outputs(naive_recurrent_titans_memory, inputs64, **kwargs)
    reference = _outputs(naive_recurrent_titans_memory, _as(inputs64, torch.float32), **kwargs)
    kernels = _outputs(triton_chunk_titans_memory, _as(inputs64, torch.float32), **kwargs)
    for name, got, ref32, true in zip(_names(n_layers), kernels, reference, truth, strict=True):
        bound = FP32_FACTOR * rel_err(ref32, true) + FP32_FLOOR
        assert rel_err(got, true) <= bound, (name, rel_err(got, true), bound)


def check_float64(n_layers: int, T: int, gates: str = "random", seed: int = 0, **kwargs) -> None:
    inputs = make_inputs(T, n_layers, torch.float64, gates=gates, seed=seed)
    expected = _outputs(naive_recurrent_titans_memory, inputs, **kwargs)
    got = _outputs(triton_chunk_titans_memory, inputs, **kwargs)
    for name, a, b in zip(_names(n_layers), got, expected, strict=True):
        assert rel_err(a, b) < FP64_TOL, (name, rel_err(a, b))


# Chunks of 1, 4 and 16 tokens, each with a partial last chunk; head dim 5 and hidden width 7 (make_inputs),
# so that every block is padded; batch 2, 3 heads.
@pytest.mark.slow
@pytest.mark.parametrize("chunk_size, T", [(1, 5), (4, 11), (16, 37)])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_float32_matches_reference(n_layers: int, chunk_size: int, T: int) -> None:
    check_float32(n_layers, T, chunk_size=chunk_size, norm=True, seed=n_layers * 10 + chunk_size)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [dict(norm=False), dict(norm=True, residual=False), dict(norm=True, activation="silu")],
    ids=["no-norm", "no-residual", "silu"],
)
def test_float32_variants_match_reference(kwargs: dict) -> None:
    check_float32(2, 11, gates="strong", chunk_size=4, seed=5, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("n_layers, gates", [(1, "random"), (2, "strong"), (2, "plain")])
def test_float64_equals_reference(n_layers: int, gates: str) -> None:
    check_float64(n_layers, 13, gates=gates, chunk_size=4, norm=True, seed=n_layers)


@pytest.mark.slow
def test_several_hidden_tiles_equal_one(monkeypatch) -> None:
    """The GPU's tiling of the hidden units (the interpreter's default is one tile): hidden width 40 over
    tiles of 16, the last one partial, forward and backward, float64 and float32."""
    monkeypatch.setattr(test_titans_memory, "HIDDEN", 40)
    monkeypatch.setattr(triton_chunk, "HIDDEN_TILE", 16)
    check_float64(2, 11, chunk_size=4, norm=True, seed=8)
    check_float32(2, 11, chunk_size=4, norm=True, seed=8)


@pytest.mark.slow
@pytest.mark.parametrize("split", [1, 6])
def test_split_call_equals_one_call(split: int) -> None:
    """The state carried between calls, with gradients through both calls and through the base a call
    ends on: split 1 leaves a chunk with 3 tokens to go (the second call's first launch continues it from
    its base), split 6 ends the first call's last launch inside a chunk (it writes that chunk's base)."""
    inputs = make_inputs(13, 2, torch.float64, seed=split)
    leaves = differentiable_leaves(inputs)
    y_full, state_full = call(naive_recurrent_titans_memory, inputs, chunk_size=4, norm=True)
    y1, state1 = call(triton_chunk_titans_memory, inputs, slice(0, split), chunk_size=4, norm=True)
    assert state1.pos == split % 4
    y2, state2 = call(triton_chunk_titans_memory, inputs, slice(split, None), chunk_size=4, state=state1,
                      norm=True)  # fmt: skip
    y_split = torch.cat([y1, y2], dim=2)
    assert rel_err(y_split, y_full) < 1e-12
    assert_states_close(state2, state_full, 1e-12)
    # a loss on the base the first call ends on, too (the state a later call would continue from)
    y1_ref, state1_ref = call(naive_recurrent_titans_memory, inputs, slice(0, split), chunk_size=4, norm=True)
    losses = []
    for y, state, first in ((y_split, state2, state1), (y_full, state_full, state1_ref)):
        gen = torch.Generator().manual_seed(2)
        on_base = sum((b * torch.randn(b.shape, generator=gen, dtype=b.dtype)).sum() for b in first.base)
        losses.append(scalar_loss(y, state) + on_base)
    grads, grads_ref = (torch.autograd.grad(loss, leaves) for loss in losses)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert rel_err(g, g_ref) < FP64_TOL


@pytest.mark.slow
@pytest.mark.parametrize("n_layers", [1, 2])
def test_token_by_token_equals_one_call(n_layers: int) -> None:
    inputs = make_inputs(9, n_layers, torch.float64, seed=11)
    with torch.no_grad():
        y_full, state_full = call(naive_recurrent_titans_memory, inputs, chunk_size=4, norm=True)
        state, ys = None, []
        for t in range(9):
            y, state = call(triton_chunk_titans_memory, inputs, slice(t, t + 1), chunk_size=4, state=state,
                            norm=True)  # fmt: skip
            ys.append(y)
    assert rel_err(torch.cat(ys, dim=2), y_full) < 1e-12
    assert_states_close(state, state_full, 1e-12)


@pytest.mark.slow
def test_bf16_inputs_keep_a_float32_state() -> None:
    inputs = make_inputs(9, 2, torch.float32, seed=2)
    low = {n: inputs[n].detach().bfloat16() for n in ("q", "k", "v", *GATE_NAMES)}
    with torch.no_grad():
        y_ref, state_ref = chunk_titans_memory(*low.values(), inputs["params"], chunk_size=4, norm=True)
        y, state = triton_chunk_titans_memory(*low.values(), inputs["params"], chunk_size=4, norm=True)
    assert y.dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for w in (*state.weights, *state.momentum, *state.base))
    assert rel_err(y.float(), y_ref.float()) < 1e-2  # the two round to bf16 apart
    assert_states_close(state, state_ref, 1e-5)


def test_empty_sequence_returns_the_state_unchanged() -> None:
    inputs = make_inputs(0, 2, torch.float32)
    y, state = call(triton_chunk_titans_memory, inputs, chunk_size=4)
    assert y.shape == (2, 3, 0, 5) and state.pos == 0


def test_depth_three_and_no_device_are_refused(monkeypatch) -> None:
    with pytest.raises(ValueError, match="depth 1 or 2"):
        call(triton_chunk_titans_memory, make_inputs(3, 3, torch.float32))
    with pytest.raises(ValueError, match="backend 'triton' cannot run here: its kernels hold"):
        bench.build("titans-lmm", vocab_size=32, d_model=16, n_layers=1, memory_depth=3, backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    small = dict(vocab_size=32, d_model=16, n_layers=1)
    if torch.cuda.is_available():  # "auto" prefers the kernels on CUDA
        assert bench.build("titans-lmm", **small).backend == "triton"
        return
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        call(triton_chunk_titans_memory, make_inputs(3, 2, torch.float32))
    with pytest.raises(ValueError, match="backend 'triton' cannot run here: the Triton kernels need a CUDA"):
        bench.build("titans-lmm", **small, backend="triton")
    assert bench.build("titans-lmm", **small).backend == "torch-chunked"
    assert isinstance(titans_backends()["triton"], str)  # bench validate and bench list skip it, saying why


def test_a_memory_the_kernels_do_not_implement_is_refused_by_name(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="do not implement channel gates .*, the memory LayerNorm's gain"):
        bench.build("titans-lmm", vocab_size=37, d_model=16, n_layers=1, backend="triton")


# -- the backend at model level ------------------------------------------------------------------------------
# The memory the kernels implement: gates per head, the memory LayerNorm without gain and bias.
MODEL = dict(vocab_size=37, d_model=16, n_layers=2, chunk_size=4, gate_granularity="head",
             memory_norm_affine=False)  # fmt: skip
X = torch.randint(0, 37, (2, 11), generator=torch.Generator().manual_seed(3))


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [("titans-lmm", {}), ("titans-mal", {"window": 5})])
def test_model_on_the_triton_backend_equals_torch_chunked(name: str, extra: dict) -> None:
    """In float64: logits, every parameter's gradient, and prefill then decoding token by token."""
    fast = bench.build(name, backend="triton", **MODEL, **extra).double()
    ref = bench.build(name, backend="torch-chunked", **MODEL, **extra).double()
    ref.load_state_dict(fast.state_dict())
    assert fast.backend.startswith("triton") and ref.backend.startswith("torch-chunked")
    logits = fast(X)
    torch.testing.assert_close(logits, ref(X), rtol=1e-9, atol=1e-9)
    for model in (fast, ref):
        model(X).pow(2).mean().backward()
    for (param, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-12, msg=param)
    with torch.no_grad():
        last, state = fast.prefill(X[:, :5])
        torch.testing.assert_close(last, logits[:, 4], rtol=1e-9, atol=1e-9)
        for t in range(5, X.shape[1]):
            step, state = fast.step(X[:, t], state)
            torch.testing.assert_close(step, logits[:, t], rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_inference_launches_per_token_per_layer_at_4096() -> None:
    """Issue 27's budget: at most 0.05 dispatches per token per layer for inference at T=4096, counted
    with the harness's counter (a kernel launch counts once, the interpreter's work inside it not at
    all; every other operator of the model counts, views included)."""
    model = bench.build(
        "titans-lmm",
        vocab_size=512,
        d_model=16,
        n_layers=1,
        backend="triton",
        gate_granularity="head",
        memory_norm_affine=False,
    )
    x = torch.randint(0, 512, (1, 4096), generator=torch.Generator().manual_seed(0))

    def inference():
        with torch.inference_mode():
            model(x)

    inference()
    per_token = count_dispatches(inference, "cpu") / x.numel()
    assert per_token <= 0.05, per_token


@pytest.mark.slow
def test_validate_skips_the_triton_backend_for_the_default_memory_saying_why() -> None:
    """bench validate builds the default memory (gates per channel, the LN's gain and bias), which the
    kernels do not implement: it is not validated, and the reason is what bench list shows."""
    rows = check_model("titans-lmm", torch.device("cpu"), 20, ["float32"])
    assert {r["backend"] for r in rows} == {"torch-chunked", "torch-recurrent"}
    assert "gates per head" in titans_backends()["triton"]
