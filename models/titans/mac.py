"""Titans MAC, memory as context (Behrouz et al. 2024, §4.1), registered as ``titans-mac``.

The sequence is cut into segments. For each segment S:
    h   = M*_prev(q(S))                 retrieval from the memory left by the previous segments, no update
    y   = Attn([p] || h || S)           full causal attention inside the segment, persistent tokens first
    m   = LMM(y)                        the memory is written with the attention output, token by token
    o   = y (x) m                       the memory gates the attention output (MemoryGate)

Causality: h_j is computed from token j's query, so a token must not see h of later tokens. We order the
segment as [p, h_0, x_0, h_1, x_1, ...]; plain causal attention over that order lets x_i see p, h_j and
x_j for j <= i and nothing later, and decoding is two ordinary attention steps per token (h_t, then x_t).
Outputs are kept at the x positions only.

State passing (``forward_from``) continues from a MACState mid-segment: the rest of the segment attends to
the keys the segment already holds (persistent tokens, then h and x of the tokens seen) and retrieves from
the memory as the segment began, exactly as if the sequence had not been cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from models.modules.attention import Attention, KVCache
from models.modules.catalog import ModelFamily
from models.modules.dtypes import compute_dtype, dtype_bytes
from models.modules.lm import LanguageModel, Mixer
from models.modules.norm import RMSNorm
from models.titans.model import (
    LMM,
    LMMState,
    MemoryGate,
    TitansHybridConfig,
    persistent_tokens,
    titans_backends,
    with_persistent,
)
from models.titans.naive import get_activation, mlp_forward


@dataclass
class MACState:
    pos: int  # tokens of the current segment seen, 0..segment; at `segment` the next token starts a new one
    cache: KVCache  # attention keys of the current segment: persistent tokens, then h_0, x_0, h_1, x_1, ...
    snapshot: tuple[torch.Tensor, ...]  # the memory's weights when the current segment began (retrieval)
    memory: LMMState


class MAC(Mixer):
    state_growth = "bounded"
    supports_state_passing = True
    has_test_time_writes = True

    def __init__(self, d_model: int, lmm: LMM, attention: Attention, n_persistent: int, segment: int):
        super().__init__()
        if lmm.persistent is not None:
            raise ValueError("MAC owns the persistent tokens; build its LMM with n_persistent=0")
        if attention.window is not None:
            raise ValueError("MAC attends to the whole segment; build its attention without a window")
        if segment < 1:
            raise ValueError(f"segment must be >= 1, got {segment}")
        self.lmm, self.attention, self.segment = lmm, attention, segment
        self.persistent = persistent_tokens(n_persistent, d_model)
        H, D = lmm.n_heads, lmm.head_dim
        # retrieval: its own query projection, then the memory, a per-head norm and a projection back
        self.query = nn.Linear(d_model, H * D, bias=False)
        self.retrieved_norm = RMSNorm(D)
        self.retrieved_out = nn.Linear(H * D, d_model, bias=False)
        self.gate = MemoryGate(d_model)
        nn.init.normal_(self.query.weight, std=0.02)
        nn.init.normal_(self.retrieved_out.weight, std=0.02)

    @property
    def backend(self) -> str:
        return f"{self.lmm.backend}+{self.attention.backend}"

    @property
    def n_persistent(self) -> int:
        return 0 if self.persistent is None else self.persistent.shape[0]

    # -- pieces -------------------------------------------------------------------------------------
    def _retrieve(self, x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """h = M*(q(x)) without updating the memory: x [B, n, d] -> [B, n, d]."""
        B, n, _ = x.shape
        H, D = self.lmm.n_heads, self.lmm.head_dim
        q = F.normalize(self.query(x).view(B, n, H, D).transpose(1, 2), dim=-1)
        with torch.autocast(x.device.type, enabled=False):  # memory math in float32 at least, as in the LMM
            act = get_activation(self.lmm.activation)
            h = mlp_forward(weights, q.to(weights[0].dtype), act, True, self.lmm.memory_norm,
                            self.lmm.memory_norm_weight, self.lmm.memory_norm_bias)  # fmt: skip
        h = self.retrieved_norm(h.to(x.dtype)).transpose(1, 2).reshape(B, n, H * D)
        return self.retrieved_out(h)

    def _persistent_cache(self, batch_size: int, device, dtype) -> KVCache:
        if self.persistent is None:
            return self.attention.init_state(batch_size, device, dtype)
        return self.attention.prefill(self.persistent.to(dtype).expand(batch_size, -1, -1))[1]

    def _run(self, x: torch.Tensor, state: MACState | None, keep_state: bool, memory_inputs=None):
        """Every segment in turn from ``state`` (None: a sequence starts here): (outputs [B, T, d], the state
        after the last token if keep_state). memory_inputs: a list to append what the memory is written
        with, per segment."""
        B, T, d = x.shape
        if state is None:  # the next token starts a segment
            pos, cache, weights, memory = self.segment, None, None, self.lmm.init_state(B, x.device, x.dtype)
        else:
            pos, cache, weights, memory = state.pos, state.cache, state.snapshot, state.memory
        outs, start = [], 0
        while start < T:
            if pos == self.segment:  # a new segment: fresh attention context, retrieval from the memory now
                pos, cache, weights = 0, None, memory.memory.weights
            n = min(self.segment - pos, T - start)
            xs = x[:, start : start + n]
            h = self._retrieve(xs, weights)
            seq = torch.stack([h, xs], dim=2).reshape(B, 2 * n, d)
            last = start + n >= T
            if cache is None:  # the segment's keys begin with the persistent tokens
                seq = with_persistent(self.persistent, seq)
                if keep_state and last:
                    a, cache = self.attention.forward_from(seq, None)
                else:
                    a = self.attention(seq)
                a = a[:, self.n_persistent :]
            else:
                a, cache = self.attention.forward_from(seq, cache)
            y = a[:, 1::2]  # the x positions
            if memory_inputs is not None:
                memory_inputs.append(y)
            m, memory = self.lmm.extend(y, memory)
            outs.append(self.gate(y, m))
            pos, start = pos + n, start + n
        y = torch.cat(outs, dim=1) if outs else x
        return y, (MACState(pos, cache, weights, memory) if keep_state else None)

    # -- the mixer interface ------------------------------------------------------------------------
    def forward(self, x):
        return self._run(x, None, keep_state=False)[0]

    def forward_from(self, x, state: MACState | None):
        if x.shape[1] == 0:
            return x, state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        return self._run(x, state, keep_state=True)

    def prefill(self, x):
        if x.shape[1] == 0:
            return x, self.init_state(x.shape[0], x.device, x.dtype)
        return self._run(x, None, keep_state=True)

    @torch.no_grad()
    def trace(self, x):
        """Mixer.trace of the memory, which is written with the attention outputs y of every segment."""
        ys: list[torch.Tensor] = []
        self._run(x, None, keep_state=False, memory_inputs=ys)
        y = torch.cat(ys, dim=1) if ys else x
        return self.lmm.trace_memory(y, y.shape[1])

    def set_test_time_writes(self, enabled: bool) -> None:
        self.lmm.set_test_time_writes(enabled)

    def init_state(self, batch_size, device, dtype):
        with torch.no_grad():
            memory = self.lmm.init_state(batch_size, device, dtype)
            return MACState(
                0, self._persistent_cache(batch_size, device, dtype), memory.memory.weights, memory
            )

    def step(self, x, state: MACState):
        pos, cache, weights, memory = state.pos, state.cache, state.snapshot, state.memory
        if pos == self.segment:  # a new segment: fresh attention context, retrieval from the memory now
            pos, cache, weights = (
                0,
                self._persistent_cache(x.shape[0], x.device, x.dtype),
                memory.memory.weights,
            )
        h = self._retrieve(x[:, None], weights)[:, 0]
        _, cache = self.attention.step(h, cache)
        y, cache = self.attention.step(x, cache)
        m, memory = self.lmm.step(y, memory)
        return self.gate(y, m), MACState(pos + 1, cache, weights, memory)

    def state_bytes(self, batch_size, seq_len, dtype):
        in_segment = (seq_len - 1) % self.segment + 1 if seq_len > 0 else 0
        keys = self.attention.state_bytes(batch_size, self.n_persistent + 2 * in_segment, dtype)
        memory_bytes = dtype_bytes(compute_dtype(dtype))
        snapshot = batch_size * sum(p.numel() for p in self.lmm.memory_init) * memory_bytes
        return self.lmm.state_bytes(batch_size, seq_len, dtype) + keys + snapshot

    def flops_per_token(self, seq_len):
        d_model, inner = self.query.in_features, self.query.out_features
        retrieval = 2.0 * 2 * d_model * inner + sum(2.0 * p[0].numel() for p in self.lmm.memory_init)
        # two attention positions per token (h and x), over a context of the persistent tokens and the segment
        # (the attention's count averages (context + 1) / 2 keys; a MAC position sees p + ~S of them)
        context = 2 * self.n_persistent + 2 * min(self.segment, seq_len)
        return self.lmm.flops_per_token(seq_len) + retrieval + 2 * self.attention.flops_per_token(context)


class TitansMACConfig(TitansHybridConfig):
    """MAC: full causal attention inside segments of ``segment`` tokens."""

    segment: PositiveInt = 512


def build_titans_mac(config: TitansMACConfig) -> LanguageModel:
    """Titans (MAC): in every block, attention over each segment with the memory's retrieval for it as
    context; the memory is then written with the attention output and gates it."""
    c = config

    def make_mixer(i: int) -> MAC:
        max_keys = c.n_persistent + 2 * c.segment
        attention = Attention(c.d_model, c.heads, backend=c.attention_backend, max_keys=max_keys)
        return MAC(c.d_model, c.make_lmm(), attention, c.n_persistent, c.segment)

    return LanguageModel(c.vocab_size, c.d_model, c.n_layers, make_mixer, mlp_hidden=c.mlp_hidden)


TITANS_MAC = ModelFamily(
    "titans-mac",
    build_titans_mac,
    TitansMACConfig,
    titans_backends,
    reference="torch-recurrent",
    reference_args={"attention_backend": "torch"},
    context="segment",
)
