"""Causal multi-head attention with RoPE, an optional sliding window (optionally with the first tokens of
the sequence kept visible to every query, as Titans MAG's persistent prefix) and a KV cache.

Kernels: PyTorch's scaled_dot_product_attention, pinned to one SDPA backend so it can never fall back
silently, or ``"torch"``, an explicit softmax(QK^T) V reference for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.modules.dtypes import dtype_bytes
from models.modules.lm import Mixer
from models.modules.rotary import Rotary

SDPA_BACKENDS = {
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
}
ATTENTION_BACKENDS = ("auto", "torch", *SDPA_BACKENDS)


@dataclass
class KVCache:
    k: torch.Tensor  # [B, H, capacity, D], keys already rotated
    v: torch.Tensor
    length: int  # tokens seen so far; with a window: `n_sink` fixed slots, then a ring of `window` slots

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


def reference_attention(q, k, v, window: int | None, n_sink: int = 0) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + causal/window mask) v, written out; q, k, v [B, H, T, D]. With a window,
    the first ``n_sink`` keys stay visible to every later query."""
    T = q.shape[-2]
    i = torch.arange(T, device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed &= (i[None, :] > i[:, None] - window) | (i[None, :] < n_sink)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _blocks(t: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, T, D] -> [B, H, nb, w, D], zero-padded at the end to whole blocks of w."""
    B, H, T, D = t.shape
    return F.pad(t, (0, 0, 0, (-T) % w)).view(B, H, -1, w, D)


def _window_pair_mask(w: int, device) -> torch.Tensor:
    """[w, 2w]: query qi of a block against the previous block and its own; key j of the pair is at
    distance w + qi - j, allowed in [0, w)."""
    qi = torch.arange(w, device=device)[:, None]
    kj = torch.arange(2 * w, device=device)[None, :]
    return (kj > qi) & (kj <= qi + w)


def _attend_blocks(qb, kb, vb, mask) -> torch.Tensor:
    """Blocks of queries [B, H, n, w, D] against their keys [B, H, n, S, D]: [B, H, n * w, D]."""
    B, H, n, w, D = qb.shape
    S = kb.shape[3]
    out = F.scaled_dot_product_attention(
        qb.reshape(B, H * n, w, D), kb.reshape(B, H * n, S, D), vb.reshape(B, H * n, S, D), attn_mask=mask
    )
    return out.view(B, H, n * w, D)


def windowed_sdpa(q, k, v, window: int, n_sink: int = 0) -> torch.Tensor:
    """Exact sliding-window attention in blocks of `window` queries, each seeing its own block and the
    previous one: O(T * window) memory instead of a T x T mask. The first ``n_sink`` keys are added to
    every block, visible wherever the window no longer covers them."""
    B, H, T, D = q.shape
    w, n_sink = window, min(n_sink, T)
    if 0 < n_sink <= w:
        return _windowed_sdpa_few_sinks(q, k, v, w, n_sink)
    first = F.scaled_dot_product_attention(q[:, :, :w], k[:, :, :w], v[:, :, :w], is_causal=True)
    if T <= w:
        return first
    qb, kb, vb = _blocks(q, w)[:, :, 1:], _blocks(k, w), _blocks(v, w)
    nb = kb.shape[2]
    kb = torch.cat([kb[:, :, :-1], kb[:, :, 1:]], dim=3)  # [B, H, nb-1, 2w, D]: previous block + own block
    vb = torch.cat([vb[:, :, :-1], vb[:, :, 1:]], dim=3)
    mask = _window_pair_mask(w, q.device)
    if n_sink:
        # Sink j for the query at position i = b w + qi: through its own column only once the window has
        # passed it (j <= i - w), so that no key is counted twice. One mask per block.
        block = torch.arange(1, nb, device=q.device)[:, None, None]
        qi = torch.arange(w, device=q.device)[:, None]
        sink_mask = torch.arange(n_sink, device=q.device) <= block * w + qi - w  # [nb-1, w, n_sink]
        mask = torch.cat([sink_mask, mask.expand(nb - 1, w, 2 * w)], dim=-1)
        # 4-D, as SDPA's kernels take a per-head mask only in that form
        mask = mask.expand(H, nb - 1, w, n_sink + 2 * w).reshape(1, H * (nb - 1), w, n_sink + 2 * w)
        kb = torch.cat([k[:, :, None, :n_sink].expand(B, H, nb - 1, n_sink, D), kb], dim=3)
        vb = torch.cat([v[:, :, None, :n_sink].expand(B, H, nb - 1, n_sink, D), vb], dim=3)
    return torch.cat([first, _attend_blocks(qb, kb, vb, mask)], dim=2)[:, :, :T]


def _windowed_sdpa_few_sinks(q, k, v, w: int, n_sink: int) -> torch.Tensor:
    """windowed_sdpa when n_sink <= window: past the first two blocks every sink lies outside every query's
    window, so one 2-D mask [w, n_sink + 2w] serves all those blocks (the general path needs one per block
    and head, which at 16K tokens is hundreds of MB). The first two blocks take one explicit mask."""
    B, H, T, D = q.shape
    head = min(T, 2 * w)
    i = torch.arange(head, device=q.device)
    allowed = (i[None, :] <= i[:, None]) & ((i[None, :] > i[:, None] - w) | (i[None, :] < n_sink))
    first = F.scaled_dot_product_attention(q[:, :, :head], k[:, :, :head], v[:, :, :head], attn_mask=allowed)
    if T <= 2 * w:
        return first
    qb, kb, vb = _blocks(q, w)[:, :, 2:], _blocks(k, w), _blocks(v, w)
    n = qb.shape[2]
    sink_k = k[:, :, None, :n_sink].expand(B, H, n, n_sink, D)
    sink_v = v[:, :, None, :n_sink].expand(B, H, n, n_sink, D)
    kb = torch.cat([sink_k, kb[:, :, 1:-1], kb[:, :, 2:]], dim=3)  # sinks, previous block, own block
    vb = torch.cat([sink_v, vb[:, :, 1:-1], vb[:, :, 2:]], dim=3)
    sinks = torch.ones(w, n_sink, dtype=torch.bool, device=q.device)
    mask = torch.cat([sinks, _window_pair_mask(w, q.device)], -1)
    return torch.cat([first, _attend_blocks(qb, kb, vb, mask)], dim=2)[:, :, :T]


class Attention(Mixer):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        window: int | None = None,
        backend: str = "auto",
        rope_base: float = 10000.0,
        n_sink: int = 0,
        max_keys: int | None = None,
    ):
        super().__init__()
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention backend {backend!r}; choose from {', '.join(ATTENTION_BACKENDS)}"
            )
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if n_sink < 0:
            raise ValueError(f"n_sink must be >= 0, got {n_sink}")
        self.n_sink = n_sink if window is not None else 0  # without a window every key is visible anyway
        # Without a window, the most keys a decoding cache will hold, when the caller knows (MAC restarts
        # its cache every segment): the cache then never grows past it.
        self.max_keys = max_keys
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.window = window
        self.state_growth = "linear" if window is None else "bounded"
        # With a window, a sequence continues from a bounded state (forward_from): the sinks and the last
        # `window` keys; without one the state would hold every key so far.
        self.supports_state_passing = window is not None
        self.requested_backend = backend
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary(self.head_dim, rope_base)
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.out.weight, std=0.02)
        self._resolved: str | None = None

    @property
    def backend(self) -> str:
        return self._resolved or self._resolve(self.qkv.weight)

    def _resolve(self, x: torch.Tensor) -> str:
        """The SDPA backend to pin for inputs like x; fixed by rule, never by trying and falling back."""
        if self.requested_backend != "auto":
            return self.requested_backend
        if x.is_cuda:
            half = x.dtype in (torch.float16, torch.bfloat16)
            # Flash takes no mask, so windowed attention (a block mask) uses the memory-efficient kernel.
            return "sdpa-flash" if half and self.window is None and self.head_dim <= 256 else "sdpa-efficient"
        return "sdpa-flash"  # PyTorch's CPU flash kernel: handles masks and every float dtype

    def _attend(self, q, k, v) -> torch.Tensor:
        name = self._resolved = self._resolve(q)
        if name == "torch":
            return reference_attention(q, k, v, self.window, self.n_sink)
        with sdpa_kernel([SDPA_BACKENDS[name]]):
            if self.window is not None and self.window < q.shape[-2]:
                return windowed_sdpa(q, k, v, self.window, self.n_sink)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def _project(self, x: torch.Tensor, start: int):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.rotary(q, start), self.rotary(k, start), v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, D = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x, 0)
        return self._merge(self._attend(q, k, v))

    def prefill(self, x: torch.Tensor):
        q, k, v = self._project(x, 0)
        y = self._merge(self._attend(q, k, v))
        T, kept = x.shape[1], self._kept()
        if T <= kept:
            return y, KVCache(k.contiguous(), v.contiguous(), T)
        # A full window: the sinks, then the last `window` keys in ring order (see _slot).
        positions = torch.cat(
            [torch.arange(self.n_sink, device=x.device), torch.arange(T - self.window, T, device=x.device)]
        )
        slots = torch.tensor([self._slot(p) for p in positions.tolist()], device=x.device)
        cache = KVCache(
            k.new_empty(*k.shape[:2], kept, k.shape[3]), v.new_empty(*v.shape[:2], kept, v.shape[3]), T
        )
        cache.k[:, :, slots] = k[:, :, positions]
        cache.v[:, :, slots] = v[:, :, positions]
        return y, cache

    def forward_from(self, x: torch.Tensor, state: KVCache | None):
        """Continue a sequence with gradients (Mixer.forward_from): x [B, T, d] after ``state``, a KVCache
        as prefill and step keep it (None: the sequence starts here) -> (y [B, T, d], the cache after x).

        The new queries attend to the cache's keys, put back in position order, and their own, through the
        same kernels as ``forward``: the kept keys are a contiguous run of positions after the sinks, so the
        window over [sinks, kept, new] is the window over the whole sequence (placeholder queries stand at
        the kept positions, their outputs dropped). The cache returned holds the sinks and the last
        ``window`` keys in ring order, so that ``step`` can go on from it. Without a window the cache holds
        every key, which only a caller that restarts it is allowed (``max_keys``: MAC's segments).
        """
        if self.window is None and self.max_keys is None:
            raise NotImplementedError(
                "full attention's state grows with every token: state passing needs a window (or max_keys)"
            )
        start = 0 if state is None else state.length
        q, k, v = self._project(x, start)
        kept = self._kept_positions(start)
        if kept:
            slots = torch.tensor([self._slot(p) for p in kept], device=x.device)
            k = torch.cat([state.k.index_select(2, slots), k], dim=2)
            v = torch.cat([state.v.index_select(2, slots), v], dim=2)
            q = torch.cat([q.new_zeros(*q.shape[:2], len(kept), q.shape[3]), q], dim=2)
        y = self._merge(self._attend(q, k, v)[:, :, len(kept) :])
        # the cache after x: its keys by slot, each found in [kept, new]
        length = start + x.shape[1]
        index = {p: i for i, p in enumerate(kept + list(range(start, length)))}
        by_slot = sorted(self._kept_positions(length), key=self._slot)
        order = torch.tensor([index[p] for p in by_slot], device=x.device)
        return y, KVCache(k.index_select(2, order), v.index_select(2, order), length)

    def _kept_positions(self, length: int) -> list[int]:
        """The positions whose keys the cache holds after ``length`` tokens, in position order."""
        if length <= self._kept():
            return list(range(length))
        if self.window is None:
            raise ValueError(f"this attention's cache holds at most {self.max_keys} keys (max_keys)")
        return list(range(self.n_sink)) + list(range(length - self.window, length))

    def _kept(self) -> float:
        """How many keys the cache ever holds."""
        if self.window is None:
            return float("inf") if self.max_keys is None else self.max_keys
        return self.n_sink + self.window

    def _slot(self, pos: int) -> int:
        """Cache slot of the key at `pos`: sinks first, then a ring of `window` slots."""
        if self.window is None or pos < self.n_sink:
            return pos
        return self.n_sink + (pos - self.n_sink) % self.window

    def init_state(self, batch_size: int, device, dtype) -> KVCache:
        shape = (batch_size, self.n_heads, 0, self.head_dim)  # grows as tokens arrive, up to the window
        return KVCache(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype), 0
        )

    def step(self, x: torch.Tensor, cache: KVCache):
        q, k, v = self._project(x.unsqueeze(1), cache.length)
        pos = cache.length
        capacity = cache.k.shape[2]
        limit = self._kept()
        if pos >= capacity and capacity < limit:  # grow geometrically: amortised O(1) copies per token
            extra = int(min(limit - capacity, max(16, capacity)))
            cache.k = F.pad(cache.k, (0, 0, 0, extra))
            cache.v = F.pad(cache.v, (0, 0, 0, extra))
        slot = self._slot(pos)
        if slot >= limit:
            raise ValueError(f"this attention's cache holds at most {self.max_keys} keys (max_keys)")
        cache.k[:, :, slot] = k[:, :, 0]
        cache.v[:, :, slot] = v[:, :, 0]
        cache.length = pos + 1
        n = int(min(pos + 1, limit))
        # Keys in the ring are out of order, which softmax attention does not care about.
        name = self._resolve(q)
        keys, values = cache.k[:, :, :n], cache.v[:, :, :n]
        if name == "torch":
            y = ((q @ keys.transpose(-1, -2)) * self.head_dim**-0.5).softmax(-1) @ values
        else:
            with sdpa_kernel([SDPA_BACKENDS[name]]):
                y = F.scaled_dot_product_attention(q, keys, values)
        return self._merge(y)[:, 0], cache

    def state_bytes(self, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        kept = min(seq_len, self._kept())
        return 2 * batch_size * self.n_heads * self.head_dim * kept * dtype_bytes(dtype)

    def flops_per_token(self, seq_len: int) -> float:
        d = self.n_heads * self.head_dim
        if self.window is None:
            context = (seq_len + 1) / 2
        else:
            w = min(self.window, seq_len)
            context = (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len
            context += min(self.n_sink, seq_len) * max(seq_len - w, 0) / seq_len  # sinks beyond the window
        return 2.0 * 4 * d * d + 2.0 * 2 * d * context
