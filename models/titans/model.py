"""Titans models (Behrouz, Zhong, Mirrokni 2024, §4.3-4.4) in the shared language-model shell.

- ``titans-lmm``: the neural long-term memory alone as every block's mixer.
- ``titans-mal``: memory as a layer: persistent tokens -> LMM -> sliding-window attention (Figure 5).
- ``titans-mag``: memory as a gate: sliding-window attention and the LMM side by side, the memory gating.
- ``titans-mac`` (memory as context) is in mac.py.

The LMM mixer: q/k/v projections, each through a causal depthwise convolution and SiLU; q and k
L2-normalised per head; per-head data-dependent gates theta (learning rate), eta (momentum) and alpha
(forgetting), each sigmoid(linear(x_t)); a per-head MLP memory, M(x) = x + LN(MLP(x)), updated at test
time by the memory op; then RMSNorm, a linear SiLU gate, and the output projection.
"""

from __future__ import annotations

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
from models.titans.naive import (
    ACTIVATIONS,
    MemoryState,
    initial_state,
    naive_recurrent_titans_memory,
)
from models.titans.triton_chunk import MAX_DEPTH as TRITON_MAX_DEPTH
from models.titans.triton_chunk import triton_chunk_titans_memory, triton_problem

# backend -> (op for whole sequences, op for decoding one token at a time). The Triton kernels decode too:
# one token is one launch (plus the gates' coefficients), against a few dozen operators token by token.
MEMORY_BACKENDS = {
    "torch-chunked": (chunk_titans_memory, fused_recurrent_titans_memory),
    "torch-recurrent": (naive_recurrent_titans_memory, naive_recurrent_titans_memory),
    "triton": (triton_chunk_titans_memory, triton_chunk_titans_memory),
}


def resolve_memory_backend(requested: str, memory_depth: int) -> str:
    """The memory's backend, fixed at build time: "auto" is "triton" on CUDA for the depths its kernels
    hold, else "torch-chunked"; an explicit "triton" that cannot run here is an error, never a fallback
    (on a machine without CUDA it runs only under TRITON_INTERPRET=1, Triton's CPU interpreter)."""
    if requested not in ("auto", *MEMORY_BACKENDS):
        choices = ", ".join(MEMORY_BACKENDS)
        raise ValueError(f"unknown Titans backend {requested!r}; choose from auto, {choices}")
    if requested == "auto":
        usable = torch.cuda.is_available() and triton_problem() is None and memory_depth <= TRITON_MAX_DEPTH
        return "triton" if usable else "torch-chunked"
    if requested == "triton":
        reason = triton_problem()
        if reason is None and memory_depth > TRITON_MAX_DEPTH:
            reason = f"its kernels hold memories of depth 1 to {TRITON_MAX_DEPTH}, not {memory_depth}"
        if reason is not None:
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


class LMMState:
    """Decoding state of one LMM mixer: the short convolution's window and the memory."""

    def __init__(self, conv: torch.Tensor, memory: MemoryState):
        self.conv, self.memory = conv, memory

    __dataclass_fields__ = {"conv": None, "memory": None}  # lets models.modules.dtypes.tensor_bytes walk it


