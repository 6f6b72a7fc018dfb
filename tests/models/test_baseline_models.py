"""Mamba, Mamba2, DeltaNet and Gated DeltaNet: the chunked torch models equal the per-token references
(forward and gradients), overrides reach the mixers, the upstream backends are refused where they cannot
run, and - against the installed upstream packages - our parameters are named and shaped as their layers',
and mamba_ssm's layer code computes what ours does (its kernels swapped for its own CPU references)."""

from __future__ import annotations

import importlib
import importlib.util
import types

import pytest
import torch
import torch.nn.functional as F

import bench
from bench.registry import describe_backends, reference_backend
from models.modules import tensor_bytes
from tests import upstream
from tests.helpers import TINY, tiny_model

FAMILIES = ["mamba", "mamba2", "deltanet", "gated-deltanet"]
UPSTREAM = {"mamba": "mamba_ssm", "mamba2": "mamba_ssm", "deltanet": "fla", "gated-deltanet": "fla"}
# Small enough for the per-token references, with chunks that do not divide the length.
SMALL = {
    "mamba": {},
    "mamba2": dict(d_state=16, n_heads=4, chunk_size=8),
    "deltanet": dict(n_heads=2, chunk_size=8),
    "gated-deltanet": dict(n_heads=2, chunk_size=8),
}
X = torch.randint(0, TINY["vocab_size"], (2, 29), generator=torch.Generator().manual_seed(5))


def mixer(model):
    return model.blocks[0].mixer


