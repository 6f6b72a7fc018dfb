"""Mamba2's SSD (state-space duality) in chunked form, for any length.

Per head the decay is a scalar, so inside a chunk of C tokens the recurrence S_t = exp(A_t) S_{t-1} +
X_t B_t^T is a masked attention: with gam_t the cumulative sum of A from the chunk start (inclusive),

    Y_t = sum_{s <= t} exp(gam_t - gam_s) (C_t . B_s) X_s  +  exp(gam_t) S_in C_t

where S_in is the state entering the chunk. The chunk's own contribution to the state at its end is
sum_s exp(gam_C - gam_s) X_s B_s^T, and S_in is carried across chunks by a short loop (one step per
chunk), so the cost is linear in the length. Decays are exponentials of differences of cumulative sums,
masked to -inf above the diagonal before the exponential. The tail is padded with tokens (X = 0, A = 0)
that leave the state unchanged.

Same function as mamba-ssm's ``ssd_minimal_discrete``, which needs the length to be a multiple of the
chunk and builds the cross-chunk step as a dense (chunks x chunks) matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.modules.dtypes import compute_dtype


def ssd_chunked(
    X: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    initial_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """X (b, L, H, P) and A (b, L, H), both already multiplied by dt; B, C (b, L, G, N) with H % G == 0
    (G = H is mamba-ssm's per-head layout); initial_states (b, H, P, N) or None
    -> (Y (b, L, H, P) in X's dtype, final state (b, H, P, N) in at least float32)."""
    batch, length, n_heads, head_dim = X.shape
    groups, d_state = B.shape[2], B.shape[3]
    if length == 0:
        raise ValueError("empty sequence")
    if n_heads % groups:
        raise ValueError(f"{n_heads} heads do not split into {groups} groups")
    dtype = compute_dtype(X.dtype)
    x_in, A = X.to(dtype), A.to(dtype)
    B = B.to(dtype).repeat_interleave(n_heads // groups, dim=2)
    C = C.to(dtype).repeat_interleave(n_heads // groups, dim=2)

    pad = (-length) % chunk_size
    if pad:
        x_in, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x_in, B, C))
        A = F.pad(A, (0, 0, 0, pad))
    n_chunks, c = (length + pad) // chunk_size, chunk_size
    x_in = x_in.reshape(batch, n_chunks, c, n_heads, head_dim)
    B = B.reshape(batch, n_chunks, c, n_heads, d_state)
    C = C.reshape(batch, n_chunks, c, n_heads, d_state)
    gam = A.reshape(batch, n_chunks, c, n_heads).permute(0, 1, 3, 2).cumsum(-1)  # (b, n, H, c)

    causal = torch.ones(c, c, dtype=torch.bool, device=X.device).tril()
    pair_decay = (gam[..., :, None] - gam[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    scores = torch.einsum("bnthd,bnshd->bnhts", C, B) * pair_decay
    y = torch.einsum("bnhts,bnshp->bnthp", scores, x_in)

    to_end = (gam[..., -1:] - gam).exp()  # (b, n, H, c)
    chunk_states = torch.einsum("bnshd,bnhs,bnshp->bnhpd", B, to_end, x_in)
    chunk_decay = gam[..., -1].exp()[..., None, None]  # (b, n, H, 1, 1)
    if initial_states is None:
        state = x_in.new_zeros(batch, n_heads, head_dim, d_state)
    else:
        state = initial_states.to(dtype)
    entering = []
    for i in range(n_chunks):
        entering.append(state)
        state = chunk_decay[:, i] * state + chunk_states[:, i]
    y = y + torch.einsum("bnthd,bnhpd,bnht->bnthp", C, torch.stack(entering, 1), gam.exp())
    y = y.reshape(batch, n_chunks * c, n_heads, head_dim)[:, :length]
    return y.to(X.dtype), state
