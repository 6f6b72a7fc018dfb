"""Triton kernels of the Titans memory: one program per (batch, head), looping over the chunks in order.

Imported by triton_chunk.py on first use, never at package import: whether ``triton.jit`` compiles for the
GPU or runs through Triton's interpreter (TRITON_INTERPRET=1) is fixed when this module is imported. The
kernels call only Triton's builtins, none of its library's own jit functions (tl.cdiv and the like): those
are fixed when triton itself is imported, and the interpreter cannot call compiled ones: so the kernels run
interpreted whenever this module was imported with TRITON_INTERPRET=1, even if triton was imported before.

Each chunk follows the closed form of chunk.py (its docstring derives it), with the recurrence's
coefficients (A, c, G, s, e per chunk, from chunk.chunk_coefficients) computed outside by PyTorch for all
chunks at once, and their gradients handed back to it. Per chunk of n tokens, with W_l, S_l a layer's
weights and momentum at the chunk start and B_l the weights the keys' gradients are taken at (B = W, except
for the rest of a chunk an earlier call began, whose base is kept in the state):

    keys       P1 = K B1^T, X2 = act(P1), P2 = X2 B2^T; the error Delta2 at the output (through the
               memory's LayerNorm when ``NORM``), Delta1 = act'(P1) * (Delta2 B2)
    retrieval  OUT_l = A * (Z_l W_l^T) + c * (Z_l S_l^T) - (G * (Z_l X_l^T)) Delta_l,
               Z_1 = Q, Z_2 = act(OUT_1)
    update     W_l' = A_end W_l + c_end S_l - (g Delta_l)^T X_l,   S_l' = e S_l - (s Delta_l)^T X_l

where X_1 = K, g = G[end, :], and A_end, c_end are A and c at the chunk's last token. Depth 1 is the same
with one layer (P = K B^T, no hidden layer).

Tiling. A depth-2 memory is tiled over its hidden units: with a tile of BLOCK_H units, W1 and S1 are tiles
of BLOCK_H rows, W2 and S2 tiles of BLOCK_H columns, and every product either stays inside a tile or sums
over tiles into a [n, D] or [n, n] accumulator (P2, OUT_2, Z_2 X_2^T). A chunk therefore makes two passes
over the tiles forward (the keys up to P2, whose LayerNorm needs all of it; then everything else, the update
written back tile by tile) and four backward. The memory's state lives in fp32 (fp64 for fp64 inputs)
buffers in global memory that each program updates in place, a [D, hidden] memory per layer per head (at
D 64, hidden 256: 256 KiB with the momentum), too large for one multiprocessor's registers or shared
memory: what is on chip at a time is one tile of each matrix, the chunk's keys, queries and values, and
the accumulators; the tiles stream through the L2 cache, which holds the state of every head at once
(16 heads: 4 MiB). Depth 1 keeps its whole [D, D] weights and momentum in registers from the first chunk
to the last (at D 64: 32 KiB, 32 values per thread at 8 warps), and its backward the gradient likewise.

Backward. The forward saves each chunk's starting memory (``SAVE``); the backward walks the chunks in
reverse, recomputes the chunk's forward from that memory, and carries dL/d(memory) from the chunk's end to
its start, in place, in the buffers it was handed (the gradient of the final state). A [n, hidden] scratch
per program holds one partial gradient between the third and fourth pass.

Gates. Coefficient sets come per memory layer: today both layers get the same tensors, and gates per
layer would pass a set each (a change on the host only). Gates per input channel of a layer ([B, H, T,
d_in]) would give A, c, s, e a d_in axis and G a [n, n, d_in] shape. The decays then scale the columns of
W and S, so the scalar-times-tile products become elementwise along d_in: A * (Z W^T) is (A o Z) W^T, the
update's (g Delta)^T X is Delta^T (g o X); and the dual form's G * (Z X^T) becomes sum_c G[:, :, c]
Z[:, c] X[:, c], a broadcast-and-reduce over d_in instead of one tl.dot (for the second layer summed over
the hidden tiles, as Z X^T already is). The backward changes alike, and _coefs loads tiles, not vectors.
"""

from __future__ import annotations

import triton
import triton.language as tl

GELU, SILU = 0, 1  # ACT
INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


# -- reductions and elementwise pieces ---------------------------------------------------------------------
@triton.jit
def _sum(x, axis: tl.constexpr):
    """tl.sum, spelt as the reduction with its combine function, which the interpreter recognises by
    identity: tl.sum itself is one of the library's jit functions (see the module docstring)."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _sum_all(x):
    """The sum of every entry of a 2-D tile."""
    return _sum(_sum(x, 1), 0)


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 0:
        return 0.5 * x * (1.0 + tl.math.erf(x * INV_SQRT2))
    else:
        return x / (1.0 + tl.exp(-x))


@triton.jit
def _act_grad(x, ACT: tl.constexpr):
    if ACT == 0:
        return 0.5 * (1.0 + tl.math.erf(x * INV_SQRT2)) + x * tl.exp(-0.5 * x * x) * INV_SQRT_2PI
    else:
        s = 1.0 / (1.0 + tl.exp(-x))
        return s * (1.0 + x * (1.0 - s))


@triton.jit
def _act_grad2(x, ACT: tl.constexpr):
    if ACT == 0:
        return tl.exp(-0.5 * x * x) * INV_SQRT_2PI * (2.0 - x * x)
    else:
        s = 1.0 / (1.0 + tl.exp(-x))
        return s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s))


@triton.jit
def _ln(p, mask_d, n_d, eps):
    """LayerNorm without affine parameters over the D real columns of p [N, BLOCK_D]: (output, 1/std)."""
    mean = _sum(tl.where(mask_d[None, :], p, 0.0), 1) / n_d
    centred = tl.where(mask_d[None, :], p - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(_sum(centred * centred, 1) / n_d + eps)
    return centred * rstd[:, None], rstd


@triton.jit
def _ln_bwd(x, o, rstd, mask_d, n_d):
    """The LayerNorm's Jacobian (symmetric) applied to x: rstd (x - mean(x) - o mean(x o))."""
    x = tl.where(mask_d[None, :], x, 0.0)
    mx = _sum(x, 1) / n_d
    mxo = _sum(x * o, 1) / n_d
    return tl.where(mask_d[None, :], rstd[:, None] * (x - mx[:, None] - o * mxo[:, None]), 0.0)


