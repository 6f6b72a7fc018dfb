"""Chunkwise (WY / UT-transform) form of the delta rule and the gated delta rule.

Same functions as the per-token references in ``naive.py``, but the sequence is cut into chunks of C
tokens and everything inside a chunk is a batched matmul; only the state S [K, V] is carried from one
chunk to the next, so the cost is linear in T.

Inside a chunk that starts from state S0, write gam_t for the cumulative log decay from the chunk start
to token t (inclusive; all zero without a gate) and D_ts = exp(gam_t - gam_s) for s <= t. Unrolling the
recurrence, the state after token t is

    S_t = exp(gam_t) S0 + sum_{s <= t} D_ts k_s u_s^T

where the pseudo-values u_s = beta_s (v_s - (decayed state before s)^T k_s) solve a unit lower-triangular
system (the UT transform):

    (I + diag(beta) strictly_lower(D * K K^T)) U = diag(beta) (V - diag(exp(gam)) K S0)

With T = (I + diag(beta) strictly_lower(D * K K^T))^-1 diag(beta), this is U = U_v - W S0 where
W = T diag(exp(gam)) K and U_v = T V do not depend on S0, so all of them are computed for every chunk at
once before the sequential pass over chunks. The outputs are then

    O = diag(exp(gam)) Q S0 + lower(D * Q K^T) U        S_next = exp(gam_C) S0 + (K * exp(gam_C - gam))^T U

Decays are always exponentials of differences of cumulative sums, masked before the exponential,
never quotients of cumulative products (those underflow to 0/0 within a few tokens of strong decay).
Any T works: the tail is padded with tokens (k = 0, beta = 0, g = 0) that leave the state unchanged.
The default chunk of 32 is the fastest here on a CPU (64 costs more in the C x C intra-chunk products).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.modules.dtypes import compute_dtype


def _diagonal_blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """[..., n, n] -> its diagonal blocks [..., n // size, size, size] (a view)."""
    n = x.shape[-1]
    blocks = x.unflatten(-1, (n // size, size)).unflatten(-3, (n // size, size))  # [..., i, r, j, c]
    return blocks.diagonal(dim1=-4, dim2=-2).movedim(-1, -3)


def unit_lower_inverse(strict_lower: torch.Tensor) -> torch.Tensor:
    """(I + L)^-1 for L [..., n, n] strictly lower triangular, by doubling: once the diagonal blocks of
    size s are inverted, those of size 2s are [[P, 0], [-Q M P, Q]] (P, Q the inverses of the two
    halves, M the block below the diagonal). log2(n) rounds of batched matmuls over all matrices at
    once, where a batched triangular solve makes one small LAPACK call per matrix (30x slower here).
    Built out of place, so autograd sees plain matmuls and concatenations."""
    n = strict_lower.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()  # the next power of two: pad with identity rows and columns
    if size != n:
        strict_lower = F.pad(strict_lower, (0, size - n, 0, size - n))
    inverse = torch.ones_like(strict_lower[..., :1]).unsqueeze(-1)  # [..., size, 1, 1]: 1x1 blocks
    s = 1
    while s < size:
        below = _diagonal_blocks(strict_lower, 2 * s)[..., s:, :s]
        upper, lower = inverse[..., 0::2, :, :], inverse[..., 1::2, :, :]
        top = torch.cat([upper, torch.zeros_like(upper)], dim=-1)
        bottom = torch.cat([-(lower @ below @ upper), lower], dim=-1)
        inverse = torch.cat([top, bottom], dim=-2)
        s *= 2
    return inverse[..., 0, :n, :n]


def _chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    if length == 0:
        raise ValueError("empty sequence")
    dtype = compute_dtype(q.dtype)
    if scale is None:
        scale = dk**-0.5
    q = q.to(dtype) * scale
    k, v, beta = k.to(dtype), v.to(dtype), beta.to(dtype)
    if g is not None:
        g = g.to(dtype)

    pad = (-length) % chunk_size
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, pad))
        if g is not None:
            g = F.pad(g, (0, pad))
    n_chunks, c = (length + pad) // chunk_size, chunk_size
    q, k, v = (x.reshape(batch, heads, n_chunks, c, -1) for x in (q, k, v))
    beta = beta.reshape(batch, heads, n_chunks, c, 1)

    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    kk = k @ k.transpose(-1, -2)  # [B, H, N, C, C]
    qk = q @ k.transpose(-1, -2)
    if g is None:
        qk = qk.masked_fill(~causal, 0.0)
        k_in, q_in, k_out = k, q, k
        chunk_decay = None
    else:
        gam = g.reshape(batch, heads, n_chunks, c).cumsum(-1)
        # masked to -inf first, so no positive exponent (possible overflow) is ever formed
        pair_decay = (gam[..., :, None] - gam[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        kk = kk * pair_decay
        qk = qk * pair_decay  # zero above the diagonal already
        from_start = gam.exp()[..., None]
        k_in, q_in = k * from_start, q * from_start
        k_out = k * (gam[..., -1:] - gam).exp()[..., None]
        chunk_decay = gam[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]

    transform = unit_lower_inverse((beta * kk).tril(-1)) * beta.transpose(-1, -2)  # T, [B, H, N, C, C]
    w, u_v = transform @ k_in, transform @ v

    if initial_state is None:
        state = q.new_zeros(batch, heads, dk, dv)
    else:
        state = initial_state.to(dtype)
    outputs = []
    for i in range(n_chunks):  # only this loop is sequential
        u = u_v[:, :, i] - w[:, :, i] @ state
        outputs.append(q_in[:, :, i] @ state + qk[:, :, i] @ u)
        carried = state if chunk_decay is None else chunk_decay[:, :, i] * state
        state = carried + k_out[:, :, i].transpose(-1, -2) @ u
    o = torch.stack(outputs, 2)
    o = o.reshape(batch, heads, n_chunks * c, dv)[:, :, :length]
    return o, state


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, T, K], v [B, H, T, V], beta [B, H, T], initial_state [B, H, K, V] or None
    -> (o [B, H, T, V] in q's dtype, final state [B, H, K, V] in at least float32).
    ``scale`` None means K**-0.5. Equals ``delta_rule_recurrent``."""
    o, state = _chunked(q, k, v, None, beta, scale, initial_state, chunk_size)
    return o.to(q.dtype), state


def gated_delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, T, K], v [B, H, T, V], g (log decay, <= 0) and beta [B, H, T], initial_state
    [B, H, K, V] or None -> (o [B, H, T, V] in q's dtype, final state [B, H, K, V]).
    ``scale`` None means K**-0.5. Equals ``gated_delta_rule_recurrent``."""
    o, state = _chunked(q, k, v, g, beta, scale, initial_state, chunk_size)
    return o.to(q.dtype), state
