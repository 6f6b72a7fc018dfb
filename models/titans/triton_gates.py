"""The chunk coefficients of the Titans memory's gates inside the Triton kernels (triton_kernels.py), forward
and backward, for one memory layer and one tile of its input channels.

Every gate form reaches the kernels as one value per token and input channel of a layer: a gate per channel
as it is, a gate per head or per layer broadcast over the channels (a stride of 0, nothing copied). Channels
are independent (naive.py: the gates act as W diag(g), column by column), so a tile of channels is a whole
problem, and a gate shared by the channels gets the sum of its channels' gradients (the host sums them).

Per channel, over a chunk's tokens j = 0..n-1, the recurrences of channel_coefficients.py (a = 1 - alpha,
e = eta; nothing divided, only products and sums of numbers in [0, 1]):
    p_j = e_j p_{j-1} + onehot(j)        p_j[i] = prod_{i<m<=j} e_m
    r_j = a_j r_{j-1} - theta * p_j      r_j = -G[j, :]
    A_j = a_j A_{j-1},  E_j = e_j E_{j-1},  c_j = a_j c_{j-1} + E_j
and the chunk end's g = G[n-1, :] = -r_{n-1}, s = theta * p_{n-1}. G never exists whole: row j meets the
dual form at once, Mdual[j, i] = sum_c G[j, i, c] z[j, c] x[i, c] (z the layer's inputs on the queries, x on
the keys), a reduction over the tile's channels. So a chunk costs n steps of [n, C] elementwise work and
two reductions, on chip, and no coefficient travels through global memory.

The backward runs the same steps in reverse (channel_coefficients.py's adjoint recurrences), carrying the
gradients w.r.t. r_j and p_j. It needs r_{j-1} and p_{j-1} at step j: the forward steps, run again, write
their rows to a per-program scratch ([n, n, C] twice and the chains' [n, C] three times, reused by every
tile and chunk: 35 KiB at chunk 16 and 16 channels in fp32), from which the reverse steps read them back.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_parts import _row, _sum


@triton.jit
def _coefs(g_ptr, s_g, s_t, s_c, t0, n_tok, rows, ch, ch_mask, z, x, scr_ptr,
           BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, SAVE: tl.constexpr):  # fmt: skip
    """One chunk's coefficients for a tile of channels. g_ptr: theta of this sequence, head and tile (eta at
    + s_g, alpha at + 2 s_g; token stride s_t, channel stride s_c, 0 for a gate shared by the channels);
    rows [BLOCK_N], ch [BLOCK_C] the tile's channel indices, ch_mask the real ones; z, x [BLOCK_N, BLOCK_C]
    the layer's inputs on the queries and the keys; scr_ptr: the program's scratch, written when SAVE.
    Returns A, c [BLOCK_N, BLOCK_C] (zero past n_tok), Mdual [BLOCK_N, BLOCK_N], g, s [BLOCK_N, BLOCK_C], and
    A, c, E at the chunk's last token [BLOCK_C]."""
    mask = (rows < n_tok)[:, None] & ch_mask[None, :]
    th = tl.load(g_ptr + (t0 + rows)[:, None] * s_t + ch[None, :] * s_c, mask=mask, other=0.0)
    zero = th * 0.0
    p, r, A, c = zero, zero, zero, zero
    mm = tl.full((BLOCK_N, BLOCK_N), 0.0, th.dtype)
    a_cum = _sum(zero, 0) + 1.0
    e_cum, c_cum = a_cum, a_cum * 0.0
    srow = rows[:, None] * BLOCK_C + ch[None, :]
    for j in range(n_tok):
        off = (t0 + j) * s_t + ch * s_c
        e_j = tl.load(g_ptr + s_g + off, mask=ch_mask, other=0.0)
        a_j = 1.0 - tl.load(g_ptr + 2 * s_g + off, mask=ch_mask, other=0.0)
        sel = (rows == j)[:, None]
        p = tl.where(sel, 1.0, e_j[None, :] * p)
        r = a_j[None, :] * r - th * p
        if SAVE:
            tl.store(scr_ptr + j * BLOCK_N * BLOCK_C + srow, p)
            tl.store(scr_ptr + (BLOCK_N + j) * BLOCK_N * BLOCK_C + srow, r)
        # row j of the dual form (sign: r_j = -G[j, :])
        m_j = _sum(r * x * _row(z, rows, j)[None, :], 1)
        mm = tl.where(sel, m_j[None, :], mm)
        a_cum = a_j * a_cum
        e_cum = e_j * e_cum
        c_cum = a_j * c_cum + e_cum
        A = tl.where(sel, a_cum[None, :], A)
        c = tl.where(sel, c_cum[None, :], c)
        if SAVE:
            chains = scr_ptr + 2 * BLOCK_N * BLOCK_N * BLOCK_C + j * BLOCK_C + ch
            tl.store(chains, a_cum)
            tl.store(chains + BLOCK_N * BLOCK_C, c_cum)
            tl.store(chains + 2 * BLOCK_N * BLOCK_C, e_cum)
    return A, c, -mm, -r, th * p, a_cum, c_cum, e_cum