@triton.jit
def _key_error(p, kv, mask_d, n_d, eps, NORM: tl.constexpr):
    """The inner loss's gradient at the memory's last pre-activation p, for the keys (kv = 2 (k - v) with the
    residual, -2 v without): (delta, LN output, 1/std, err) with err = kv + 2 LN(p) and delta = LN'(p)^T err;
    without the norm, delta = err = kv + 2 p."""
    if NORM:
        o, rstd = _ln(p, mask_d, n_d, eps)
        err = kv + 2.0 * o
        return _ln_bwd(err, o, rstd, mask_d, n_d), o, rstd, err
    else:
        err = kv + 2.0 * p
        return err, p, _sum(p, 1) * 0.0, err


@triton.jit
def _key_error_bwd(dd, delta, o, rstd, err, mask_d, n_d, NORM: tl.constexpr):
    """From dL/d(delta) to (dL/d(kv), dL/dp). With the norm, delta = J(p) err(p), J = LN's Jacobian: the
    path through err gives J (2 J g') with g' = J dd, and J's own dependence on p gives, with
    h = -rstd (mean(err o) dd + mean(dd o) err), the term J h - rstd o mean(dd delta)."""
    if NORM:
        dd = tl.where(mask_d[None, :], dd, 0.0)
        derr = _ln_bwd(dd, o, rstd, mask_d, n_d)
        m_eo = _sum(err * o, 1) / n_d
        m_go = _sum(dd * o, 1) / n_d
        m_gd = _sum(dd * delta, 1) / n_d
        h = -rstd[:, None] * (m_eo[:, None] * dd + m_go[:, None] * err)
        dp = _ln_bwd(2.0 * derr + h, o, rstd, mask_d, n_d) - (rstd * m_gd)[:, None] * o
        return derr, dp
    else:
        return dd, 2.0 * dd


@triton.jit
def _readout(out, qq, mask_d, n_d, eps, NORM: tl.constexpr, RESIDUAL: tl.constexpr):
    """y = q + LN(out) (or without either)."""
    if NORM:
        out = _ln(out, mask_d, n_d, eps)[0]
    if RESIDUAL:
        out = out + qq
    return out


@triton.jit
def _readout_bwd(dy, out, mask_d, n_d, eps, NORM: tl.constexpr, RESIDUAL: tl.constexpr):
    """(dL/d out, dL/dq from the residual)."""
    dout = dy
    if NORM:
        o, rstd = _ln(out, mask_d, n_d, eps)
        dout = _ln_bwd(dy, o, rstd, mask_d, n_d)
    if RESIDUAL:
        return dout, dy
    else:
        return dout, dy * 0.0


# -- loads and stores ---------------------------------------------------------------------------------------
@triton.jit
def _rows(ptr, s_b, s_h, s_t, s_d, b, h, t0, n_rows, rows, cols, mask_d, dtype):
    """Rows t0 .. t0 + n_rows of a [B, H, T, D] tensor as a [BLOCK_N, BLOCK_D] tile, zero outside."""
    off = b * s_b + h * s_h + (t0 + rows)[:, None] * s_t + cols[None, :] * s_d
    return tl.load(ptr + off, mask=(rows < n_rows)[:, None] & mask_d[None, :], other=0.0).to(dtype)


@triton.jit
def _store_rows(ptr, val, s_b, s_h, s_t, b, h, t0, n_rows, rows, cols, mask_d):
    off = b * s_b + h * s_h + (t0 + rows)[:, None] * s_t + cols[None, :]
    tl.store(ptr + off, val.to(ptr.dtype.element_ty), mask=(rows < n_rows)[:, None] & mask_d[None, :])


@triton.jit
def _coefs(a_ptr, c_ptr, g_ptr, s_ptr, e_ptr, chunk, csz, n_tok, rows, cols_n):
    """One chunk's coefficients (see chunk.chunk_coefficients), zero past the chunk size, and their values
    at the chunk's last token: A, c, G, s [BLOCK_N] / [BLOCK_N, BLOCK_N], e, A_end, c_end, g = G[end, :]."""
    m = rows < csz
    a = tl.load(a_ptr + chunk * csz + rows, mask=m, other=0.0)
    c = tl.load(c_ptr + chunk * csz + rows, mask=m, other=0.0)
    s = tl.load(s_ptr + chunk * csz + cols_n, mask=cols_n < csz, other=0.0)
    g_off = chunk * csz * csz + rows[:, None] * csz + cols_n[None, :]
    gm = tl.load(g_ptr + g_off, mask=m[:, None] & (cols_n < csz)[None, :], other=0.0)
    e = tl.load(e_ptr + chunk)
    last = rows == n_tok - 1
    a_end = _sum(tl.where(last, a, 0.0), 0)
    c_end = _sum(tl.where(last, c, 0.0), 0)
    g_end = _sum(tl.where(last[:, None], gm, 0.0), 0)
    return a, c, gm, s, e, a_end, c_end, g_end


