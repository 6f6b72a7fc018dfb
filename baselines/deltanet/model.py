"""DeltaNet (Yang et al. 2024) and Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024) as mixers in the shared
language-model shell.

- ``deltanet``: q/k/v projections, each through a causal depthwise conv and SiLU; q and k L2-normalised per
  head; beta = sigmoid(b_proj x); the delta rule; a per-head output RMSNorm (gated by SiLU(g_proj x) with
  ``use_gate``); o_proj.
- ``allow_neg_eigval`` (both families, fla's option of the same name): beta = 2 sigmoid(b_proj x) in
  (0, 2) instead of (0, 1), so the transition I - beta k k^T (k unit-norm) has the eigenvalue 1 - beta in
  (-1, 1) along k instead of (0, 1): the "negative eigenvalues" variant of Grazzi et al. (2024), which
  lets a linear recurrence flip a sign and so track parity. Off by default, as in fla and the papers.
- ``gated-deltanet``: the same with a per-head decay before each write, the log decay
  g = -exp(A_log) * softplus(a_proj x + dt_bias), and the gated output norm by default.

Backends: "fla" runs flash-linear-attention's own ``DeltaNet`` / ``GatedDeltaNet`` layers (Triton chunk
kernels, CUDA); "torch-chunked" our pure-PyTorch chunkwise (WY) form; "torch-recurrent" the per-token
reference. Our mixers name and shape every parameter as fla's layers do, so a state_dict moves between
backends.

Our mixers (both torch backends) support state passing: ``forward_from`` continues from a state (the three
conv windows and the memory, as ``prefill`` returns it) with gradients into it. fla's layers are left
without it: whether their kernels carry gradients through a carried conv window and memory (also on the
per-token path they switch to for 64 tokens or fewer) cannot be checked without CUDA. ``trace`` reports by
position the memory's norm and the write strength beta (and the decay, for the gated rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat, PositiveInt
from torch import nn

from baselines.deltanet.chunk import delta_rule_chunked, gated_delta_rule_chunked
from baselines.deltanet.naive import (
    delta_rule_recurrent,
    delta_rule_step,
    gated_delta_rule_recurrent,
    gated_delta_rule_step,
)
from models.modules.backends import (
    TORCH_BACKENDS,
    UpstreamMixer,
    resolve_backend,
    torch_or_upstream_backends,
    upstream_problem,
)
from models.modules.catalog import ModelFamily
from models.modules.config import ModelConfig
from models.modules.conv import CausalConv1d
from models.modules.dtypes import compute_dtype, dtype_bytes
from models.modules.init import init_projections, inverse_softplus_dt
from models.modules.lm import LanguageModel, Mixer
from models.modules.norm import GatedRMSNorm, RMSNorm

FLA_CHUNK_SIZE = 64  # fla's chunk kernels work in chunks of 64 tokens


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum x^2 + eps) over the last dim, in float32 or wider: fla's in-kernel q/k norm."""
    wide = x.to(compute_dtype(x.dtype))
    return (wide * torch.rsqrt(wide.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass
class DeltaState:
    """Decoding state of one (Gated) DeltaNet mixer: the q, k, v conv windows and the memory S [B, H, K, V]
    in float32 or wider."""

    conv: list[torch.Tensor]
    memory: torch.Tensor


def delta_flops(
    d_model: int,
    key_dim: int,
    value_dim: int,
    n_heads: int,
    conv_size: int,
    use_gate: bool,
    gated: bool,
    chunk: int,
    seq_len: int,
) -> float:
    """Multiply-adds count 2: projections, conv taps, and the chunkwise delta rule per head and token."""
    outputs = 2 * key_dim + value_dim + n_heads * (2 if gated else 1) + (value_dim if use_gate else 0)
    projections = 2.0 * d_model * outputs + 2.0 * value_dim * d_model
    conv = 2.0 * conv_size * (2 * key_dim + value_dim)
    c = min(chunk, seq_len)
    dk, dv = key_dim // n_heads, value_dim // n_heads
    # k k^T and q k^T over the chunk, the triangular solve, the intra-chunk read, and three state products
    # (w S, the chunk's write k^T u, the query's read q S)
    rule = 4.0 * c * dk + c * (dk + dv) + 2.0 * c * dv + 6.0 * dk * dv
    return projections + conv + n_heads * rule


class DeltaNet(Mixer):
    """(Gated) DeltaNet's mixer in pure PyTorch, with the parameter names and shapes of fla's ``DeltaNet``
    (``gated=False``) or ``GatedDeltaNet`` (``gated=True``); q/k activation SiLU, q/k norm L2, beta on."""

    state_growth = "constant"
    supports_state_passing = True

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_k_dim: int,
        head_v_dim: int,
        gated: bool = False,
        use_gate: bool = False,
        conv_size: int = 4,
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
        backend: str = "torch-chunked",
        allow_neg_eigval: bool = False,
    ):
        super().__init__()
        if backend not in TORCH_BACKENDS:
            raise ValueError(f"DeltaNet's torch mixer runs {', '.join(TORCH_BACKENDS)}, not {backend!r}")
        self.backend = backend
        if gated:
            chunked, recurrent = gated_delta_rule_chunked, gated_delta_rule_recurrent
        else:
            chunked, recurrent = delta_rule_chunked, delta_rule_recurrent
        self.rule = partial(chunked, chunk_size=chunk_size) if backend == "torch-chunked" else recurrent
        self.d_model, self.num_heads, self.gated, self.use_gate = d_model, num_heads, gated, use_gate
        self.allow_neg_eigval = allow_neg_eigval
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.key_dim, self.value_dim = num_heads * head_k_dim, num_heads * head_v_dim
        self.conv_size, self.chunk_size = conv_size, chunk_size

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        if gated:
            self.a_proj = nn.Linear(d_model, num_heads, bias=False)
            self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(0, 16).log())
            self.dt_bias = nn.Parameter(inverse_softplus_dt(num_heads))
        self.b_proj = nn.Linear(d_model, num_heads, bias=False)
        self.q_conv1d = CausalConv1d(self.key_dim, conv_size, bias=False, activation="silu")
        self.k_conv1d = CausalConv1d(self.key_dim, conv_size, bias=False, activation="silu")
        self.v_conv1d = CausalConv1d(self.value_dim, conv_size, bias=False, activation="silu")
        if use_gate:
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
            self.o_norm = GatedRMSNorm(head_v_dim, eps=norm_eps, norm_before_gate=True)
        else:
            self.o_norm = RMSNorm(head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        init_projections(self)

    def _projections(self):
        return self.q_proj, self.k_proj, self.v_proj

    def _convs(self):
        return self.q_conv1d, self.k_conv1d, self.v_conv1d

    def _gates(self, x: torch.Tensor):
        """beta [.., H] in (0, 1) (in (0, 2) with ``allow_neg_eigval``) and, for the gated rule, the log
        decay g [.., H] <= 0; float32 or wider."""
        wide = compute_dtype(x.dtype)
        beta = torch.sigmoid(self.b_proj(x).to(wide))
        if self.allow_neg_eigval:
            beta = 2.0 * beta
        if not self.gated:
            return beta, None
        decay_rate = F.softplus(self.a_proj(x).to(wide) + self.dt_bias.to(wide))
        return beta, -self.A_log.to(wide).exp() * decay_rate

    def _qkv(self, x: torch.Tensor, conv_state: list | None, one_token: bool = False):
        """Projections and convs on x [B, T, d] (or [B, d] for ``one_token``): q, k (L2-normalised) and v,
        split into heads on a new second-last dim, and the new conv windows."""
        outs = []
        conv_state = conv_state or [None, None, None]
        for proj, conv, window in zip(self._projections(), self._convs(), conv_state, strict=True):
            outs.append(conv.step(proj(x), window) if one_token else conv(proj(x), window))
        (q, cq), (k, ck), (v, cv) = outs
        q = l2_normalize(q.unflatten(-1, (self.num_heads, self.head_k_dim)))
        k = l2_normalize(k.unflatten(-1, (self.num_heads, self.head_k_dim)))
        return q, k, v.unflatten(-1, (self.num_heads, self.head_v_dim)), [cq, ck, cv]

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [.., H, V] -> per-head output norm (gated with g_proj) -> o_proj."""
        o = o.to(x.dtype)
        if self.use_gate:
            o = self.o_norm(o, self.g_proj(x).unflatten(-1, (self.num_heads, self.head_v_dim)))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.flatten(-2))

    def _run(self, x: torch.Tensor, state: DeltaState | None) -> tuple[torch.Tensor, DeltaState]:
        q, k, v, windows = self._qkv(x, None if state is None else state.conv)
        beta, g = self._gates(x)
        heads_first = [t.transpose(1, 2) for t in (q, k, v)]  # the ops take [B, H, T, D]
        gates = (beta.mT,) if g is None else (g.mT, beta.mT)
        o, memory = self.rule(*heads_first, *gates, initial_state=None if state is None else state.memory)
        return self._output(o.transpose(1, 2), x), DeltaState(windows, memory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)[0]

    def forward_from(self, x: torch.Tensor, state: DeltaState | None) -> tuple[torch.Tensor, DeltaState]:
        return self._run(x, state)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, DeltaState]:
        return self._run(x, None)

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Diagnostics by position for x [B, T, d], each [B, T] in float32:

        - ``state_norm``: the Frobenius norm of each head's memory [K, V] after each token, summed over heads
          (the conv windows are not part of it);
        - ``beta``: the write strength, averaged over heads (how much of the error v - S^T k is written);
        - ``decay`` (gated rule only): the factor exp(g) by which the token multiplies a head's memory before
          writing, averaged over heads (1 keeps the memory, 0 erases it).

        The memories come from the decoding step, token by token: those ``prefill`` returns, to rounding."""
        q, k, v, _ = self._qkv(x, None)
        beta, g = self._gates(x)
        memory = self.init_state(x.shape[0], x.device, x.dtype).memory
        norms = []
        for t in range(x.shape[1]):
            _, memory = self._rule_step(
                memory, q[:, t], k[:, t], v[:, t], beta[:, t], None if g is None else g[:, t]
            )
            norms.append(torch.linalg.matrix_norm(memory).sum(-1))
        trace = {"state_norm": torch.stack(norms, 1), "beta": beta.mean(-1)}
        if g is not None:
            trace["decay"] = g.exp().mean(-1)
        return {name: values.float() for name, values in trace.items()}

    def init_state(self, batch_size: int, device, dtype) -> DeltaState:
        shape = (batch_size, self.num_heads, self.head_k_dim, self.head_v_dim)
        memory = torch.zeros(shape, device=device, dtype=compute_dtype(dtype))
        return DeltaState([c.init_state(batch_size, device, dtype) for c in self._convs()], memory)

    def _rule_step(self, memory, q, k, v, beta, g):
        """One token of the (gated) delta rule on the memory [B, H, K, V]: q, k [B, H, K], v [B, H, V],
        beta and g (None for the plain rule) [B, H] -> (o [B, H, V], new memory)."""
        wide = memory.dtype  # the step functions take everything in the memory's dtype
        q, k, v, beta = q.to(wide), k.to(wide), v.to(wide), beta.to(wide)
        if g is None:
            return delta_rule_step(memory, q, k, v, beta)
        return gated_delta_rule_step(memory, q, k, v, g.to(wide), beta)

    def step(self, x: torch.Tensor, state: DeltaState) -> tuple[torch.Tensor, DeltaState]:
        q, k, v, windows = self._qkv(x, state.conv, one_token=True)
        beta, g = self._gates(x)
        o, memory = self._rule_step(state.memory, q, k, v, beta, g)
        return self._output(o, x), DeltaState(windows, memory)

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        conv = (self.conv_size - 1) * (2 * self.key_dim + self.value_dim) * dtype_bytes(dtype)
        memory = self.num_heads * self.head_k_dim * self.head_v_dim * dtype_bytes(compute_dtype(dtype))
        return batch_size * (conv + memory)

    def flops_per_token(self, seq_len: int) -> float:
        return delta_flops(
            self.d_model,
            self.key_dim,
            self.value_dim,
            self.num_heads,
            self.conv_size,
            self.use_gate,
            self.gated,
            self.chunk_size,
            seq_len,
        )


# -- fla's own layers ---------------------------------------------------------------------------------------


class FlaDeltaNet(UpstreamMixer):
    """fla's ``DeltaNet`` or ``GatedDeltaNet`` layer (built with ``layer_idx=0``), decoding through its own
    cache API: a forward with ``past_key_values`` and ``use_cache=True``. The state handed around is the
    layer's cache entry, a dict of tensors ({"recurrent_state", "conv_state", ...}); each call wraps it in
    a fresh fla ``Cache``. fla builds that entry on the first token, so the empty state is None."""

    state_growth = "constant"

    def __init__(self, layer: nn.Module):
        super().__init__(layer, "fla")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)[0]

    def _run(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        from fla.models.cache_utils import Cache

        cache = Cache.from_legacy_cache(None if state is None else (state,))
        y, _, cache = self.layer(x, past_key_values=cache, use_cache=True)
        return y, cache[self.layer.layer_idx]

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self._run(x, None)

    def init_state(self, batch_size: int, device, dtype) -> None:
        return None

    def step(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        y, state = self._run(x[:, None], state)
        return y[:, 0], state

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        layer = self.layer
        # fla keeps the whole conv window, conv_size wide, and its recurrent state in float32
        conv = (2 * layer.key_dim + layer.value_dim) * layer.conv_size * dtype_bytes(dtype)
        memory = layer.num_heads * layer.head_k_dim * layer.head_v_dim * dtype_bytes(torch.float32)
        return batch_size * (conv + memory)

    def flops_per_token(self, seq_len: int) -> float:
        layer = self.layer
        gated = hasattr(layer, "A_log")
        return delta_flops(
            layer.hidden_size,
            layer.key_dim,
            layer.value_dim,
            layer.num_heads,
            layer.conv_size,
            layer.use_gate,
            gated,
            FLA_CHUNK_SIZE,
            seq_len,
        )


def fla_problem() -> str | None:
    """Why fla's kernels cannot run here, or None. Without triton, fla.layers exports nothing."""
    return upstream_problem("fla", ("fla.layers",))


def fla_backends() -> dict[str, bool | str]:
    return torch_or_upstream_backends("fla", fla_problem)


def _check_heads(name: str, total: int, heads: int) -> int:
    if heads < 1 or total % heads:
        raise ValueError(f"{name} = {total} is not divisible by n_heads = {heads}")
    return total // heads


class DeltaNetConfig(ModelConfig):
    """``backend``: "auto" (fla on CUDA when installed, else "torch-chunked"), "fla", "torch-chunked" or
    "torch-recurrent". ``n_heads`` None means head dimensions of 128, the paper's (d_model // 128 heads, at
    least 1). ``chunk_size`` is our chunked kernel's: 32, its fastest on the CPU (fla's kernels use 64)."""

    n_heads: PositiveInt | None = None
    expand_k: PositiveFloat = 1.0
    expand_v: PositiveFloat = 1.0
    conv_size: PositiveInt = 4
    use_gate: bool = False
    chunk_size: PositiveInt = 32
    allow_neg_eigval: bool = False  # beta in (0, 2): the transition's eigenvalue along k in (-1, 1)


class GatedDeltaNetConfig(ModelConfig):
    """Backends as for DeltaNet. By default the keys take 0.75 d_model in heads of about 256 and the values
    twice that (fla's sizing, about 6 d_model^2 parameters per layer): ``n_heads`` None means
    round(0.75 d_model / 256), at least 1; ``head_dim`` None means 0.75 d_model // n_heads."""

    n_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    expand_v: PositiveFloat = 2.0
    conv_size: PositiveInt = 4
    use_gate: bool = True
    chunk_size: PositiveInt = 32
    allow_neg_eigval: bool = False  # beta in (0, 2), as for DeltaNet


def _build(
    config: DeltaNetConfig | GatedDeltaNetConfig,
    resolved: str,
    gated: bool,
    heads: int,
    head_k: int,
    head_v: int,
    fla_sizes: dict,
) -> LanguageModel:
    """The shell with a (gated) DeltaNet mixer in every block, on the resolved backend: fla's layer, sized
    by ``fla_sizes`` (its own names for the head sizes), or ours with heads of head_k and head_v."""
    c = config

    def make(i: int) -> Mixer:
        if resolved == "fla":
            import fla.layers

            layer_class = fla.layers.GatedDeltaNet if gated else fla.layers.DeltaNet
            layer = layer_class(
                hidden_size=c.d_model,
                num_heads=heads,
                use_gate=c.use_gate,
                conv_size=c.conv_size,
                allow_neg_eigval=c.allow_neg_eigval,
                layer_idx=0,
                **fla_sizes,
            )
            init_projections(layer)
            return FlaDeltaNet(layer)
        return DeltaNet(
            c.d_model,
            heads,
            head_k,
            head_v,
            gated=gated,
            use_gate=c.use_gate,
            conv_size=c.conv_size,
            chunk_size=c.chunk_size,
            backend=resolved,
            allow_neg_eigval=c.allow_neg_eigval,
        )

    return LanguageModel(c.vocab_size, c.d_model, c.n_layers, make, mlp_hidden=c.mlp_hidden)


def build_deltanet(config: DeltaNetConfig) -> LanguageModel:
    """DeltaNet in every block."""
    c = config
    resolved = resolve_backend(c.backend, "fla", fla_problem)
    heads = c.n_heads or max(1, c.d_model // 128)
    key_dim, value_dim = round(c.d_model * c.expand_k), round(c.d_model * c.expand_v)
    head_k = _check_heads("d_model * expand_k", key_dim, heads)
    head_v = _check_heads("d_model * expand_v", value_dim, heads)
    fla_sizes = dict(expand_k=c.expand_k, expand_v=c.expand_v)
    return _build(c, resolved, False, heads, head_k, head_v, fla_sizes)


def build_gated_deltanet(config: GatedDeltaNetConfig) -> LanguageModel:
    """Gated DeltaNet in every block."""
    c = config
    resolved = resolve_backend(c.backend, "fla", fla_problem)
    heads = c.n_heads or max(1, round(0.75 * c.d_model / 256))
    head_k = c.head_dim or int(0.75 * c.d_model) // heads
    head_v = head_k * c.expand_v
    if head_k < 1 or head_v != int(head_v):
        raise ValueError(f"head_dim {head_k} * expand_v {c.expand_v} must be a positive integer")
    fla_sizes = dict(expand_v=c.expand_v, head_dim=head_k)
    return _build(c, resolved, True, heads, head_k, int(head_v), fla_sizes)


DELTANET = ModelFamily("deltanet", build_deltanet, DeltaNetConfig, fla_backends, reference="torch-recurrent")
GATED_DELTANET = ModelFamily(
    "gated-deltanet", build_gated_deltanet, GatedDeltaNetConfig, fla_backends, reference="torch-recurrent"
)