class LMM(Mixer):
    state_growth = "constant"

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
        self.backend = resolve_memory_backend(backend, memory_depth)
        self.memory_op, self.memory_step_op = MEMORY_BACKENDS[self.backend]
        self.n_heads, self.head_dim = n_heads, head_dim
        self.activation, self.chunk_size, self.max_lr = activation, chunk_size, max_lr
        self.memory_norm = memory_norm  # M(x) = x + LN(MLP(x)), the paper's camera-ready memory
        # The chunked memory's per-chunk steps through torch.compile, compiled once on first use. A model
        # compiled whole takes this path as well (see _memory_call).
        self.compile_memory = compile_memory
        inner = n_heads * head_dim

        self.qkv = nn.Linear(d_model, 3 * inner, bias=False)
        # q, k and v each through their own depthwise filters: one convolution over the three side by side
        self.conv = CausalConv1d(3 * inner, conv_size, bias=False, activation="silu")
        self.gates = nn.Linear(d_model, 3 * n_heads)  # theta, eta, alpha logits per head
        self.out_norm = RMSNorm(head_dim)
        self.out_gate = nn.Linear(d_model, inner, bias=False)
        self.out = nn.Linear(inner, d_model, bias=False)

        # The memory's initial weights are outer-loop parameters, one MLP per head: [H, d_out, d_in].
        hidden = memory_expansion * head_dim
        dims = [head_dim] + [hidden] * (memory_depth - 1) + [head_dim]
        # With the LayerNorm on the memory's output, the first layer starts at unit scale: its input is an
        # L2-normalised key (entries ~ D^-0.5), and at 1/sqrt(d_in) the MLP's output would start ~0.07 in
        # scale, where the LN's Jacobian (~ 1/std) multiplies every inner step and bf16 rounding by ~15.
        scales = [1.0 if i == 0 and memory_norm else d_in**-0.5 for i, d_in in enumerate(dims[:-1])]
        self.memory_init = nn.ParameterList(
            nn.Parameter(torch.randn(n_heads, d_out, d_in) * scale)
            for d_in, d_out, scale in zip(dims, dims[1:], scales, strict=False)
        )
        self.persistent = persistent_tokens(n_persistent, d_model)

        for layer in (self.qkv, self.out_gate, self.out):
            nn.init.normal_(layer.weight, std=0.02)
        nn.init.normal_(self.gates.weight, std=0.02)
        with torch.no_grad():
            # Start with a small step size (theta ~ max_lr / 20), strong momentum and little forgetting.
            # Inside a chunk every gradient is taken at the same base weights while momentum keeps applying
            # them, so with aligned keys one chunk moves the memory by ~80 theta-sized steps (chunk 16,
            # eta 0.88). Keys are aligned at initialisation wherever the memory reads attention outputs (MAC,
            # and MAG's later blocks); from theta = max_lr / 2 it diverged within a few hundred tokens.
            bias = torch.tensor([[-3.0], [2.0], [-4.0]])  # theta, eta, alpha logits
            self.gates.bias.view(3, n_heads).copy_(bias.expand(3, n_heads))

    # -- pieces -------------------------------------------------------------------------------------
    def _with_persistent(self, x: torch.Tensor) -> torch.Tensor:
        return with_persistent(self.persistent, x)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, T, H*D] -> [B, H, T, D]
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def _gates(self, x: torch.Tensor):
        logits = self.gates(x).to(compute_dtype(x.dtype))  # gates never in bf16
        theta, eta, alpha = torch.sigmoid(logits).chunk(3, dim=-1)  # each [B, T, H]
        return (self.max_lr * theta).transpose(1, 2), eta.transpose(1, 2), alpha.transpose(1, 2)

    def _run(self, x: torch.Tensor, conv_state, memory_state: MemoryState | None, memory_op=None):
        """The whole mixer on x [B, T, d] from a given state; returns (y [B, T, d], new state)."""
        qkv, conv_state = self.conv(self.qkv(x), conv_state)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = F.normalize(self._heads(q), dim=-1), F.normalize(self._heads(k), dim=-1)
        theta, eta, alpha = self._gates(x)
        op = memory_op or self.memory_op
        compiled = op is chunk_titans_memory and (self.compile_memory or torch.compiler.is_compiling())
        y, memory_state = _memory_call(
            op,
            {"compiled": True} if compiled else {},
            q,
            k,
            self._heads(v),
            theta,
            eta,
            alpha,
            tuple(self.memory_init),
            chunk_size=self.chunk_size,
            activation=self.activation,
            residual=True,
            state=memory_state,
            norm=self.memory_norm,
        )
        B, H, T, D = y.shape
        y = self.out_norm(y.to(x.dtype)).transpose(1, 2).reshape(B, T, H * D)
        return self.out(y * F.silu(self.out_gate(x))), LMMState(conv_state, memory_state)

    # -- the mixer interface ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self._run(self._with_persistent(x), None, None)
        return y[:, y.shape[1] - x.shape[1] :]  # outputs at the persistent tokens are dropped

    def prefill(self, x: torch.Tensor):
        y, state = self._run(self._with_persistent(x), None, None)
        return y[:, y.shape[1] - x.shape[1] :], state

    def extend(self, x: torch.Tensor, state: LMMState):
        """Continue a sequence: x [B, T, d] after ``state`` -> (y [B, T, d], new state). One token goes
        through the decoding op. MAC feeds its memory one segment at a time through this."""
        return self._run(x, state.conv, state.memory, self.memory_step_op if x.shape[1] == 1 else None)

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
        projections = 2.0 * d_model * (3 * inner + 3 * H + inner) + 2.0 * inner * d_model
        C = min(self.chunk_size, seq_len)
        memory = 0.0
        for p in self.memory_init:
            _, d_out, d_in = p.shape
            # per token: key forward, error backprop, retrieval with W and S, chunk-end W and S updates
            # (amortised), and the dual-form terms against the chunk's C keys
            memory += 12.0 * d_in * d_out + 2.0 * C * (d_in + d_out)
        return projections + H * memory


class MAL(Mixer):
    """Memory as a layer: the LMM (with its persistent tokens) first, then sliding-window attention over
    its output, each as a residual sub-layer."""

    state_growth = "bounded"

    def __init__(self, d_model: int, lmm: LMM, attention: Attention):
        super().__init__()
        self.lmm, self.attention = lmm, attention
        self.norm = RMSNorm(d_model)

    @property
    def backend(self) -> str:
        return f"{self.lmm.backend}+{self.attention.backend}"

    def forward(self, x):
        m = self.lmm(x)
        return m + self.attention(self.norm(x + m))

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

    def _with_persistent(self, x: torch.Tensor) -> torch.Tensor:
        return with_persistent(self.persistent, x)

    def forward(self, x):
        xp = self._with_persistent(x)
        return self.gate(self.attention(xp), self.lmm(xp))[:, xp.shape[1] - x.shape[1] :]

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
            compile_memory=self.compile_memory,
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
    return {"auto": True, "torch-chunked": True, "torch-recurrent": True, "triton": triton_problem() or True}


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