@triton.jit
def _store_coef_grads(da_ptr, dc_ptr, dg_ptr, ds_ptr, de_ptr, chunk, csz, n_tok, rows, cols_n,
                      da, dc, dgm, ds, de, da_end, dc_end, dg_end):  # fmt: skip
    """The gradients w.r.t. one chunk's coefficients, the end values' folded into the last token's row."""
    last = rows == n_tok - 1
    m = rows < csz
    tl.store(da_ptr + chunk * csz + rows, da + tl.where(last, da_end, 0.0), mask=m)
    tl.store(dc_ptr + chunk * csz + rows, dc + tl.where(last, dc_end, 0.0), mask=m)
    tl.store(ds_ptr + chunk * csz + cols_n, ds, mask=cols_n < csz)
    g_off = chunk * csz * csz + rows[:, None] * csz + cols_n[None, :]
    dgm = dgm + tl.where(last[:, None], dg_end[None, :], 0.0)
    tl.store(dg_ptr + g_off, dgm, mask=m[:, None] & (cols_n < csz)[None, :])
    tl.store(de_ptr + chunk, de)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _dot_t(a, b, PRECISION: tl.constexpr):
    """a @ b^T"""
    return tl.dot(a, tl.trans(b), input_precision=PRECISION)


@triton.jit
def _t_dot(a, b, PRECISION: tl.constexpr):
    """a^T @ b"""
    return tl.dot(tl.trans(a), b, input_precision=PRECISION)