@triton.jit
def _coefs_bwd(g_ptr, s_g, s_t, s_c, dg_ptr, d_g, d_t, d_c, t0, n_tok, rows, ch, ch_mask, z, x,
               dA, dc, dmd, dgl, dsl, dA_end, dc_end, de_end, scr_ptr,
               BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """The backward of _coefs, after a _coefs with SAVE has written this tile's rows to the scratch (the
    chains' rows too: read back as vectors, they are neither carried in registers nor extracted).
    dg_ptr: dL/dtheta of this sequence, head and tile (eta at + d_g, alpha at + 2 d_g; strides d_t, d_c),
    written here; z, x as _coefs took them; the gradients w.r.t. its outputs: dA, dc [BLOCK_N, BLOCK_C],
    dmd (Mdual) [BLOCK_N, BLOCK_N], dgl, dsl (g, s) [BLOCK_N, BLOCK_C], and the end values' dA_end, dc_end,
    de_end [BLOCK_C]. Returns the dual form's dL/dz and dL/dx."""
    n2 = BLOCK_N * BLOCK_C
    srow = rows[:, None] * BLOCK_C + ch[None, :]
    chains = scr_ptr + 2 * BLOCK_N * n2 + ch
    mask = (rows < n_tok)[:, None] & ch_mask[None, :]
    th = tl.load(g_ptr + (t0 + rows)[:, None] * s_t + ch[None, :] * s_c, mask=mask, other=0.0)
    last = n_tok - 1
    p_last = tl.load(scr_ptr + last * n2 + srow)
    lam_r = -dgl
    lam_p = dsl * th
    dth = dsl * p_last
    dm = -dmd  # w.r.t. the rows m_j = sum_c r_j z_j x, whose negative the dual form is
    dz, dx = dth * 0.0, dth * 0.0
    lam_a, lam_c, lam_e = dA_end, dc_end, de_end
    for step in range(n_tok):
        j = last - step
        off = (t0 + j) * s_t + ch * s_c
        e_j = tl.load(g_ptr + s_g + off, mask=ch_mask, other=0.0)
        a_j = 1.0 - tl.load(g_ptr + 2 * s_g + off, mask=ch_mask, other=0.0)
        sel = (rows == j)[:, None]
        p_j = tl.load(scr_ptr + j * n2 + srow)
        r_j = tl.load(scr_ptr + (BLOCK_N + j) * n2 + srow)
        prev = tl.maximum(j - 1, 0)
        p_prev = tl.where(j > 0, tl.load(scr_ptr + prev * n2 + srow), 0.0)
        r_prev = tl.where(j > 0, tl.load(scr_ptr + (BLOCK_N + prev) * n2 + srow), 0.0)
        # m_j[i] = sum_c r_j[i, c] x[i, c] z[j, c]
        dm_j = _row(dm, rows, j)[:, None]
        w = dm_j * _row(z, rows, j)[None, :]
        lam_r += w * x
        dx += w * r_j
        dz = tl.where(sel, _sum(dm_j * r_j * x, 0)[None, :], dz)
        # r_j = a_j r_{j-1} - theta p_j;  p_j = e_j p_{j-1} off the diagonal, 1 on it
        dth -= lam_r * p_j
        lam_p -= th * lam_r
        da = _sum(lam_r * r_prev, 0)
        de = _sum(tl.where(sel, 0.0, lam_p) * p_prev, 0)
        # A_j = a_j A_{j-1}, E_j = e_j E_{j-1}, c_j = a_j c_{j-1} + E_j
        lam_a += _row(dA, rows, j)
        lam_c += _row(dc, rows, j)
        lam_e += lam_c
        a_prev = tl.where(j > 0, tl.load(chains + prev * BLOCK_C), 1.0)
        c_prev = tl.where(j > 0, tl.load(chains + n2 + prev * BLOCK_C), 0.0)
        e_prev = tl.where(j > 0, tl.load(chains + 2 * n2 + prev * BLOCK_C), 1.0)
        da += lam_a * a_prev + lam_c * c_prev
        de += lam_e * e_prev
        g_off = (t0 + j) * d_t + ch * d_c
        tl.store(dg_ptr + d_g + g_off, de, mask=ch_mask)
        tl.store(dg_ptr + 2 * d_g + g_off, -da, mask=ch_mask)
        lam_a, lam_c, lam_e = a_j * lam_a, a_j * lam_c, e_j * lam_e
        lam_r = a_j[None, :] * lam_r
        lam_p = tl.where(sel, 0.0, e_j[None, :] * lam_p)
    tl.store(dg_ptr + (t0 + rows)[:, None] * d_t + ch[None, :] * d_c, dth, mask=mask)
    return dz, dx