@pytest.mark.parametrize("name", FAMILIES)
def test_chunked_model_equals_recurrent_reference(name):
    fast = tiny_model(name, backend="torch-chunked", **SMALL[name])
    slow = tiny_model(name, backend="torch-recurrent", **SMALL[name])
    slow.load_state_dict(fast.state_dict())
    assert fast.backend == "torch-chunked" and slow.backend == "torch-recurrent"
    for model in (fast, slow):
        model(X).pow(2).mean().backward()
    torch.testing.assert_close(fast(X), slow(X), rtol=1e-10, atol=1e-10)
    for (key, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", FAMILIES)
def test_upstream_backend_is_refused_without_cuda(name):
    if torch.cuda.is_available():
        pytest.skip("with CUDA the upstream backend may be available")  # pragma: no cover - CPU CI
    kernel = UPSTREAM[name]
    with pytest.raises(ValueError, match=f"backend '{kernel}' cannot run here: .*CUDA"):
        tiny_model(name, backend=kernel)
    assert "CUDA" in describe_backends(name)[kernel]
    assert tiny_model(name).backend == "torch-chunked"  # "auto" resolves at build time
    assert reference_backend(name) == "torch-recurrent"
    assert describe_backends(name)["torch-chunked"] is True


def test_unknown_backend_and_bad_sizes_are_named():
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        tiny_model("mamba", backend="triton")
    with pytest.raises(ValueError, match="not divisible by n_heads = 48"):
        tiny_model("mamba2", n_heads=48)
    with pytest.raises(ValueError, match="not divisible by n_heads = 5"):
        tiny_model("deltanet", n_heads=5)


def test_defaults_follow_the_papers():
    m = mixer(bench.build("mamba", n_layers=1))
    assert (m.d_state, m.d_conv, m.d_inner, m.dt_rank) == (16, 4, 512, 16)
    torch.testing.assert_close(m.A_log.exp()[0], torch.arange(1.0, 17), check_dtype=False)  # S4D-real
    m = mixer(bench.build("mamba2", n_layers=1))
    assert (m.headdim, m.d_state, m.n_heads, m.ngroups, m.d_conv) == (64, 128, 8, 1, 4)
    m = mixer(bench.build("deltanet", n_layers=1))
    assert (m.num_heads, m.head_k_dim, m.head_v_dim, m.use_gate, m.gated) == (2, 128, 128, False, False)
    m = mixer(bench.build("gated-deltanet", d_model=1024, n_layers=1))  # heads of 256, as fla sizes them
    assert (m.num_heads, m.head_k_dim, m.head_v_dim, m.use_gate, m.gated) == (3, 256, 512, True, True)


def test_overrides_reach_the_mixers():
    m = mixer(tiny_model("mamba", d_state=8, expand=3, d_conv=2, dt_rank=5))
    assert m.A_log.shape == (96, 8) and m.conv1d.weight.shape == (96, 1, 2)
    assert m.x_proj.weight.shape == (5 + 16, 96)
    m = mixer(tiny_model("mamba2", n_heads=2, d_state=32, ngroups=2, expand=1))
    assert (m.n_heads, m.A_log.shape, m.conv1d.weight.shape) == (2, (2,), (32 + 2 * 2 * 32, 1, 4))
    m = mixer(tiny_model("deltanet", n_heads=4, expand_v=2.0, use_gate=True))
    assert (m.head_k_dim, m.head_v_dim, m.g_proj.weight.shape) == (8, 16, (64, 32))
    m = mixer(tiny_model("gated-deltanet", n_heads=2, head_dim=8, expand_v=1.0, use_gate=False))
    assert (m.head_k_dim, m.head_v_dim, m.a_proj.weight.shape) == (8, 8, (2, 32))
    assert not hasattr(m, "g_proj")


@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet"])
def test_negative_eigenvalues_option(name):
    """``allow_neg_eigval``: beta doubles (in (0, 2)), the chunked model still equals the per-token
    reference in float64, forward and gradients, and decoding step by step reproduces the forward."""
    default = tiny_model(name, **SMALL[name])
    fast = tiny_model(name, backend="torch-chunked", allow_neg_eigval=True, **SMALL[name])
    slow = tiny_model(name, backend="torch-recurrent", allow_neg_eigval=True, **SMALL[name])
    fast.load_state_dict(default.state_dict())
    slow.load_state_dict(default.state_dict())
    assert not mixer(default).allow_neg_eigval and mixer(fast).allow_neg_eigval
    x = torch.randn(2, 5, TINY["d_model"], dtype=torch.float64)
    beta, beta_default = mixer(fast)._gates(x)[0], mixer(default)._gates(x)[0]
    torch.testing.assert_close(beta, 2 * beta_default)
    for model in (fast, slow):
        model(X).pow(2).mean().backward()
    torch.testing.assert_close(fast(X), slow(X), rtol=1e-10, atol=1e-10)
    for (key, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=key)
    assert not torch.allclose(fast(X), default(X))  # the option changes the model
    with torch.no_grad():
        state = fast.init_state(2)
        steps = []
        for t in range(X.shape[1]):
            logits, state = fast.step(X[:, t], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), fast(X), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_model_keeps_a_float32_recurrent_state(name):
    model = bench.build(name, **TINY).to(torch.bfloat16)
    logits, state = model.prefill(X)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    recurrent = state[0].ssm if name.startswith("mamba") else state[0].memory
    assert recurrent.dtype == torch.float32
    assert model.state_bytes(2, X.shape[1]) == tensor_bytes(state)
    logits, _ = model.step(X[:, 0], state)
    assert torch.isfinite(logits.float()).all()


# -- against the upstream packages --------------------------------------------------------------------------


MAMBA_SSM_MODULES = (
    "modules.mamba_simple",
    "modules.mamba2",
    "utils.generation",
    "modules.ssd_minimal",
    "ops.selective_scan_interface",
    "ops.triton.layernorm_gated",
)


def missing(package: str) -> None:
    """A failure in CI, where the references are installed, and a skip elsewhere (as tests/upstream.py)."""
    message = f"{package} is not installed: {upstream.INSTALL_HINT}"
    if upstream.in_ci():
        pytest.fail(message)
    pytest.skip(message)


def import_mamba_ssm() -> dict[str, types.ModuleType]:
    """The mamba_ssm modules these tests use, loaded on the CPU without the package's __init__ (which
    imports Mamba3's tilelang and CUTLASS kernels) and with a stand-in for its compiled selective scan."""
    modules = {name: upstream._mamba_module(name) for name in MAMBA_SSM_MODULES}
    if None in modules.values():
        missing("mamba-ssm")
    return modules


def import_fla_layers() -> types.ModuleType:
    if importlib.util.find_spec("fla") is None:
        missing("fla")
    layers = importlib.import_module("fla.layers")
    if not hasattr(layers, "DeltaNet"):
        missing("fla with triton (fla.layers exports nothing without it)")
    return layers


def build_upstream(monkeypatch, name: str, **overrides):
    """The model with its upstream backend, built on the CPU by pretending that backend can run here."""
    if UPSTREAM[name] == "mamba_ssm":
        import_mamba_ssm()
        monkeypatch.setattr("baselines.mamba.model.mamba_ssm_problem", lambda: None)
    else:
        import_fla_layers()
        monkeypatch.setattr("baselines.deltanet.model.fla_problem", lambda: None)
    return bench.build(name, **{**TINY, "backend": UPSTREAM[name], **overrides})


UPSTREAM_CONFIGS = [
    ("mamba", {}),
    ("mamba", dict(d_state=8, expand=3, dt_rank=3)),
    ("mamba2", dict(d_state=16, n_heads=4, ngroups=2)),
    ("deltanet", {}),
    ("deltanet", dict(n_heads=4, expand_k=0.5, use_gate=True)),
    ("gated-deltanet", {}),
    ("gated-deltanet", dict(n_heads=2, head_dim=8, use_gate=False)),
]


@pytest.mark.upstream
@pytest.mark.parametrize(("name", "overrides"), UPSTREAM_CONFIGS)
def test_parameters_are_the_upstream_layers(monkeypatch, name, overrides):
    theirs = build_upstream(monkeypatch, name, **overrides)
    ours = bench.build(name, **TINY, backend="torch-chunked", **overrides)
    assert theirs.backend == UPSTREAM[name] and ours.backend == "torch-chunked"
    # the upstream layer's own parameters, then the whole model's state_dict on both backends
    layer_shapes = {k: v.shape for k, v in mixer(theirs).layer.state_dict().items()}
    assert {k: v.shape for k, v in mixer(ours).state_dict().items()} == layer_shapes
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert {k: v.shape for k, v in theirs.state_dict().items()} == shapes
    theirs.load_state_dict(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[key], value), key
    ours.load_state_dict(theirs.state_dict())


@pytest.mark.upstream
@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet"])
@pytest.mark.parametrize("allow", [False, True])
def test_negative_eigenvalues_reach_the_fla_layers(monkeypatch, name, allow):
    model = build_upstream(monkeypatch, name, allow_neg_eigval=allow)
    assert all(block.mixer.layer.allow_neg_eigval is allow for block in model.blocks)


@pytest.fixture
def mamba_ssm_on_cpu(monkeypatch):
    """mamba_ssm's layer code with its GPU kernels replaced by its own pure-PyTorch references: the
    selective scan by selective_scan_ref, the SSD by ssd_minimal_discrete, the gated norm by rms_norm_ref,
    and the convolutions and decoding steps by the layers' own torch fallbacks."""
    modules = import_mamba_ssm()
    mamba_simple, mamba2 = modules["modules.mamba_simple"], modules["modules.mamba2"]
    ssd_minimal_discrete = modules["modules.ssd_minimal"].ssd_minimal_discrete
    selective_scan_ref = modules["ops.selective_scan_interface"].selective_scan_ref
    layernorm_gated = modules["ops.triton.layernorm_gated"]

    def ssd_scan(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=None,
        z=None,
        dt_bias=None,
        dt_softplus=False,
        return_final_states=False,
        **unused,
    ):
        assert z is None and dt_softplus
        dt = F.softplus(dt + dt_bias)
        heads = x.shape[2]
        B, C = (t.repeat_interleave(heads // t.shape[2], dim=2) for t in (B, C))
        pad = (-x.shape[1]) % chunk_size  # padded tokens (x dt = 0, A dt = 0) leave the state alone
        padded = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x * dt[..., None], A * dt, B, C))
        y, final = ssd_minimal_discrete(*padded, chunk_size)
        y = y[:, : x.shape[1]] + x * D[:, None]
        return (y, final) if return_final_states else y

    for module in (mamba_simple, mamba2):
        monkeypatch.setattr(module, "causal_conv1d_fn", None)
        monkeypatch.setattr(module, "causal_conv1d_update", None)
        monkeypatch.setattr(module, "selective_state_update", None)
    monkeypatch.setattr(mamba_simple, "selective_scan_fn", selective_scan_ref)
    monkeypatch.setattr(mamba2, "mamba_chunk_scan_combined", ssd_scan)
    monkeypatch.setattr(layernorm_gated, "rmsnorm_fn", layernorm_gated.rms_norm_ref)


@pytest.mark.upstream
@pytest.mark.parametrize(("name", "overrides"), [("mamba", {}), ("mamba2", dict(d_state=16, n_heads=4))])
def test_mamba_ssm_layers_compute_what_ours_do(monkeypatch, mamba_ssm_on_cpu, name, overrides):
    """Same weights, float32 (the upstream references compute in float32): forward, and the upstream
    backend's decoding through the layers' own inference API."""
    theirs = build_upstream(monkeypatch, name, **overrides).float().eval()
    for block in theirs.blocks:
        block.mixer.layer.use_mem_eff_path = False  # Mamba2's fused path has no reference to swap in
    ours = bench.build(name, **TINY, backend="torch-chunked", **overrides).eval()
    ours.load_state_dict(theirs.state_dict())
    x = X[:, :13]
    full = ours(x)
    torch.testing.assert_close(theirs(x), full, rtol=1e-4, atol=1e-5)
    for split in (0, 6):  # from the empty state, and after a prompt
        if split:
            logits, state = theirs.prefill(x[:, :split])
            torch.testing.assert_close(logits, full[:, split - 1], rtol=1e-4, atol=1e-5)
            assert theirs.state_bytes(2, split) == tensor_bytes(state)
        else:
            state = theirs.init_state(2)
        for t in range(split, x.shape[1]):
            logits, state = theirs.step(x[:, t], state)
            torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)