# -- depth 1: M(x) = x + LN(W x) ----------------------------------------------------------------------------
@triton.jit
def titans_fwd_d1_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    a_ptr, c_ptr, g_ptr, s_ptr, e_ptr,
    w_ptr, m_ptr, bw_ptr, cw_ptr, cm_ptr, ob_ptr,
    n_heads, t_len, csz, D, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr,
    RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, SAVE: tl.constexpr, WRITE_BASE: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-1 forward over one launch's chunks. State w, m [BH, D, D] updated in place; bw: the base of a
    chunk begun earlier (HAS_BASE); cw, cm [BH, n_chunks, D, D]: each chunk's starting memory (SAVE); ob
    [BH, D, D]: the last chunk's starting weights, the base a partial chunk leaves (WRITE_BASE)."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = w_ptr.dtype.element_ty
    rows, cols, cols_n = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    state = pid.to(tl.int64) * D * D
    off = cols[:, None] * D + cols[None, :]
    mask = mask_d[:, None] & mask_d[None, :]
    w = tl.load(w_ptr + state + off, mask=mask, other=0.0)
    m = tl.load(m_ptr + state + off, mask=mask, other=0.0)
    if HAS_BASE:
        kb = tl.load(bw_ptr + state + off, mask=mask, other=0.0)
    for ci in range(n_chunks):
        t0 = ci * csz
        n_tok = tl.minimum(csz, t_len - t0)
        kk = _rows(k_ptr, sk_b, sk_h, sk_t, sk_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        qq = _rows(q_ptr, sq_b, sq_h, sq_t, sq_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        vv = _rows(v_ptr, sv_b, sv_h, sv_t, sv_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        kv = 2.0 * (kk - vv) if RESIDUAL else -2.0 * vv
        chunk = pid.to(tl.int64) * n_chunks + ci
        a, c, gm, s, e, a_end, c_end, g_end = _coefs(a_ptr, c_ptr, g_ptr, s_ptr, e_ptr, chunk, csz, n_tok,
                                                     rows, cols_n)  # fmt: skip
        if SAVE:
            tl.store(cw_ptr + chunk * D * D + off, w, mask=mask)
            tl.store(cm_ptr + chunk * D * D + off, m, mask=mask)
        if WRITE_BASE:
            tl.store(ob_ptr + state + off, w, mask=tl.where(ci == n_chunks - 1, mask, False))
        if not HAS_BASE:
            kb = w
        delta = _key_error(_dot_t(kk, kb, PRECISION), kv, mask_d, D, eps, NORM)[0]
        qk = _dot_t(qq, kk, PRECISION)
        out = a[:, None] * _dot_t(qq, w, PRECISION) + c[:, None] * _dot_t(qq, m, PRECISION)
        out -= _dot(gm * qk, delta, PRECISION)
        y = _readout(out, qq, mask_d, D, eps, NORM, RESIDUAL)
        _store_rows(y_ptr, y, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        w_new = a_end * w + c_end * m - _t_dot(g_end[:, None] * delta, kk, PRECISION)
        m = e * m - _t_dot(s[:, None] * delta, kk, PRECISION)
        w = w_new
    tl.store(w_ptr + state + off, w, mask=mask)
    tl.store(m_ptr + state + off, m, mask=mask)


@triton.jit
def titans_bwd_d1_kernel(
    q_ptr, k_ptr, v_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    a_ptr, c_ptr, g_ptr, s_ptr, e_ptr, da_ptr, dc_ptr, dg_ptr, ds_ptr, de_ptr,
    cw_ptr, cm_ptr, bw_ptr, lw_ptr, lm_ptr, dbw_ptr, dob_ptr,
    n_heads, t_len, csz, D, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr,
    RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, ADD_BASE_GRAD: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-1 backward over one launch's chunks, in reverse. lw, lm [BH, D, D]: dL/d(memory) at the end of
    the launch's last chunk, turned in place into that at its first chunk's start. cw, cm: the chunks'
    starting memory from the forward. dbw: dL/d(base) (HAS_BASE); dob: dL/d(the base the forward wrote),
    added at the last chunk's start (ADD_BASE_GRAD). dy, dq, dk, dv have y's strides."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = lw_ptr.dtype.element_ty
    rows, cols, cols_n = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    state = pid.to(tl.int64) * D * D
    off = cols[:, None] * D + cols[None, :]
    mask = mask_d[:, None] & mask_d[None, :]
    lw = tl.load(lw_ptr + state + off, mask=mask, other=0.0)
    lm = tl.load(lm_ptr + state + off, mask=mask, other=0.0)
    for i in range(n_chunks):
        ci = n_chunks - 1 - i
        t0 = ci * csz
        n_tok = tl.minimum(csz, t_len - t0)
        kk = _rows(k_ptr, sk_b, sk_h, sk_t, sk_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        qq = _rows(q_ptr, sq_b, sq_h, sq_t, sq_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        vv = _rows(v_ptr, sv_b, sv_h, sv_t, sv_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        dy = _rows(dy_ptr, sy_b, sy_h, sy_t, 1, b, h, t0, n_tok, rows, cols, mask_d, dt)
        kv = 2.0 * (kk - vv) if RESIDUAL else -2.0 * vv
        chunk = pid.to(tl.int64) * n_chunks + ci
        a, c, gm, s, e, a_end, c_end, g_end = _coefs(a_ptr, c_ptr, g_ptr, s_ptr, e_ptr, chunk, csz, n_tok,
                                                     rows, cols_n)  # fmt: skip
        w = tl.load(cw_ptr + chunk * D * D + off, mask=mask, other=0.0)
        m = tl.load(cm_ptr + chunk * D * D + off, mask=mask, other=0.0)
        if HAS_BASE:
            kb = tl.load(bw_ptr + state + off, mask=mask, other=0.0)
        else:
            kb = w
        delta, o_k, r_k, err = _key_error(_dot_t(kk, kb, PRECISION), kv, mask_d, D, eps, NORM)
        qk = _dot_t(qq, kk, PRECISION)
        gq = gm * qk
        r_w, r_m = _dot_t(qq, w, PRECISION), _dot_t(qq, m, PRECISION)
        out = a[:, None] * r_w + c[:, None] * r_m - _dot(gq, delta, PRECISION)
        dout, dq = _readout_bwd(dy, out, mask_d, D, eps, NORM, RESIDUAL)
        # retrieval: out = A (Q W^T) + c (Q S^T) - (G * Q K^T) delta
        da, dc = _sum(dout * r_w, 1), _sum(dout * r_m, 1)
        dr_w, dr_m = a[:, None] * dout, c[:, None] * dout
        dq += _dot(dr_w, w, PRECISION) + _dot(dr_m, m, PRECISION)
        dgq = -_dot_t(dout, delta, PRECISION)
        dq += _dot(dgq * gm, kk, PRECISION)
        dk = _t_dot(dgq * gm, qq, PRECISION)
        # update: W' = A_end W + c_end S - (g delta)^T K,  S' = e S - (s delta)^T K
        l_wk, l_mk = _dot_t(kk, lw, PRECISION), _dot_t(kk, lm, PRECISION)
        dd = -(g_end[:, None] * l_wk + s[:, None] * l_mk) - _t_dot(gq, dout, PRECISION)
        dg_end, ds = -_sum(delta * l_wk, 1), -_sum(delta * l_mk, 1)
        dk -= _dot(g_end[:, None] * delta, lw, PRECISION) + _dot(s[:, None] * delta, lm, PRECISION)
        da_end, dc_end, de = _sum_all(lw * w), _sum_all(lw * m), _sum_all(lm * m)
        lw_new = a_end * lw + _t_dot(dr_w, qq, PRECISION)
        lm = c_end * lw + e * lm + _t_dot(dr_m, qq, PRECISION)
        # the keys: delta from P = K B^T
        dkv, dp = _key_error_bwd(dd, delta, o_k, r_k, err, mask_d, D, NORM)
        if RESIDUAL:
            dk += 2.0 * dkv
        dv = -2.0 * dkv
        dk += _dot(dp, kb, PRECISION)
        dkb = _t_dot(dp, kk, PRECISION)
        if HAS_BASE:
            dkb += tl.load(dbw_ptr + state + off, mask=mask, other=0.0)
            tl.debug_barrier()  # every thread holding a copy has read it
            tl.store(dbw_ptr + state + off, dkb, mask=mask)
        else:
            lw_new += dkb
        if ADD_BASE_GRAD:
            last = ci == n_chunks - 1
            lw_new += tl.load(dob_ptr + state + off, mask=tl.where(last, mask, False), other=0.0)
        lw = lw_new
        _store_rows(dq_ptr, dq, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_rows(dk_ptr, dk, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_rows(dv_ptr, dv, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_coef_grads(da_ptr, dc_ptr, dg_ptr, ds_ptr, de_ptr, chunk, csz, n_tok, rows, cols_n,
                          da, dc, dgq * qk, ds, de, da_end, dc_end, dg_end)  # fmt: skip
    tl.store(lw_ptr + state + off, lw, mask=mask)
    tl.store(lm_ptr + state + off, lm, mask=mask)


# -- depth 2: M(x) = x + LN(W2 act(W1 x)), tiled over the hidden units --------------------------------------
@triton.jit
def _tile_offsets(hid0, hrows, cols, D, HID):
    """Offsets and masks of a tile of BLOCK_H hidden units from hid0: in W1 [HID, D] its rows ([BLOCK_H,
    BLOCK_D]), in W2 [D, HID] its columns ([BLOCK_D, BLOCK_H])."""
    hr = hid0 + hrows
    off1 = hr[:, None] * D + cols[None, :]
    mask1 = (hr < HID)[:, None] & (cols < D)[None, :]
    off2 = cols[:, None] * HID + hr[None, :]
    mask2 = (cols < D)[:, None] & (hr < HID)[None, :]
    return off1, mask1, off2, mask2


@triton.jit
def _keys_forward(kk, b1_ptr, b2_ptr, base, D, HID, hrows, cols,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, ACT: tl.constexpr,
                  PRECISION: tl.constexpr):  # fmt: skip
    """P2 = act(K B1^T) B2^T, summed over the hidden tiles."""
    p2 = tl.full((BLOCK_N, BLOCK_D), 0.0, kk.dtype)
    for hid0 in range(0, HID, BLOCK_H):
        off1, mask1, off2, mask2 = _tile_offsets(hid0, hrows, cols, D, HID)
        kb1 = tl.load(b1_ptr + base + off1, mask=mask1, other=0.0)
        kb2 = tl.load(b2_ptr + base + off2, mask=mask2, other=0.0)
        x2 = _act(_dot_t(kk, kb1, PRECISION), ACT)
        p2 += _dot_t(x2, kb2, PRECISION)
    return p2


@triton.jit
def titans_fwd_d2_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    a1_ptr, c1_ptr, g1_ptr, s1_ptr, e1_ptr, a2_ptr, c2_ptr, g2_ptr, s2_ptr, e2_ptr,
    w1_ptr, m1_ptr, w2_ptr, m2_ptr, bw1_ptr, bw2_ptr,
    cw1_ptr, cm1_ptr, cw2_ptr, cm2_ptr, ob1_ptr, ob2_ptr,
    n_heads, t_len, csz, D, HID, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, ACT: tl.constexpr,
    NORM: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, SAVE: tl.constexpr,
    WRITE_BASE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-2 forward over one launch's chunks. State w1, m1 [BH, HID, D] and w2, m2 [BH, D, HID], updated
    in place tile by tile; bw1, bw2: the base of a chunk begun earlier (HAS_BASE); cw*, cm* [BH, n_chunks,
    ...]: each chunk's starting memory (SAVE); ob1, ob2: the last chunk's starting weights (WRITE_BASE)."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = w1_ptr.dtype.element_ty
    rows, cols, cols_n = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    hrows = tl.arange(0, BLOCK_H)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    size = HID * D
    state = pid.to(tl.int64) * size
    for ci in range(n_chunks):
        t0 = ci * csz
        n_tok = tl.minimum(csz, t_len - t0)
        kk = _rows(k_ptr, sk_b, sk_h, sk_t, sk_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        qq = _rows(q_ptr, sq_b, sq_h, sq_t, sq_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        vv = _rows(v_ptr, sv_b, sv_h, sv_t, sv_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        kv = 2.0 * (kk - vv) if RESIDUAL else -2.0 * vv
        chunk = pid.to(tl.int64) * n_chunks + ci
        a1, c1, gm1, s1, e1, a1_end, c1_end, g1_end = _coefs(a1_ptr, c1_ptr, g1_ptr, s1_ptr, e1_ptr, chunk,
                                                             csz, n_tok, rows, cols_n)  # fmt: skip
        a2, c2, gm2, s2, e2, a2_end, c2_end, g2_end = _coefs(a2_ptr, c2_ptr, g2_ptr, s2_ptr, e2_ptr, chunk,
                                                             csz, n_tok, rows, cols_n)  # fmt: skip
        # pass 1: the keys up to the last layer's output, whose LayerNorm needs every hidden tile
        if HAS_BASE:
            p2 = _keys_forward(kk, bw1_ptr, bw2_ptr, state, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        else:
            p2 = _keys_forward(kk, w1_ptr, w2_ptr, state, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        d2 = _key_error(p2, kv, mask_d, D, eps, NORM)[0]
        gq1 = gm1 * _dot_t(qq, kk, PRECISION)
        tl.debug_barrier()  # pass 1 has read every tile before pass 2 writes them
        # pass 2, per hidden tile: the first layer's error and retrieval, the second layer's retrieval
        # summed over tiles, and the tile's memory at the chunk end
        out2 = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        zx = tl.full((BLOCK_N, BLOCK_N), 0.0, dt)
        for hid0 in range(0, HID, BLOCK_H):
            off1, mask1, off2, mask2 = _tile_offsets(hid0, hrows, cols, D, HID)
            w1 = tl.load(w1_ptr + state + off1, mask=mask1, other=0.0)
            m1 = tl.load(m1_ptr + state + off1, mask=mask1, other=0.0)
            w2 = tl.load(w2_ptr + state + off2, mask=mask2, other=0.0)
            m2 = tl.load(m2_ptr + state + off2, mask=mask2, other=0.0)
            if HAS_BASE:
                kb1 = tl.load(bw1_ptr + state + off1, mask=mask1, other=0.0)
                kb2 = tl.load(bw2_ptr + state + off2, mask=mask2, other=0.0)
            else:
                kb1, kb2 = w1, w2
            if SAVE:
                tl.store(cw1_ptr + chunk * size + off1, w1, mask=mask1)
                tl.store(cm1_ptr + chunk * size + off1, m1, mask=mask1)
                tl.store(cw2_ptr + chunk * size + off2, w2, mask=mask2)
                tl.store(cm2_ptr + chunk * size + off2, m2, mask=mask2)
            if WRITE_BASE:
                last = ci == n_chunks - 1
                tl.store(ob1_ptr + state + off1, w1, mask=tl.where(last, mask1, False))
                tl.store(ob2_ptr + state + off2, w2, mask=tl.where(last, mask2, False))
            p1 = _dot_t(kk, kb1, PRECISION)
            x2 = _act(p1, ACT)
            d1 = _act_grad(p1, ACT) * _dot(d2, kb2, PRECISION)
            out1 = a1[:, None] * _dot_t(qq, w1, PRECISION) + c1[:, None] * _dot_t(qq, m1, PRECISION)
            out1 -= _dot(gq1, d1, PRECISION)
            z2 = _act(out1, ACT)
            out2 += a2[:, None] * _dot_t(z2, w2, PRECISION) + c2[:, None] * _dot_t(z2, m2, PRECISION)
            zx += _dot_t(z2, x2, PRECISION)
            w1_new = a1_end * w1 + c1_end * m1 - _t_dot(g1_end[:, None] * d1, kk, PRECISION)
            m1_new = e1 * m1 - _t_dot(s1[:, None] * d1, kk, PRECISION)
            w2_new = a2_end * w2 + c2_end * m2 - _t_dot(g2_end[:, None] * d2, x2, PRECISION)
            m2_new = e2 * m2 - _t_dot(s2[:, None] * d2, x2, PRECISION)
            tl.debug_barrier()  # every thread holding a copy of the tile has read it
            tl.store(w1_ptr + state + off1, w1_new, mask=mask1)
            tl.store(m1_ptr + state + off1, m1_new, mask=mask1)
            tl.store(w2_ptr + state + off2, w2_new, mask=mask2)
            tl.store(m2_ptr + state + off2, m2_new, mask=mask2)
        out2 -= _dot(gm2 * zx, d2, PRECISION)
        y = _readout(out2, qq, mask_d, D, eps, NORM, RESIDUAL)
        _store_rows(y_ptr, y, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        # the next chunk reads tiles that other threads of this program wrote
        tl.debug_barrier()


@triton.jit
def titans_bwd_d2_kernel(
    q_ptr, k_ptr, v_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    a1_ptr, c1_ptr, g1_ptr, s1_ptr, e1_ptr, a2_ptr, c2_ptr, g2_ptr, s2_ptr, e2_ptr,
    da1_ptr, dc1_ptr, dg1_ptr, ds1_ptr, de1_ptr, da2_ptr, dc2_ptr, dg2_ptr, ds2_ptr, de2_ptr,
    cw1_ptr, cm1_ptr, cw2_ptr, cm2_ptr, bw1_ptr, bw2_ptr,
    lw1_ptr, lm1_ptr, lw2_ptr, lm2_ptr, dbw1_ptr, dbw2_ptr, dob1_ptr, dob2_ptr, scratch_ptr,
    n_heads, t_len, csz, D, HID, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, ACT: tl.constexpr,
    NORM: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, ADD_BASE_GRAD: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-2 backward over one launch's chunks, in reverse, four passes over the hidden tiles per chunk.
    lw*, lm*: dL/d(memory) at the end of the launch's last chunk, turned in place into that at its first
    chunk's start; cw*, cm*: the chunks' starting memory from the forward; dbw*: dL/d(base) (HAS_BASE);
    dob*: dL/d(the base the forward wrote), added at the last chunk's start (ADD_BASE_GRAD); scratch
    [BH, BLOCK_N, HID]."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = lw1_ptr.dtype.element_ty
    rows, cols, cols_n = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    hrows = tl.arange(0, BLOCK_H)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    size = HID * D
    state = pid.to(tl.int64) * size
    scratch = pid.to(tl.int64) * BLOCK_N * HID
    for i in range(n_chunks):
        ci = n_chunks - 1 - i
        t0 = ci * csz
        n_tok = tl.minimum(csz, t_len - t0)
        kk = _rows(k_ptr, sk_b, sk_h, sk_t, sk_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        qq = _rows(q_ptr, sq_b, sq_h, sq_t, sq_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        vv = _rows(v_ptr, sv_b, sv_h, sv_t, sv_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        dy = _rows(dy_ptr, sy_b, sy_h, sy_t, 1, b, h, t0, n_tok, rows, cols, mask_d, dt)
        kv = 2.0 * (kk - vv) if RESIDUAL else -2.0 * vv
        chunk = pid.to(tl.int64) * n_chunks + ci
        start = chunk * size  # this chunk's starting memory in cw*, cm*
        a1, c1, gm1, s1, e1, a1_end, c1_end, g1_end = _coefs(a1_ptr, c1_ptr, g1_ptr, s1_ptr, e1_ptr, chunk,
                                                             csz, n_tok, rows, cols_n)  # fmt: skip
        a2, c2, gm2, s2, e2, a2_end, c2_end, g2_end = _coefs(a2_ptr, c2_ptr, g2_ptr, s2_ptr, e2_ptr, chunk,
                                                             csz, n_tok, rows, cols_n)  # fmt: skip
        # pass 1: the keys
        if HAS_BASE:
            p2 = _keys_forward(kk, bw1_ptr, bw2_ptr, state, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        else:
            p2 = _keys_forward(kk, cw1_ptr, cw2_ptr, start, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        d2, o_k, r_k, err = _key_error(p2, kv, mask_d, D, eps, NORM)
        qk = _dot_t(qq, kk, PRECISION)
        gq1 = gm1 * qk
        # pass 2: the second layer's retrieval and the update's use of the keys' hidden layer, summed over
        # tiles (the chunk-end gradient is read here, before pass 3 overwrites it)
        r2 = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        t2 = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        l_w2x = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        l_m2x = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        zx = tl.full((BLOCK_N, BLOCK_N), 0.0, dt)
        for hid0 in range(0, HID, BLOCK_H):
            off1, mask1, off2, mask2 = _tile_offsets(hid0, hrows, cols, D, HID)
            w1 = tl.load(cw1_ptr + start + off1, mask=mask1, other=0.0)
            m1 = tl.load(cm1_ptr + start + off1, mask=mask1, other=0.0)
            w2 = tl.load(cw2_ptr + start + off2, mask=mask2, other=0.0)
            m2 = tl.load(cm2_ptr + start + off2, mask=mask2, other=0.0)
            if HAS_BASE:
                kb1 = tl.load(bw1_ptr + state + off1, mask=mask1, other=0.0)
                kb2 = tl.load(bw2_ptr + state + off2, mask=mask2, other=0.0)
            else:
                kb1, kb2 = w1, w2
            p1 = _dot_t(kk, kb1, PRECISION)
            x2 = _act(p1, ACT)
            d1 = _act_grad(p1, ACT) * _dot(d2, kb2, PRECISION)
            out1 = a1[:, None] * _dot_t(qq, w1, PRECISION) + c1[:, None] * _dot_t(qq, m1, PRECISION)
            out1 -= _dot(gq1, d1, PRECISION)
            z2 = _act(out1, ACT)
            r2 += _dot_t(z2, w2, PRECISION)
            t2 += _dot_t(z2, m2, PRECISION)
            zx += _dot_t(z2, x2, PRECISION)
            l_w2x += _dot_t(x2, tl.load(lw2_ptr + state + off2, mask=mask2, other=0.0), PRECISION)
            l_m2x += _dot_t(x2, tl.load(lm2_ptr + state + off2, mask=mask2, other=0.0), PRECISION)
        gz2 = gm2 * zx
        out2 = a2[:, None] * r2 + c2[:, None] * t2 - _dot(gz2, d2, PRECISION)
        dout2, dq = _readout_bwd(dy, out2, mask_d, D, eps, NORM, RESIDUAL)
        da2, dc2 = _sum(dout2 * r2, 1), _sum(dout2 * t2, 1)
        dgz = -_dot_t(dout2, d2, PRECISION)  # dL/d(G * Z2 X2^T)
        dzx = dgz * gm2
        dd2 = -(g2_end[:, None] * l_w2x + s2[:, None] * l_m2x) - _t_dot(gz2, dout2, PRECISION)
        dg2_end, ds2 = -_sum(d2 * l_w2x, 1), -_sum(d2 * l_m2x, 1)
        dout2_a, dout2_c = a2[:, None] * dout2, c2[:, None] * dout2
        tl.debug_barrier()  # pass 2 has read the chunk-end gradient before pass 3 overwrites it
        # pass 3, per tile: back through the retrieval and the update to the first layer's error; the
        # memory's gradient at the chunk start written over that at its end
        dk = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        da1 = tl.full((BLOCK_N,), 0.0, dt)
        dc1 = tl.full((BLOCK_N,), 0.0, dt)
        dg1_end = tl.full((BLOCK_N,), 0.0, dt)
        ds1 = tl.full((BLOCK_N,), 0.0, dt)
        dgq1 = tl.full((BLOCK_N, BLOCK_N), 0.0, dt)
        da1_end = _sum(da1, 0)
        dc1_end, de1, da2_end, dc2_end, de2 = da1_end, da1_end, da1_end, da1_end, da1_end
        for hid0 in range(0, HID, BLOCK_H):
            off1, mask1, off2, mask2 = _tile_offsets(hid0, hrows, cols, D, HID)
            w1 = tl.load(cw1_ptr + start + off1, mask=mask1, other=0.0)
            m1 = tl.load(cm1_ptr + start + off1, mask=mask1, other=0.0)
            w2 = tl.load(cw2_ptr + start + off2, mask=mask2, other=0.0)
            m2 = tl.load(cm2_ptr + start + off2, mask=mask2, other=0.0)
            if HAS_BASE:
                kb1 = tl.load(bw1_ptr + state + off1, mask=mask1, other=0.0)
                kb2 = tl.load(bw2_ptr + state + off2, mask=mask2, other=0.0)
            else:
                kb1, kb2 = w1, w2
            lw1 = tl.load(lw1_ptr + state + off1, mask=mask1, other=0.0)
            lm1 = tl.load(lm1_ptr + state + off1, mask=mask1, other=0.0)
            lw2 = tl.load(lw2_ptr + state + off2, mask=mask2, other=0.0)
            lm2 = tl.load(lm2_ptr + state + off2, mask=mask2, other=0.0)
            p1 = _dot_t(kk, kb1, PRECISION)
            x2 = _act(p1, ACT)
            back1 = _dot(d2, kb2, PRECISION)
            d1 = _act_grad(p1, ACT) * back1
            r1, t1 = _dot_t(qq, w1, PRECISION), _dot_t(qq, m1, PRECISION)
            out1 = a1[:, None] * r1 + c1[:, None] * t1 - _dot(gq1, d1, PRECISION)
            z2 = _act(out1, ACT)
            # second layer: retrieval and update
            dz2 = _dot(dout2_a, w2, PRECISION) + _dot(dout2_c, m2, PRECISION) + _dot(dzx, x2, PRECISION)
            dx2 = _t_dot(dzx, z2, PRECISION)
            dx2 -= _dot(g2_end[:, None] * d2, lw2, PRECISION) + _dot(s2[:, None] * d2, lm2, PRECISION)
            lw2_new = a2_end * lw2 + _t_dot(dout2_a, z2, PRECISION)
            lm2_new = c2_end * lw2 + e2 * lm2 + _t_dot(dout2_c, z2, PRECISION)
            # first layer: retrieval
            dout1 = _act_grad(out1, ACT) * dz2
            da1 += _sum(dout1 * r1, 1)
            dc1 += _sum(dout1 * t1, 1)
            dout1_a, dout1_c = a1[:, None] * dout1, c1[:, None] * dout1
            dq += _dot(dout1_a, w1, PRECISION) + _dot(dout1_c, m1, PRECISION)
            dgq1 -= _dot_t(dout1, d1, PRECISION)
            lw1_new = a1_end * lw1 + _t_dot(dout1_a, qq, PRECISION)
            lm1_new = c1_end * lw1 + e1 * lm1 + _t_dot(dout1_c, qq, PRECISION)
            # first layer: update
            l_w1k, l_m1k = _dot_t(kk, lw1, PRECISION), _dot_t(kk, lm1, PRECISION)
            dd1 = -(g1_end[:, None] * l_w1k + s1[:, None] * l_m1k) - _t_dot(gq1, dout1, PRECISION)
            dg1_end -= _sum(d1 * l_w1k, 1)
            ds1 -= _sum(d1 * l_m1k, 1)
            dk -= _dot(g1_end[:, None] * d1, lw1, PRECISION) + _dot(s1[:, None] * d1, lm1, PRECISION)
            da1_end += _sum_all(lw1 * w1)
            dc1_end += _sum_all(lw1 * m1)
            de1 += _sum_all(lm1 * m1)
            da2_end += _sum_all(lw2 * w2)
            dc2_end += _sum_all(lw2 * m2)
            de2 += _sum_all(lm2 * m2)
            # the keys' first error: delta1 = act'(P1) * (delta2 B2)
            dback1 = _act_grad(p1, ACT) * dd1
            dd2 += _dot_t(dback1, kb2, PRECISION)
            dkb2 = _t_dot(d2, dback1, PRECISION)
            # dL/dP1 but for the path through P2, which needs every tile's share of dd2 first (pass 4)
            part = _act_grad2(p1, ACT) * back1 * dd1 + _act_grad(p1, ACT) * dx2
            s_off = scratch + rows[:, None] * HID + (hid0 + hrows)[None, :]
            tl.store(scratch_ptr + s_off, part, mask=(hid0 + hrows < HID)[None, :])
            if HAS_BASE:
                dkb2 += tl.load(dbw2_ptr + state + off2, mask=mask2, other=0.0)
            else:
                lw2_new += dkb2
            tl.debug_barrier()  # every thread holding a copy of the tile has read it
            if HAS_BASE:
                tl.store(dbw2_ptr + state + off2, dkb2, mask=mask2)
            tl.store(lw1_ptr + state + off1, lw1_new, mask=mask1)
            tl.store(lm1_ptr + state + off1, lm1_new, mask=mask1)
            tl.store(lw2_ptr + state + off2, lw2_new, mask=mask2)
            tl.store(lm2_ptr + state + off2, lm2_new, mask=mask2)
        tl.debug_barrier()
        dq += _dot(dgq1 * gm1, kk, PRECISION)
        dk += _t_dot(dgq1 * gm1, qq, PRECISION)
        dkv, dp2 = _key_error_bwd(dd2, d2, o_k, r_k, err, mask_d, D, NORM)
        if RESIDUAL:
            dk += 2.0 * dkv
        dv = -2.0 * dkv
        # pass 4: through the keys' forward P1 = K B1^T, X2 = act(P1), P2 = X2 B2^T
        last = ci == n_chunks - 1
        for hid0 in range(0, HID, BLOCK_H):
            off1, mask1, off2, mask2 = _tile_offsets(hid0, hrows, cols, D, HID)
            if HAS_BASE:
                kb1 = tl.load(bw1_ptr + state + off1, mask=mask1, other=0.0)
                kb2 = tl.load(bw2_ptr + state + off2, mask=mask2, other=0.0)
            else:
                kb1 = tl.load(cw1_ptr + start + off1, mask=mask1, other=0.0)
                kb2 = tl.load(cw2_ptr + start + off2, mask=mask2, other=0.0)
            p1 = _dot_t(kk, kb1, PRECISION)
            s_off = scratch + rows[:, None] * HID + (hid0 + hrows)[None, :]
            part = tl.load(scratch_ptr + s_off, mask=(hid0 + hrows < HID)[None, :], other=0.0)
            dp1 = part + _act_grad(p1, ACT) * _dot(dp2, kb2, PRECISION)
            dk += _dot(dp1, kb1, PRECISION)
            dkb1 = _t_dot(dp1, kk, PRECISION)
            dkb2 = _t_dot(dp2, _act(p1, ACT), PRECISION)
            # the keys' weights are the base (its own gradient) or the memory at the chunk start
            if HAS_BASE:
                g1_ptr_, g2_ptr_ = dbw1_ptr + state + off1, dbw2_ptr + state + off2
            else:
                g1_ptr_, g2_ptr_ = lw1_ptr + state + off1, lw2_ptr + state + off2
                if ADD_BASE_GRAD:
                    dkb1 += tl.load(dob1_ptr + state + off1, mask=tl.where(last, mask1, False), other=0.0)
                    dkb2 += tl.load(dob2_ptr + state + off2, mask=tl.where(last, mask2, False), other=0.0)
            dkb1 += tl.load(g1_ptr_, mask=mask1, other=0.0)
            dkb2 += tl.load(g2_ptr_, mask=mask2, other=0.0)
            tl.debug_barrier()  # every thread holding a copy of the tile has read it
            tl.store(g1_ptr_, dkb1, mask=mask1)
            tl.store(g2_ptr_, dkb2, mask=mask2)
        tl.debug_barrier()
        _store_rows(dq_ptr, dq, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_rows(dk_ptr, dk, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_rows(dv_ptr, dv, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_coef_grads(da1_ptr, dc1_ptr, dg1_ptr, ds1_ptr, de1_ptr, chunk, csz, n_tok, rows, cols_n,
                          da1, dc1, dgq1 * qk, ds1, de1, da1_end, dc1_end, dg1_end)  # fmt: skip
        _store_coef_grads(da2_ptr, dc2_ptr, dg2_ptr, ds2_ptr, de2_ptr, chunk, csz, n_tok, rows, cols_n,
                          da2, dc2, dgz * zx, ds2, de2, da2_end, dc2_end, dg2_end)  # fmt: skip
