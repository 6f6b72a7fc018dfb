"""Titans models (Behrouz, Zhong, Mirrokni 2024, §4.3-4.4) in the shared language-model shell.

- ``titans-lmm``: the neural long-term memory alone as every block's mixer.
- ``titans-mal``: memory as a layer: persistent tokens -> LMM -> sliding-window attention (Figure 5).
- ``titans-mag``: memory as a gate: sliding-window attention and the LMM side by side, the memory gating.
- ``titans-mac`` (memory as context) is in mac.py.

The LMM mixer: q/k/v projections, each through a causal depthwise convolution and SiLU; q and k
L2-normalised per head; data-dependent gates theta (learning rate), eta (momentum) and alpha (forgetting),
each sigmoid(linear(x_t)), per head, memory layer and channel by default (gates.py); a per-head MLP memory,
M(x) = x + LN(MLP(x)) with a learnable gain and bias on the LN, updated at test time by the memory op; then
RMSNorm, a linear SiLU gate, and the output projection.

Every mixer here continues a sequence from a state with gradients (``forward_from``, for training with the
state carried across windows), reports the memory by position (``trace``) and can run without writing its
memory (``set_test_time_writes``), see models.modules.lm.Mixer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from models.modules.attention import Attention
from models.modules.catalog import ModelFamily
from models.modules.config import ModelConfig
from models.modules.conv import CausalConv1d
from models.modules.dtypes import compute_dtype, dtype_bytes
from models.modules.lm import LanguageModel, Mixer
from models.modules.norm import RMSNorm
from models.titans.chunk import chunk_titans_memory
from models.titans.fused_recurrent import fused_recurrent_titans_memory
from models.titans.gates import MemoryGates
from models.titans.naive import (
    ACTIVATIONS,
    GATE_NAMES,
    MemoryState,
    initial_state,
    layer_gates,
    naive_recurrent_titans_memory,
)
from models.titans.triton_chunk import MAX_DEPTH as TRITON_MAX_DEPTH
from models.titans.triton_chunk import triton_chunk_titans_memory, triton_problem

# backend -> (op for whole sequences, op for decoding one token at a time). The Triton kernels decode too:
# one token is one launch (the gates' coefficients formed inside it), against a few dozen operators token
# by token.
MEMORY_BACKENDS = {
    "torch-chunked": (chunk_titans_memory, fused_recurrent_titans_memory),
    "torch-recurrent": (naive_recurrent_titans_memory, naive_recurrent_titans_memory),
    "triton": (triton_chunk_titans_memory, triton_chunk_titans_memory),
}


def resolve_memory_backend(requested: str, memory_depth: int) -> str:
    """The memory's backend, fixed at build time: "auto" is "triton" on CUDA for the memories its kernels
    hold (depths 1 and 2, every gate form and variant), else "torch-chunked"; an explicit "triton" that
    cannot run here is an error, never a fallback (on a machine without CUDA it runs only under
    TRITON_INTERPRET=1, Triton's CPU interpreter)."""
    if requested not in ("auto", *MEMORY_BACKENDS):
        choices = ", ".join(MEMORY_BACKENDS)
        raise ValueError(f"unknown Titans backend {requested!r}; choose from auto, {choices}")
    reason = triton_problem()
    if reason is None and memory_depth > TRITON_MAX_DEPTH:
        reason = f"its kernels hold memories of depth 1 to {TRITON_MAX_DEPTH}, not {memory_depth}"
    if requested == "auto":
        return "triton" if torch.cuda.is_available() and reason is None else "torch-chunked"
    if requested == "triton" and reason is not None:
        raise ValueError(f"backend 'triton' cannot run here: {reason}")
    return requested


@torch.compiler.disable
def _memory_call(op, extra: dict, *args, **kwargs):
    """The memory op, never traced by torch.compile: its Python loop over chunks would unroll into a graph
    that grows with the sequence length (381 s to compile one layer at T=256). A model compiled whole
    therefore calls it here, outside its graph, and the op compiles its per-chunk steps instead."""
    return op(*args, **extra, **kwargs)


def persistent_tokens(n_persistent: int, d_model: int) -> nn.Parameter | None:
    """The learnable, input-independent tokens prepended to every sequence, or None."""
    return nn.Parameter(torch.randn(n_persistent, d_model) * 0.02) if n_persistent else None


def with_persistent(persistent: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """[persistent tokens] || x along time, for x [B, T, d]."""
    if persistent is None:
        return x
    return torch.cat([persistent.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)


@dataclass
class LMMState:
    """Decoding state of one LMM mixer: the short convolution's window and the memory."""

    conv: torch.Tensor
    memory: MemoryState


class LMM(Mixer):
    state_growth = "constant"
    supports_state_passing = True
    has_test_time_writes = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        memory_depth: int = 2,
        memory_expansion: int = 4,
        activation: str = "gelu",
        chunk_size: int = 16,
        max_lr: float = 0.1,
        n_persistent: int = 0,
        conv_size: int = 4,
        backend: str = "auto",
        memory_norm: bool = True,
        compile_memory: bool = False,
        gate_granularity: str = "channel",
        gate_rank: int | None = 16,
        forgetting: str = "decay",
        memory_norm_affine: bool = True,
        memory_init_scale: float = 1.0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown memory activation {activation!r}; choose from {', '.join(ACTIVATIONS)}"
            )
        for name, value in (
            ("memory_depth", memory_depth),
            ("chunk_size", chunk_size),
            ("n_heads", n_heads),
            ("head_dim", head_dim),
            ("memory_expansion", memory_expansion),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if n_persistent < 0:
            raise ValueError(f"n_persistent must be >= 0, got {n_persistent}")
        if memory_init_scale <= 0:
            raise ValueError(f"memory_init_scale must be > 0, got {memory_init_scale}")
        self.backend = resolve_memory_backend(backend, memory_depth)
        self.memory_op, self.memory_step_op = MEMORY_BACKENDS[self.backend]
        self.n_heads, self.head_dim = n_heads, head_dim
        self.activation, self.chunk_size, self.max_lr = activation, chunk_size, max_lr
        self.memory_norm = memory_norm  # M(x) = x + LN(MLP(x)), the paper's camera-ready memory
        self.forgetting = forgetting
        # The chunked memory's per-chunk steps through torch.compile, compiled once on first use. A model
        # compiled whole takes this path as well (see _memory_call).
        self.compile_memory = compile_memory
        inner = n_heads * head_dim

        self.qkv = nn.Linear(d_model, 3 * inner, bias=False)
        # q, k and v each through their own depthwise filters: one convolution over the three side by side
        self.conv = CausalConv1d(3 * inner, conv_size, bias=False, activation="silu")
        self.out_norm = RMSNorm(head_dim)
        self.out_gate = nn.Linear(d_model, inner, bias=False)
        self.out = nn.Linear(inner, d_model, bias=False)

        # The memory's initial weights are outer-loop parameters, one MLP per head: [H, d_out, d_in].
        hidden = memory_expansion * head_dim
        dims = [head_dim] + [hidden] * (memory_depth - 1) + [head_dim]
        # With the LayerNorm on the memory's output, the first layer starts at unit scale: its input is an
        # L2-normalised key (entries ~ D^-0.5), and at 1/sqrt(d_in) the MLP's output would start ~0.07 in
        # scale, where the LN's Jacobian (~ 1/std) multiplies every inner step and bf16 rounding by ~15.
        # memory_init_scale multiplies every layer's scale (the first layer's Frobenius norm is about
        # sqrt(hidden * head_dim) times it).
        scales = [1.0 if i == 0 and memory_norm else d_in**-0.5 for i, d_in in enumerate(dims[:-1])]
        self.memory_init = nn.ParameterList(
            nn.Parameter(torch.randn(n_heads, d_out, d_in) * scale * memory_init_scale)
            for d_in, d_out, scale in zip(dims, dims[1:], scales, strict=False)
        )
        # The LN's gain and bias, per head: the inner loss ||k + gain * LN(h) + bias - v||^2 can then fit
        # values of any scale and mean, which LN(h) alone (zero mean, unit variance) cannot.
        affine = memory_norm and memory_norm_affine
        self.memory_norm_weight = nn.Parameter(torch.ones(n_heads, head_dim)) if affine else None
        self.memory_norm_bias = nn.Parameter(torch.zeros(n_heads, head_dim)) if affine else None
        self.gates = MemoryGates(d_model, n_heads, dims[:-1], gate_granularity, gate_rank, max_lr, forgetting)
        self.persistent = persistent_tokens(n_persistent, d_model)

        for layer in (self.qkv, self.out_gate, self.out):
            nn.init.normal_(layer.weight, std=0.02)

    # -- pieces -------------------------------------------------------------------------------------
    def _with_persistent(self, x: torch.Tensor) -> torch.Tensor:
        return with_persistent(self.persistent, x)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, T, H*D] -> [B, H, T, D]
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def _memory_options(self) -> dict:
        """The memory op's keyword arguments beside the sequence, the gates and the state."""
        return dict(
            chunk_size=self.chunk_size,
            activation=self.activation,
            residual=True,
            norm=self.memory_norm,
            norm_weight=self.memory_norm_weight,
            norm_bias=self.memory_norm_bias,
            forget_to_init=self.forgetting == "to_init",
        )

    def _inputs(self, x: torch.Tensor, conv_state):
        """x [B, T, d] -> (q, k, v [B, H, T, D], the gates (theta, eta, alpha), the convolution's state)."""
        qkv, conv_state = self.conv(self.qkv(x), conv_state)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = F.normalize(self._heads(q), dim=-1), F.normalize(self._heads(k), dim=-1)
        return q, k, self._heads(v), self.gates(x), conv_state

    def _run(self, x: torch.Tensor, conv_state, memory_state: MemoryState | None, memory_op=None):
        """The whole mixer on x [B, T, d] from a given state; returns (y [B, T, d], new state)."""
        q, k, v, gates, conv_state = self._inputs(x, conv_state)
        op = memory_op or self.memory_op
        compiled = op is chunk_titans_memory and (self.compile_memory or torch.compiler.is_compiling())
        y, memory_state = _memory_call(
            op,
            {"compiled": True} if compiled else {},
            q,
            k,
            v,
            *gates,
            tuple(self.memory_init),
            state=memory_state,
            **self._memory_options(),
        )
        B, H, T, D = y.shape
        y = self.out_norm(y.to(x.dtype)).transpose(1, 2).reshape(B, T, H * D)
        return self.out(y * F.silu(self.out_gate(x))), LMMState(conv_state, memory_state)

    # -- the mixer interface ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self._run(self._with_persistent(x), None, None)
        return y[:, y.shape[1] - x.shape[1] :]  # outputs at the persistent tokens are dropped

    def forward_from(self, x: torch.Tensor, state: LMMState | None):
        if state is None:  # a sequence starts here: after the persistent tokens, as in forward
            y, state = self._run(self._with_persistent(x), None, None)
            return y[:, y.shape[1] - x.shape[1] :], state
        return self._run(x, state.conv, state.memory)

    def prefill(self, x: torch.Tensor):
        y, state = self._run(self._with_persistent(x), None, None)
        return y[:, y.shape[1] - x.shape[1] :], state

    def extend(self, x: torch.Tensor, state: LMMState):
        """Continue a sequence: x [B, T, d] after ``state`` -> (y [B, T, d], new state). One token goes
        through the decoding op. MAC feeds its memory one segment at a time through this."""
        return self._run(x, state.conv, state.memory, self.memory_step_op if x.shape[1] == 1 else None)

    def set_test_time_writes(self, enabled: bool) -> None:
        self.gates.writes = enabled  # off: theta = 0, the memory is never written

    @torch.no_grad()
    def trace(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mixer.trace: ``state_norm`` (per head the Frobenius norm of the memory's weights, all layers,
        after each token, summed over heads), ``state_norm_ratio`` (over that of M_0), and per memory layer i
        ``theta.l{i}``, ``eta.l{i}``, ``alpha.l{i}`` (means over heads and channels) and ``m0_left.l{i}``
        (the coefficient on M_0 in the memory, the product of (1 - alpha) since the sequence began, averaged
        over heads and channels; 1 without forgetting and when forgetting toward M_0). Token by token."""
        return self.trace_memory(self._with_persistent(x), x.shape[1])

    def trace_memory(self, x: torch.Tensor, last: int) -> dict[str, torch.Tensor]:
        """trace for the memory's whole input x [B, T, d] (persistent tokens included), at its ``last``
        positions."""
        B, T, _ = x.shape
        q, k, v, gates, _ = self._inputs(x, None)
        params = tuple(self.memory_init)
        d_ins = [p.shape[-1] for p in params]
        norms, state = [], None
        for t in range(T):
            now = [_positions(g, slice(t, t + 1)) for g in gates]
            _, state = fused_recurrent_titans_memory(
                *(u[:, :, t : t + 1] for u in (q, k, v)), *now, params, state=state, **self._memory_options()
            )
            norms.append(_memory_norm(state.weights))
        out = {"state_norm": torch.stack(norms, dim=1) if norms else x.new_zeros(B, 0)}
        out["state_norm_ratio"] = out["state_norm"] / _memory_norm([p.unsqueeze(0) for p in params])
        per_layer = [layer_gates(g, d_ins, name) for g, name in zip(gates, GATE_NAMES, strict=True)]
        for i in range(len(params)):
            for name, g in zip(GATE_NAMES, per_layer, strict=True):
                out[f"{name}.l{i}"] = g[i].mean((1, 3)).expand(B, T)
            alpha = per_layer[2][i]
            left = torch.cumprod(1 - alpha, dim=2) if self.forgetting == "decay" else torch.ones_like(alpha)
            out[f"m0_left.l{i}"] = left.mean((1, 3)).expand(B, T)
        return {name: t[:, T - last :].float() for name, t in out.items()}

    def init_state(self, batch_size: int, device, dtype) -> LMMState:
        if self.persistent is not None:  # the state a sequence starts from has already seen them
            with torch.no_grad():
                return self._run(self.persistent.to(dtype).expand(batch_size, -1, -1), None, None)[1]
        conv = self.conv.init_state(batch_size, device, dtype)
        params = tuple(p.to(device) for p in self.memory_init)
        return LMMState(conv, initial_state(params, batch_size, compute_dtype(dtype, params[0].dtype)))

    def step(self, x: torch.Tensor, state: LMMState):
        y, state = self.extend(x.unsqueeze(1), state)
        return y[:, 0], state

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        memory_dtype = compute_dtype(dtype)
        # current weights, momentum and the chunk-base weights, per sequence of the batch
        memory = 3 * sum(p.numel() for p in self.memory_init) * dtype_bytes(memory_dtype)
        conv = self.conv.init_state(1, "meta", dtype).numel() * dtype_bytes(dtype)
        return batch_size * (memory + conv)

    def flops_per_token(self, seq_len: int) -> float:
        d_model, inner, H = self.qkv.in_features, self.n_heads * self.head_dim, self.n_heads
        projections = 2.0 * d_model * 4 * inner + 2.0 * inner * d_model + self.gates.flops_per_token()
        C = min(self.chunk_size, seq_len)
        per_channel = self.gates.granularity == "channel"
        memory = 0.0
        for p in self.memory_init:
            _, d_out, d_in = p.shape
            # per token: key forward, error backprop, retrieval with W and S, chunk-end W and S updates
            # (amortised), and the dual-form terms against the chunk's C keys (per channel, the token-pair
            # matrix sums over the layer's input channels too)
            memory += 12.0 * d_in * d_out + 2.0 * C * (d_in + d_out) + 4.0 * C * d_in * per_channel
        return projections + H * memory


def _positions(gate, sl: slice):
    """A gate in the memory ops' forms, at the positions sl."""
    if isinstance(gate, torch.Tensor):
        return gate[:, :, sl]
    return [g[:, :, sl] for g in gate]


def _memory_norm(weights) -> torch.Tensor:
    """Per head the Frobenius norm of a memory's weights (per layer [B, H, d_out, d_in]) over all its
    layers, summed over heads: [B]."""
    squares = sum(w.double().square().sum((-1, -2)) for w in weights)
    return squares.sqrt().sum(-1)


class MAL(Mixer):
    """Memory as a layer: the LMM (with its persistent tokens) first, then sliding-window attention over
    its output, each as a residual sub-layer."""

    state_growth = "bounded"
    has_test_time_writes = True

    def __init__(self, d_model: int, lmm: LMM, attention: Attention):
        super().__init__()
        self.lmm, self.attention = lmm, attention
        self.norm = RMSNorm(d_model)

    @property
    def backend(self) -> str:
        return f"{self.lmm.backend}+{self.attention.backend}"

    @property
    def supports_state_passing(self) -> bool:  # the attention's state is bounded only with a window
        return self.attention.supports_state_passing

    def forward(self, x):
        m = self.lmm(x)
        return m + self.attention(self.norm(x + m))

    def forward_from(self, x, state):
        s_mem, s_att = (None, None) if state is None else state
        m, s_mem = self.lmm.forward_from(x, s_mem)
        a, s_att = self.attention.forward_from(self.norm(x + m), s_att)
        return m + a, (s_mem, s_att)

    def trace(self, x):
        return self.lmm.trace(x)

    def set_test_time_writes(self, enabled: bool) -> None:
        self.lmm.set_test_time_writes(enabled)

    def prefill(self, x):
        m, s_mem = self.lmm.prefill(x)
        a, s_att = self.attention.prefill(self.norm(x + m))
        return m + a, (s_mem, s_att)

    def init_state(self, batch_size, device, dtype):
        return (
            self.lmm.init_state(batch_size, device, dtype),
            self.attention.init_state(batch_size, device, dtype),
        )

    def step(self, x, state):
        m, s_mem = self.lmm.step(x, state[0])
        a, s_att = self.attention.step(self.norm(x + m), state[1])
        return m + a, (s_mem, s_att)

    def state_bytes(self, batch_size, seq_len, dtype):
        return self.lmm.state_bytes(batch_size, seq_len, dtype) + self.attention.state_bytes(
            batch_size, seq_len, dtype
        )

    def flops_per_token(self, seq_len):
        return self.lmm.flops_per_token(seq_len) + self.attention.flops_per_token(seq_len)


class MemoryGate(nn.Module):
    """o = W_o (norm(y) * sigmoid(norm(m))): the memory branch m gating y (MAG and MAC). The paper says only
    "normalise both with learnable vectors, then a non-linearity"; the RMSNorm weights are those vectors.
    The output projection, small at initialisation like every mixer's, keeps the normalised product from
    swamping the residual stream."""

    def __init__(self, d_model: int):
        super().__init__()
        self.y_norm, self.m_norm = RMSNorm(d_model), RMSNorm(d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)
        nn.init.normal_(self.out.weight, std=0.02)

    def forward(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.out(self.y_norm(y) * torch.sigmoid(self.m_norm(m)))


class MAG(Mixer):
    """Memory as a gate: two branches over [persistent tokens] || x, sliding-window attention that always
    sees the persistent prefix and the LMM, the memory gating the attention (MemoryGate)."""

    state_growth = "bounded"
    has_test_time_writes = True

    def __init__(self, d_model: int, lmm: LMM, attention: Attention, n_persistent: int):
        super().__init__()
        if lmm.persistent is not None:
            raise ValueError("MAG owns the persistent tokens; build its LMM with n_persistent=0")
        if attention.window is not None and attention.n_sink != n_persistent:
            raise ValueError(
                f"MAG's windowed attention must keep its {n_persistent} persistent tokens as sinks"
            )
        self.lmm, self.attention = lmm, attention
        self.persistent = persistent_tokens(n_persistent, d_model)
        self.gate = MemoryGate(d_model)

    @property
    def backend(self) -> str:
        return f"{self.lmm.backend}+{self.attention.backend}"

    @property
    def supports_state_passing(self) -> bool:  # the attention's state is bounded only with a window
        return self.attention.supports_state_passing

    def _with_persistent(self, x: torch.Tensor) -> torch.Tensor:
        return with_persistent(self.persistent, x)

    def forward(self, x):
        xp = self._with_persistent(x)
        return self.gate(self.attention(xp), self.lmm(xp))[:, xp.shape[1] - x.shape[1] :]

    def forward_from(self, x, state):
        # a sequence starts with the persistent tokens; a continuation has seen them (the attention keeps
        # them as sinks)
        s_mem, s_att = (None, None) if state is None else state
        xp = self._with_persistent(x) if state is None else x
        a, s_att = self.attention.forward_from(xp, s_att)
        m, s_mem = self.lmm.forward_from(xp, s_mem)
        return self.gate(a, m)[:, xp.shape[1] - x.shape[1] :], (s_mem, s_att)

    def trace(self, x):
        return self.lmm.trace_memory(self._with_persistent(x), x.shape[1])

    def set_test_time_writes(self, enabled: bool) -> None:
        self.lmm.set_test_time_writes(enabled)

    def prefill(self, x):
        xp = self._with_persistent(x)
        a, s_att = self.attention.prefill(xp)
        m, s_mem = self.lmm.prefill(xp)
        return self.gate(a, m)[:, xp.shape[1] - x.shape[1] :], (s_mem, s_att)

    def init_state(self, batch_size, device, dtype):
        if self.persistent is not None:  # the state a sequence starts from has already seen them
            with torch.no_grad():
                empty = torch.zeros(batch_size, 0, self.persistent.shape[1], device=device, dtype=dtype)
                return self.prefill(empty)[1]
        return (
            self.lmm.init_state(batch_size, device, dtype),
            self.attention.init_state(batch_size, device, dtype),
        )

    def step(self, x, state):
        m, s_mem = self.lmm.step(x, state[0])
        a, s_att = self.attention.step(x, state[1])
        return self.gate(a, m), (s_mem, s_att)

    def state_bytes(self, batch_size, seq_len, dtype):
        n_p = 0 if self.persistent is None else self.persistent.shape[0]
        return self.lmm.state_bytes(batch_size, seq_len, dtype) + self.attention.state_bytes(
            batch_size, seq_len + n_p, dtype
        )

    def flops_per_token(self, seq_len):
        return self.lmm.flops_per_token(seq_len) + self.attention.flops_per_token(seq_len)


class TitansConfig(ModelConfig):
    """What every Titans variant shares: the memory and its heads. ``backend``: "auto" ("triton" on CUDA for
    memory depths 1 and 2, else "torch-chunked"), "torch-chunked", "triton" (the Triton kernels) or
    "torch-recurrent" (the per-token reference). ``n_heads`` None means d_model // 64 (at least 1),
    ``head_dim`` None means d_model // n_heads."""

    n_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    memory_depth: PositiveInt = 2
    memory_expansion: PositiveInt = 4
    activation: str = "gelu"
    memory_norm: bool = True  # M(x) = x + LN(MLP(x)), the paper's camera-ready memory
    chunk_size: PositiveInt = 16  # the paper's camera-ready chunk ("smaller is better but slower")
    max_lr: PositiveFloat = 0.1
    n_persistent: NonNegativeInt = 0
    # The chunked memory's per-chunk steps through torch.compile (compiled once, the loop over chunks
    # outside): fewer, fused kernels. A model compiled whole takes this path by itself.
    compile_memory: bool = False
    gate_granularity: Literal["channel", "layer", "head"] = "channel"
    """How finely theta, eta and alpha are learned: "channel" (default), per head, memory layer and input
    channel of that layer, the camera-ready paper's channel-wise gates (axis: models/titans/naive.py);
    "layer", one scalar per head and memory layer; "head", one scalar per head shared by the memory's layers
    (this project's first form, kept for comparison)."""
    gate_rank: PositiveInt | None = 16
    """Rank of the per-channel gates' projection (None: full). Low rank as GLA's forget gate: at full rank the
    gates would outweigh the rest of the mixer in parameters (3 H sum(d_in) outputs from d_model)."""
    forgetting: Literal["decay", "none", "to_init"] = "decay"
    """What the forget gate does: "decay" (default, the paper's M_t = (1 - alpha_t) M_{t-1} + S_t), "none"
    (alpha = 0, not learned: the paper's "w/o weight decay" ablation) or "to_init", forgetting toward the
    initial memory, M_t - M_0 = (1 - alpha_t)(M_{t-1} - M_0) + S_t, so that what the memory forgets is its
    writes and M_0 is never erased, however long the sequence."""
    memory_norm_affine: bool = True
    """A learnable gain and bias per head on the memory's LayerNorm (with ``memory_norm`` only). On by
    default: without them the memory's output LN(h) has zero mean and unit variance whatever the values it
    is written with, so the inner loss ||k + LN(h) - v||^2 cannot be driven to zero for values of another
    scale or mean and every token stays "surprising"; with them (starting at gain 1, bias 0, the same
    function as without) the outer loop sets the scale. TTT, titans-pytorch and fla's Titans layer all use
    one."""
    memory_init_scale: PositiveFloat = 1.0
    """Multiplies the initial scale of every memory layer's weights M_0 (1.0: the first layer at std 1 with
    ``memory_norm``, Frobenius norm ~ sqrt(hidden * head_dim), later layers at 1/sqrt(d_in)). Smaller values
    make the writes weigh more against M_0, which, left large, carries most of the prediction."""

    @property
    def heads(self) -> int:
        return self.n_heads or max(1, self.d_model // 64)

    def make_lmm(self, n_persistent: int = 0) -> LMM:
        """One LMM mixer with this config's memory (the hybrids own their persistent tokens)."""
        return LMM(
            self.d_model, self.heads, self.head_dim or self.d_model // self.heads,
            memory_depth=self.memory_depth, memory_expansion=self.memory_expansion,
            activation=self.activation, chunk_size=self.chunk_size, max_lr=self.max_lr,
            n_persistent=n_persistent, backend=self.backend, memory_norm=self.memory_norm,
            compile_memory=self.compile_memory, gate_granularity=self.gate_granularity,
            gate_rank=self.gate_rank, forgetting=self.forgetting,
            memory_norm_affine=self.memory_norm_affine, memory_init_scale=self.memory_init_scale,
        )  # fmt: skip


class TitansHybridConfig(TitansConfig):
    """A Titans variant with attention beside its memory: the attention's kernels and the persistent
    tokens (4 by default, prepended to every sequence)."""

    attention_backend: str = "auto"
    n_persistent: NonNegativeInt = 4


class TitansWindowConfig(TitansHybridConfig):
    """MAL and MAG: sliding-window attention over ``window`` tokens (None: full causal attention)."""

    window: PositiveInt | None = 512


def titans_backends() -> dict[str, bool | str]:
    """What runs here for the default Titans memory (bench list and validate build the defaults)."""
    return {
        "auto": True,
        "torch-chunked": True,
        "torch-recurrent": True,
        "triton": triton_problem() or True,
    }


def build_titans_lmm(config: TitansConfig) -> LanguageModel:
    """Titans (LMM): the neural memory alone in every block."""
    c = config
    return LanguageModel(
        c.vocab_size, c.d_model, c.n_layers, lambda i: c.make_lmm(c.n_persistent), mlp_hidden=c.mlp_hidden
    )


def build_titans_mal(config: TitansWindowConfig) -> LanguageModel:
    """Titans (MAL): persistent tokens -> LMM -> sliding-window attention in every block."""
    c = config

    def make_mixer(i: int) -> MAL:
        attention = Attention(c.d_model, c.heads, window=c.window, backend=c.attention_backend)
        return MAL(c.d_model, c.make_lmm(c.n_persistent), attention)

    return LanguageModel(c.vocab_size, c.d_model, c.n_layers, make_mixer, mlp_hidden=c.mlp_hidden)


def build_titans_mag(config: TitansWindowConfig) -> LanguageModel:
    """Titans (MAG): in every block, sliding-window attention and the LMM side by side over the persistent
    tokens and the input, the memory gating the attention."""
    c = config

    def make_mixer(i: int) -> MAG:
        attention = Attention(
            c.d_model, c.heads, window=c.window, backend=c.attention_backend, n_sink=c.n_persistent
        )
        return MAG(c.d_model, c.make_lmm(), attention, c.n_persistent)

    return LanguageModel(c.vocab_size, c.d_model, c.n_layers, make_mixer, mlp_hidden=c.mlp_hidden)


TITANS_LMM = ModelFamily(
    "titans-lmm", build_titans_lmm, TitansConfig, titans_backends, reference="torch-recurrent"
)
TITANS_MAL = ModelFamily(
    "titans-mal",
    build_titans_mal,
    TitansWindowConfig,
    titans_backends,
    reference="torch-recurrent",
    reference_args={"attention_backend": "torch"},
    context="window",
)
TITANS_MAG = ModelFamily(
    "titans-mag",
    build_titans_mag,
    TitansWindowConfig,
    titans_backends,
    reference="torch-recurrent",
    reference_args={"attention_backend": "torch"},
    context="window",
)
