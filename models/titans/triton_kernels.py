"""Triton kernels of the Titans memory: one program per (batch, head), looping over the chunks in order.

Imported by triton_chunk.py on first use, never at package import: whether ``triton.jit`` compiles for the
GPU or runs through Triton's interpreter (TRITON_INTERPRET=1) is fixed when this module (and triton_parts,
triton_gates, whose jit functions it calls) is imported. The kernels call only Triton's builtins and
those modules' functions, none of Triton's library's own jit functions (tl.cdiv and the like): those are
fixed when triton itself is imported, and the interpreter cannot call compiled ones: so the kernels run
interpreted whenever these modules were imported with TRITON_INTERPRET=1, even if triton was imported
before.

Each chunk follows the closed form of chunk.py (its docstring derives it), with the gates' coefficients
formed inside the chunk from the gates themselves (triton_gates.py, per input channel; a gate per head or
per layer arrives broadcast over the channels). Per chunk of n tokens, with W_l, S_l a layer's weights and
momentum at the chunk start, B_l the weights the keys' gradients are taken at (B = W, except for the rest
of a chunk an earlier call began, whose base is kept in the state), M0_l the initial memory, and every
gate acting on the input channels (the columns of W_l):

    keys       P1 = K B1^T, X2 = act(P1), P2 = X2 B2^T; the error Delta2 at the output, through the
               memory's LayerNorm and its gain when ``NORM`` (triton_parts._key_error), Delta1 = act'(P1) *
               (Delta2 B2)
    retrieval  OUT_l = (A o Z_l) W_l^T + (c o Z_l) S_l^T (+ ((1 - A) o Z_l) M0_l^T) - Mdual_l Delta_l,
               Mdual_l[j, i] = sum_c G[j, i, c] Z_l[j, c] X_l[i, c],  Z_1 = Q, Z_2 = act(OUT_1)
    readout    y = q + gain LN(OUT_2) + bias
    update     W_l' = W_l diag(A_end) + S_l diag(c_end) (+ M0_l diag(1 - A_end)) - Delta_l^T (g o X_l),
               S_l' = S_l diag(E_end) - Delta_l^T (s o X_l)

where X_1 = K, o is the elementwise product (A, c, g, s are [n, d_in], broadcast over a layer's rows), the
terms in parentheses are forgetting toward the initial memory (``TO_INIT``), and A_end, c_end, E_end the
chain values at the chunk's last token. Depth 1 is the same with one layer (P = K B^T, no hidden layer).

Tiling. A depth-2 memory is tiled over its hidden units: with a tile of BLOCK_H units, W1, S1 and M0_1
are tiles of BLOCK_H rows, W2, S2 and M0_2 tiles of BLOCK_H columns, and every product either stays inside
a tile or sums over tiles into a [n, D] or [n, n] accumulator (P2, OUT_2, Mdual_2). The second layer's
input channels are the hidden units, so its gates' coefficients are formed per tile, where its Z_2 and
X_2 are; the first layer's channels are the head's D, formed once per chunk. A chunk makes two passes over
the tiles forward (the keys up to P2, whose LayerNorm needs all of it; then everything else, the update
written back tile by tile) and four backward. The memory's state lives in fp32 (fp64 for fp64 inputs)
buffers in global memory that each program updates in place, a [D, hidden] memory per layer per head (at
D 64, hidden 256: 256 KiB with the momentum, 384 KiB with M0 toward which it forgets), too large for one
multiprocessor's registers or shared memory: what is on chip at a time is one tile of each matrix, the
chunk's keys, queries and values, the accumulators, the gates' coefficient tiles ([n, D] for the first
layer, [n, BLOCK_H] for the second) and their recurrence's rows; the tiles stream through the L2 cache,
which holds the state of every head at once (16 heads: 4-6 MiB). Depth 1 keeps its whole [D, D] weights
and momentum in registers from the first chunk to the last (at D 64: 32 KiB, 32 values per thread at 8
warps); its backward, which holds more per chunk, keeps the gradient in its buffers, read and written once
per chunk (from cache).

Backward. The forward saves each chunk's starting memory (``SAVE``); the backward walks the chunks in
reverse, recomputes the chunk's forward from that memory, and carries dL/d(memory) from the chunk's end to
its start, in place, in the buffers it was handed (the gradient of the final state). A [n, hidden] scratch
per program holds one partial gradient between the third and fourth pass, and a second one the rows of the
gates' recurrence (triton_gates.py). The gradients w.r.t. the gates are written per token and channel,
those w.r.t. the LN's gain and bias and M0 summed per program over the chunks (the host sums over the
batch).

Cost and spills. The gates' recurrence is n sequential steps per chunk, layer and channel tile, each
[n, C] elementwise work and two reductions on the CUDA cores (the dual form's sum over channels cannot be
one tl.dot per chunk when every channel has its own G); gates per head or layer take the same path,
broadcast. Its backward's scratch is per program (2 n + 3) n C values: 143 KiB for the first layer at chunk
16 and D 64, 35 KiB for a tile of 16 hidden units, read back within the chunk (L1, L2). Compiled for
sm_90 at chunk 16, D 64, hidden 256 and 8 warps, every kernel takes 255 registers; spilled per thread, on
the default memory's path (no base, forgetting by decay) and with every flag on (scripts/gpu/
compile_titans_kernels.py): forward depth 1 240 / 528 B, backward depth 1 2.4 / 3.3 KB, forward depth 2
192 / 352 B, backward depth 2 688 / 792 B. What spills is the chunk's [n, D] tiles held across the
recurrence's loop and, at depth 1, the [D, D] products: the depth-1 backward holds five [D, D] matrices
per chunk (weights, momentum, their gradients, the keys' base gradient), 80 values per thread.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_gates import _coefs, _coefs_bwd
from .triton_parts import (
    _act,
    _act_grad,
    _act_grad2,
    _add_vec,
    _dot,
    _dot_t,
    _key_error,
    _key_error_bwd,
    _key_target,
    _keys_forward,
    _readout,
    _readout_bwd,
    _rows,
    _store_rows,
    _sum,
    _t_dot,
    _tile_offsets,
    _to_init_bwd,
)

GELU, SILU = 0, 1  # ACT


# -- depth 1: M(x) = x + gain LN(W x) + bias -----------------------------------------------------------------
@triton.jit
def titans_fwd_d1_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    g_ptr, sg_g, sg_b, sg_h, sg_t, sg_c,
    nw_ptr, nb_ptr, m0_ptr,
    w_ptr, m_ptr, bw_ptr, cw_ptr, cm_ptr, ob_ptr,
    n_heads, t_len, csz, D, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr,
    RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, SAVE: tl.constexpr, WRITE_BASE: tl.constexpr,
    TO_INIT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-1 forward over one launch's chunks. g: the gates [3, B, H, T, C] (theta, eta, alpha; channel
    stride 0 for a gate shared by the channels); nw, nb: the LN's gain and bias [H, D]; m0: the initial
    memory [H, D, D] (TO_INIT). State w, m [BH, D, D] updated in place; bw: the base of a chunk begun
    earlier (HAS_BASE); cw, cm [BH, n_chunks, D, D]: each chunk's starting memory (SAVE); ob [BH, D, D]:
    the last chunk's starting weights, the base a partial chunk leaves (WRITE_BASE)."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = w_ptr.dtype.element_ty
    rows, cols = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    state = pid.to(tl.int64) * D * D
    off = cols[:, None] * D + cols[None, :]
    mask = mask_d[:, None] & mask_d[None, :]
    gate = g_ptr + b * sg_b + h * sg_h
    gain = tl.load(nw_ptr + h * D + cols, mask=mask_d, other=0.0)
    bias = tl.load(nb_ptr + h * D + cols, mask=mask_d, other=0.0)
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
        kv = _key_target(kk, vv, gain, bias, rows < n_tok, RESIDUAL)[0]
        A, c, md, g, s, a_end, c_end, e_end = _coefs(
            gate, sg_g, sg_t, sg_c, t0, n_tok, rows, cols, mask_d, qq, kk, w_ptr, BLOCK_N, BLOCK_D, False
        )
        chunk = pid.to(tl.int64) * n_chunks + ci
        if SAVE:
            tl.store(cw_ptr + chunk * D * D + off, w, mask=mask)
            tl.store(cm_ptr + chunk * D * D + off, m, mask=mask)
        if WRITE_BASE:
            tl.store(ob_ptr + state + off, w, mask=tl.where(ci == n_chunks - 1, mask, False))
        if not HAS_BASE:
            kb = w
        delta = _key_error(_dot_t(kk, kb, PRECISION), kv, 2.0 * gain * gain, mask_d, D, eps, NORM)[0]
        out = _dot_t(A * qq, w, PRECISION) + _dot_t(c * qq, m, PRECISION) - _dot(md, delta, PRECISION)
        w_new = w * a_end[None, :] + m * c_end[None, :] - _t_dot(delta, g * kk, PRECISION)
        if TO_INIT:  # read per chunk (from cache): registers hold the memory
            m0 = tl.load(m0_ptr + h * D * D + off, mask=mask, other=0.0)
            out += _dot_t((1.0 - A) * qq, m0, PRECISION)
            w_new += m0 * (1.0 - a_end)[None, :]
        y = _readout(out, qq, gain, bias, mask_d, D, eps, NORM, RESIDUAL)
        _store_rows(y_ptr, y, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        m = m * e_end[None, :] - _t_dot(delta, s * kk, PRECISION)
        w = w_new
    tl.store(w_ptr + state + off, w, mask=mask)
    tl.store(m_ptr + state + off, m, mask=mask)


@triton.jit
def titans_bwd_d1_kernel(
    q_ptr, k_ptr, v_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    g_ptr, sg_g, sg_b, sg_h, sg_t, sg_c, dg_ptr, dg_g, dg_b, dg_h, dg_t, dg_c,
    nw_ptr, nb_ptr, m0_ptr, dnw_ptr, dnb_ptr, dm0_ptr,
    cw_ptr, cm_ptr, bw_ptr, lw_ptr, lm_ptr, dbw_ptr, dob_ptr, cscr_ptr,
    n_heads, t_len, csz, D, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr,
    RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, ADD_BASE_GRAD: tl.constexpr, TO_INIT: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-1 backward over one launch's chunks, in reverse. lw, lm [BH, D, D]: dL/d(memory) at the end of
    the launch's last chunk, turned in place into that at its first chunk's start. cw, cm: the chunks'
    starting memory from the forward. dg: dL/d(gates) [3, B, H, T, C], written; dnw, dnb [BH, D] and dm0
    [BH, D, D]: dL/d(gain, bias, M0) of this program, added to. dbw: dL/d(base) (HAS_BASE); dob: dL/d(the
    base the forward wrote), added at the last chunk's start (ADD_BASE_GRAD). cscr: the gates' recurrence's
    scratch, [BH, 2 BLOCK_N + 3, BLOCK_N, BLOCK_D]. dy, dq, dk, dv have y's strides."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = lw_ptr.dtype.element_ty
    rows, cols = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    state = pid.to(tl.int64) * D * D
    off = cols[:, None] * D + cols[None, :]
    mask = mask_d[:, None] & mask_d[None, :]
    gate = g_ptr + b * sg_b + h * sg_h
    dgate = dg_ptr + b * dg_b + h * dg_h
    cscr = cscr_ptr + pid.to(tl.int64) * (2 * BLOCK_N + 3) * BLOCK_N * BLOCK_D
    gain = tl.load(nw_ptr + h * D + cols, mask=mask_d, other=0.0)
    bias = tl.load(nb_ptr + h * D + cols, mask=mask_d, other=0.0)
    wsq = 2.0 * gain * gain
    dgain, dbias = gain * 0.0, gain * 0.0
    for i in range(n_chunks):
        ci = n_chunks - 1 - i
        t0 = ci * csz
        n_tok = tl.minimum(csz, t_len - t0)
        kk = _rows(k_ptr, sk_b, sk_h, sk_t, sk_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        qq = _rows(q_ptr, sq_b, sq_h, sq_t, sq_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        vv = _rows(v_ptr, sv_b, sv_h, sv_t, sv_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        dy = _rows(dy_ptr, sy_b, sy_h, sy_t, 1, b, h, t0, n_tok, rows, cols, mask_d, dt)
        kv, target = _key_target(kk, vv, gain, bias, rows < n_tok, RESIDUAL)
        A, c, md, g, s, a_end, c_end, e_end = _coefs(
            gate, sg_g, sg_t, sg_c, t0, n_tok, rows, cols, mask_d, qq, kk, cscr, BLOCK_N, BLOCK_D, True
        )
        chunk = pid.to(tl.int64) * n_chunks + ci
        # dL/d(memory) at the chunk end, read per chunk (from cache): registers hold the chunk's memory
        lw = tl.load(lw_ptr + state + off, mask=mask, other=0.0)
        lm = tl.load(lm_ptr + state + off, mask=mask, other=0.0)
        w = tl.load(cw_ptr + chunk * D * D + off, mask=mask, other=0.0)
        m = tl.load(cm_ptr + chunk * D * D + off, mask=mask, other=0.0)
        if HAS_BASE:
            kb = tl.load(bw_ptr + state + off, mask=mask, other=0.0)
        else:
            kb = w
        delta, o_k, r_k, err = _key_error(_dot_t(kk, kb, PRECISION), kv, wsq, mask_d, D, eps, NORM)
        qa, qc = A * qq, c * qq
        out = _dot_t(qa, w, PRECISION) + _dot_t(qc, m, PRECISION) - _dot(md, delta, PRECISION)
        if TO_INIT:  # read per chunk (from cache): registers hold the memory and its gradient
            m0 = tl.load(m0_ptr + h * D * D + off, mask=mask, other=0.0)
            out += _dot_t((1.0 - A) * qq, m0, PRECISION)
        dout, dq, dg_, db_ = _readout_bwd(dy, out, gain, mask_d, D, eps, NORM, RESIDUAL)
        dgain += dg_
        dbias += db_
        # retrieval: out = (A o Q) W^T + (c o Q) S^T (+ ((1 - A) o Q) M0^T) - Mdual delta
        dqa, dqc = _dot(dout, w, PRECISION), _dot(dout, m, PRECISION)
        dA, dc = qq * dqa, qq * dqc
        dq += A * dqa + c * dqc
        dmd = -_dot_t(dout, delta, PRECISION)
        dd = -_t_dot(md, dout, PRECISION)
        # update: W' = W diag(A_end) + S diag(c_end) (+ M0 diag(1 - A_end)) - delta^T (g o K),
        # S' = S diag(E_end) - delta^T (s o K)
        ul, um = _dot(delta, lw, PRECISION), _dot(delta, lm, PRECISION)
        dd -= _dot_t(g * kk, lw, PRECISION) + _dot_t(s * kk, lm, PRECISION)
        dk = -(g * ul + s * um)
        da_end, dc_end, de_end = _sum(lw * w, 0), _sum(lw * m, 0), _sum(lm * m, 0)
        if TO_INIT:
            dm0 = tl.load(dm0_ptr + state + off, mask=mask, other=0.0)
            dA_, dq_, da_end_, dm0 = _to_init_bwd(dout, qq, A, m0, lw, a_end, dm0, PRECISION)
            dA += dA_
            dq += dq_
            da_end += da_end_
            tl.store(dm0_ptr + state + off, dm0, mask=mask)
        lw_new = lw * a_end[None, :] + _t_dot(dout, qa, PRECISION)
        lm = lw * c_end[None, :] + lm * e_end[None, :] + _t_dot(dout, qc, PRECISION)
        # the keys: delta from P = K B^T, kv = 2 gain (k + bias - v)
        dkv, dp, dw2 = _key_error_bwd(dd, delta, o_k, r_k, err, wsq, mask_d, D, NORM)
        dtarget = 2.0 * gain[None, :] * dkv
        if RESIDUAL:
            dk += dtarget
        dv = -dtarget
        dbias += _sum(dtarget, 0)
        dgain += _sum(2.0 * target * dkv, 0) + 4.0 * gain * dw2
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
        tl.debug_barrier()  # every thread holding a copy of lw, lm has read them
        tl.store(lw_ptr + state + off, lw_new, mask=mask)
        tl.store(lm_ptr + state + off, lm, mask=mask)
        # the gates' coefficients and the dual form's share of dq and dk, last: the chunk's memory is no
        # longer live (registers); the barrier above also orders the scratch rows _coefs wrote
        dz, dx = _coefs_bwd(gate, sg_g, sg_t, sg_c, dgate, dg_g, dg_t, dg_c, t0, n_tok, rows, cols, mask_d,
                            qq, kk, dA, dc, dmd, -kk * ul, -kk * um, da_end, dc_end, de_end,
                            cscr, BLOCK_N, BLOCK_D)  # fmt: skip
        tl.debug_barrier()  # read before the next chunk's _coefs writes them
        _store_rows(dq_ptr, dq + dz, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_rows(dk_ptr, dk + dx, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        _store_rows(dv_ptr, dv, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
    _add_vec(dnw_ptr + pid.to(tl.int64) * D, dgain, cols, mask_d)
    _add_vec(dnb_ptr + pid.to(tl.int64) * D, dbias, cols, mask_d)


# -- depth 2: M(x) = x + gain LN(W2 act(W1 x)) + bias, tiled over the hidden units -------------------------
@triton.jit
def titans_fwd_d2_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    g1_ptr, sg1_g, sg1_b, sg1_h, sg1_t, sg1_c, g2_ptr, sg2_g, sg2_b, sg2_h, sg2_t, sg2_c,
    nw_ptr, nb_ptr, m01_ptr, m02_ptr,
    w1_ptr, m1_ptr, w2_ptr, m2_ptr, bw1_ptr, bw2_ptr,
    cw1_ptr, cm1_ptr, cw2_ptr, cm2_ptr, ob1_ptr, ob2_ptr,
    n_heads, t_len, csz, D, HID, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, ACT: tl.constexpr,
    NORM: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, SAVE: tl.constexpr,
    WRITE_BASE: tl.constexpr, TO_INIT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-2 forward over one launch's chunks. g1, g2: each layer's gates [3, B, H, T, C_l]; nw, nb: the
    LN's gain and bias [H, D]; m01 [H, HID, D], m02 [H, D, HID]: the initial memory (TO_INIT). State w1, m1
    [BH, HID, D] and w2, m2 [BH, D, HID], updated in place tile by tile; bw1, bw2: the base of a chunk begun
    earlier (HAS_BASE); cw*, cm* [BH, n_chunks, ...]: each chunk's starting memory (SAVE); ob1, ob2: the
    last chunk's starting weights (WRITE_BASE)."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = w1_ptr.dtype.element_ty
    rows, cols = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    hrows = tl.arange(0, BLOCK_H)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    size = HID * D
    state = pid.to(tl.int64) * size
    init = h.to(tl.int64) * size
    gate1 = g1_ptr + b * sg1_b + h * sg1_h
    gate2 = g2_ptr + b * sg2_b + h * sg2_h
    gain = tl.load(nw_ptr + h * D + cols, mask=mask_d, other=0.0)
    bias = tl.load(nb_ptr + h * D + cols, mask=mask_d, other=0.0)
    for ci in range(n_chunks):
        t0 = ci * csz
        n_tok = tl.minimum(csz, t_len - t0)
        kk = _rows(k_ptr, sk_b, sk_h, sk_t, sk_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        qq = _rows(q_ptr, sq_b, sq_h, sq_t, sq_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        vv = _rows(v_ptr, sv_b, sv_h, sv_t, sv_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        kv = _key_target(kk, vv, gain, bias, rows < n_tok, RESIDUAL)[0]
        chunk = pid.to(tl.int64) * n_chunks + ci
        A1, c1, md1, g1, s1, a1_end, c1_end, e1_end = _coefs(
            gate1, sg1_g, sg1_t, sg1_c, t0, n_tok, rows, cols, mask_d, qq, kk, w1_ptr, BLOCK_N, BLOCK_D, False
        )
        # pass 1: the keys up to the last layer's output, whose LayerNorm needs every hidden tile
        if HAS_BASE:
            p2 = _keys_forward(kk, bw1_ptr, bw2_ptr, state, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        else:
            p2 = _keys_forward(kk, w1_ptr, w2_ptr, state, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        d2 = _key_error(p2, kv, 2.0 * gain * gain, mask_d, D, eps, NORM)[0]
        tl.debug_barrier()  # pass 1 has read every tile before pass 2 writes them
        # pass 2, per hidden tile: the first layer's error and retrieval, the second layer's coefficients
        # and retrieval summed over tiles, and the tile's memory at the chunk end
        out2 = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        md2 = tl.full((BLOCK_N, BLOCK_N), 0.0, dt)
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
            out1 = _dot_t(A1 * qq, w1, PRECISION) + _dot_t(c1 * qq, m1, PRECISION) - _dot(md1, d1, PRECISION)
            w1_new = w1 * a1_end[None, :] + m1 * c1_end[None, :] - _t_dot(d1, g1 * kk, PRECISION)
            if TO_INIT:
                m01 = tl.load(m01_ptr + init + off1, mask=mask1, other=0.0)
                out1 += _dot_t((1.0 - A1) * qq, m01, PRECISION)
                w1_new += m01 * (1.0 - a1_end)[None, :]
            z2 = _act(out1, ACT)
            A2, c2, md2_t, g2, s2, a2_end, c2_end, e2_end = _coefs(
                gate2 + hid0 * sg2_c, sg2_g, sg2_t, sg2_c, t0, n_tok, rows, hrows, hid0 + hrows < HID, z2, x2,
                w1_ptr, BLOCK_N, BLOCK_H, False,
            )  # fmt: skip
            out2 += _dot_t(A2 * z2, w2, PRECISION) + _dot_t(c2 * z2, m2, PRECISION)
            md2 += md2_t
            w2_new = w2 * a2_end[None, :] + m2 * c2_end[None, :] - _t_dot(d2, g2 * x2, PRECISION)
            if TO_INIT:
                m02 = tl.load(m02_ptr + init + off2, mask=mask2, other=0.0)
                out2 += _dot_t((1.0 - A2) * z2, m02, PRECISION)
                w2_new += m02 * (1.0 - a2_end)[None, :]
            m1_new = m1 * e1_end[None, :] - _t_dot(d1, s1 * kk, PRECISION)
            m2_new = m2 * e2_end[None, :] - _t_dot(d2, s2 * x2, PRECISION)
            tl.debug_barrier()  # every thread holding a copy of the tile has read it
            tl.store(w1_ptr + state + off1, w1_new, mask=mask1)
            tl.store(m1_ptr + state + off1, m1_new, mask=mask1)
            tl.store(w2_ptr + state + off2, w2_new, mask=mask2)
            tl.store(m2_ptr + state + off2, m2_new, mask=mask2)
        out2 -= _dot(md2, d2, PRECISION)
        y = _readout(out2, qq, gain, bias, mask_d, D, eps, NORM, RESIDUAL)
        _store_rows(y_ptr, y, sy_b, sy_h, sy_t, b, h, t0, n_tok, rows, cols, mask_d)
        # the next chunk reads tiles that other threads of this program wrote
        tl.debug_barrier()


@triton.jit
def titans_bwd_d2_kernel(
    q_ptr, k_ptr, v_ptr, dy_ptr, dq_ptr, dk_ptr, dv_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, sy_b, sy_h, sy_t,
    g1_ptr, sg1_g, sg1_b, sg1_h, sg1_t, sg1_c, g2_ptr, sg2_g, sg2_b, sg2_h, sg2_t, sg2_c,
    dg1_ptr, dg1_g, dg1_b, dg1_h, dg1_t, dg1_c, dg2_ptr, dg2_g, dg2_b, dg2_h, dg2_t, dg2_c,
    nw_ptr, nb_ptr, m01_ptr, m02_ptr, dnw_ptr, dnb_ptr, dm01_ptr, dm02_ptr,
    cw1_ptr, cm1_ptr, cw2_ptr, cm2_ptr, bw1_ptr, bw2_ptr,
    lw1_ptr, lm1_ptr, lw2_ptr, lm2_ptr, dbw1_ptr, dbw2_ptr, dob1_ptr, dob2_ptr, scratch_ptr, cscr_ptr,
    n_heads, t_len, csz, D, HID, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, ACT: tl.constexpr,
    NORM: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BASE: tl.constexpr, ADD_BASE_GRAD: tl.constexpr,
    TO_INIT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Depth-2 backward over one launch's chunks, in reverse, four passes over the hidden tiles per chunk.
    lw*, lm*: dL/d(memory) at the end of the launch's last chunk, turned in place into that at its first
    chunk's start; cw*, cm*: the chunks' starting memory from the forward; dg1, dg2: dL/d(gates), written;
    dnw, dnb [BH, D], dm01, dm02 [BH, ...]: dL/d(gain, bias, M0) of this program, added to; dbw*: dL/d(base)
    (HAS_BASE); dob*: dL/d(the base the forward wrote), added at the last chunk's start (ADD_BASE_GRAD);
    scratch [BH, BLOCK_N, HID]; cscr: the gates' recurrences' scratch, [BH, 2 BLOCK_N + 3, BLOCK_N, BLOCK_D]
    for the first layer, then [2, BLOCK_N, BLOCK_N, BLOCK_H] for the second."""
    pid = tl.program_id(0)
    b, h = (pid // n_heads).to(tl.int64), pid % n_heads  # int64: strided q, k, v can be large
    dt = lw1_ptr.dtype.element_ty
    rows, cols = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    hrows = tl.arange(0, BLOCK_H)
    mask_d = cols < D
    n_chunks = (t_len + csz - 1) // csz  # not tl.cdiv: see the module docstring
    size = HID * D
    state = pid.to(tl.int64) * size
    init = h.to(tl.int64) * size
    scratch = pid.to(tl.int64) * BLOCK_N * HID
    cscr1 = cscr_ptr + pid.to(tl.int64) * (2 * BLOCK_N + 3) * BLOCK_N * (BLOCK_D + BLOCK_H)
    cscr2 = cscr1 + (2 * BLOCK_N + 3) * BLOCK_N * BLOCK_D
    gate1 = g1_ptr + b * sg1_b + h * sg1_h
    gate2 = g2_ptr + b * sg2_b + h * sg2_h
    dgate1 = dg1_ptr + b * dg1_b + h * dg1_h
    dgate2 = dg2_ptr + b * dg2_b + h * dg2_h
    gain = tl.load(nw_ptr + h * D + cols, mask=mask_d, other=0.0)
    bias = tl.load(nb_ptr + h * D + cols, mask=mask_d, other=0.0)
    wsq = 2.0 * gain * gain
    dgain, dbias = gain * 0.0, gain * 0.0
    for i in range(n_chunks):
        ci = n_chunks - 1 - i
        t0 = ci * csz
        n_tok = tl.minimum(csz, t_len - t0)
        kk = _rows(k_ptr, sk_b, sk_h, sk_t, sk_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        qq = _rows(q_ptr, sq_b, sq_h, sq_t, sq_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        vv = _rows(v_ptr, sv_b, sv_h, sv_t, sv_d, b, h, t0, n_tok, rows, cols, mask_d, dt)
        dy = _rows(dy_ptr, sy_b, sy_h, sy_t, 1, b, h, t0, n_tok, rows, cols, mask_d, dt)
        kv, target = _key_target(kk, vv, gain, bias, rows < n_tok, RESIDUAL)
        chunk = pid.to(tl.int64) * n_chunks + ci
        start = chunk * size  # this chunk's starting memory in cw*, cm*
        A1, c1, md1, g1, s1, a1_end, c1_end, e1_end = _coefs(
            gate1, sg1_g, sg1_t, sg1_c, t0, n_tok, rows, cols, mask_d, qq, kk, cscr1, BLOCK_N, BLOCK_D, True
        )
        qa1, qc1 = A1 * qq, c1 * qq
        # pass 1: the keys
        if HAS_BASE:
            p2 = _keys_forward(kk, bw1_ptr, bw2_ptr, state, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        else:
            p2 = _keys_forward(kk, cw1_ptr, cw2_ptr, start, D, HID, hrows, cols,
                               BLOCK_N, BLOCK_D, BLOCK_H, ACT, PRECISION)  # fmt: skip
        d2, o_k, r_k, err = _key_error(p2, kv, wsq, mask_d, D, eps, NORM)
        # pass 2: the second layer's retrieval and the update's use of the keys' hidden layer, summed over
        # tiles (the chunk-end gradient is read here, before pass 3 overwrites it)
        out2 = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        md2 = tl.full((BLOCK_N, BLOCK_N), 0.0, dt)
        ld2 = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
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
            out1 = _dot_t(qa1, w1, PRECISION) + _dot_t(qc1, m1, PRECISION) - _dot(md1, d1, PRECISION)
            if TO_INIT:
                m01 = tl.load(m01_ptr + init + off1, mask=mask1, other=0.0)
                out1 += _dot_t((1.0 - A1) * qq, m01, PRECISION)
            z2 = _act(out1, ACT)
            A2, c2, md2_t, g2, s2, a2_end, c2_end, e2_end = _coefs(
                gate2 + hid0 * sg2_c, sg2_g, sg2_t, sg2_c, t0, n_tok, rows, hrows, hid0 + hrows < HID, z2, x2,
                cscr2, BLOCK_N, BLOCK_H, False,
            )  # fmt: skip
            out2 += _dot_t(A2 * z2, w2, PRECISION) + _dot_t(c2 * z2, m2, PRECISION)
            if TO_INIT:
                m02 = tl.load(m02_ptr + init + off2, mask=mask2, other=0.0)
                out2 += _dot_t((1.0 - A2) * z2, m02, PRECISION)
            md2 += md2_t
            lw2 = tl.load(lw2_ptr + state + off2, mask=mask2, other=0.0)
            lm2 = tl.load(lm2_ptr + state + off2, mask=mask2, other=0.0)
            ld2 += _dot_t(g2 * x2, lw2, PRECISION) + _dot_t(s2 * x2, lm2, PRECISION)
        out2 -= _dot(md2, d2, PRECISION)
        dout2, dq, dg_, db_ = _readout_bwd(dy, out2, gain, mask_d, D, eps, NORM, RESIDUAL)
        dgain += dg_
        dbias += db_
        dmd2 = -_dot_t(dout2, d2, PRECISION)  # dL/d Mdual_2
        dd2 = -ld2 - _t_dot(md2, dout2, PRECISION)
        tl.debug_barrier()  # pass 2 has read the chunk-end gradient before pass 3 overwrites it
        # pass 3, per tile: back through the retrieval and the update to the first layer's error; the
        # memory's gradient at the chunk start written over that at its end
        dk = tl.full((BLOCK_N, BLOCK_D), 0.0, dt)
        dqa1, dqc1, dq01, ul1, um1 = dk, dk, dk, dk, dk
        dmd1 = tl.full((BLOCK_N, BLOCK_N), 0.0, dt)
        da1_end = _sum(dk, 0)
        dc1_end, de1_end = da1_end, da1_end
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
            out1 = _dot_t(qa1, w1, PRECISION) + _dot_t(qc1, m1, PRECISION) - _dot(md1, d1, PRECISION)
            if TO_INIT:
                out1 += _dot_t(
                    (1.0 - A1) * qq, tl.load(m01_ptr + init + off1, mask=mask1, other=0.0), PRECISION
                )
            z2 = _act(out1, ACT)
            hmask = hid0 + hrows < HID
            A2, c2, md2_t, g2, s2, a2_end, c2_end, e2_end = _coefs(
                gate2 + hid0 * sg2_c, sg2_g, sg2_t, sg2_c, t0, n_tok, rows, hrows, hmask, z2, x2,
                cscr2, BLOCK_N, BLOCK_H, True,
            )  # fmt: skip
            # second layer: retrieval and update
            dza, dzc = _dot(dout2, w2, PRECISION), _dot(dout2, m2, PRECISION)
            dA2, dc2 = z2 * dza, z2 * dzc
            dz2 = A2 * dza + c2 * dzc
            ul2, um2 = _dot(d2, lw2, PRECISION), _dot(d2, lm2, PRECISION)
            dx2 = -(g2 * ul2 + s2 * um2)
            da2_end, dc2_end, de2_end = _sum(lw2 * w2, 0), _sum(lw2 * m2, 0), _sum(lm2 * m2, 0)
            lw2_new = lw2 * a2_end[None, :] + _t_dot(dout2, A2 * z2, PRECISION)
            lm2_new = lw2 * c2_end[None, :] + lm2 * e2_end[None, :] + _t_dot(dout2, c2 * z2, PRECISION)
            if TO_INIT:
                m02 = tl.load(m02_ptr + init + off2, mask=mask2, other=0.0)
                dm02 = tl.load(dm02_ptr + state + off2, mask=mask2, other=0.0)
                dA2_, dz2_, da2_end_, dm02 = _to_init_bwd(dout2, z2, A2, m02, lw2, a2_end, dm02, PRECISION)
                dA2 += dA2_
                dz2 += dz2_
                da2_end += da2_end_
            # first layer: what needs no retrieval gradient (the update), before the gates' backward
            ul1 += _dot(d1, lw1, PRECISION)
            um1 += _dot(d1, lm1, PRECISION)
            dd1 = -_dot_t(g1 * kk, lw1, PRECISION) - _dot_t(s1 * kk, lm1, PRECISION)
            da1_end += _sum(lw1 * w1, 0)
            dc1_end += _sum(lw1 * m1, 0)
            de1_end += _sum(lm1 * m1, 0)
            lw1_new = lw1 * a1_end[None, :]
            lm1_new = lw1 * c1_end[None, :] + lm1 * e1_end[None, :]
            if TO_INIT:
                m01 = tl.load(m01_ptr + init + off1, mask=mask1, other=0.0)
                da1_end -= _sum(lw1 * m01, 0)
                dm01 = lw1 * (1.0 - a1_end)[None, :] + tl.load(dm01_ptr + state + off1, mask=mask1, other=0.0)
            tl.debug_barrier()  # the scratch rows written by _coefs are read by other threads
            dz2_g, dx2_g = _coefs_bwd(
                gate2 + hid0 * sg2_c, sg2_g, sg2_t, sg2_c, dgate2 + hid0 * dg2_c, dg2_g, dg2_t, dg2_c, t0,
                n_tok, rows, hrows, hmask, z2, x2, dA2, dc2, dmd2, -x2 * ul2, -x2 * um2,
                da2_end, dc2_end, de2_end, cscr2, BLOCK_N, BLOCK_H,
            )  # fmt: skip
            tl.debug_barrier()  # read before the next tile's _coefs writes them
            dz2 += dz2_g
            dx2 += dx2_g
            # first layer: retrieval
            dout1 = _act_grad(out1, ACT) * dz2
            dqa1 += _dot(dout1, w1, PRECISION)
            dqc1 += _dot(dout1, m1, PRECISION)
            dmd1 -= _dot_t(dout1, d1, PRECISION)
            lw1_new += _t_dot(dout1, qa1, PRECISION)
            lm1_new += _t_dot(dout1, qc1, PRECISION)
            dd1 -= _t_dot(md1, dout1, PRECISION)
            if TO_INIT:
                dq01 += _dot(dout1, tl.load(m01_ptr + init + off1, mask=mask1, other=0.0), PRECISION)
                dm01 += _t_dot(dout1, (1.0 - A1) * qq, PRECISION)
            # the keys' first error: delta1 = act'(P1) * (delta2 B2)
            dback1 = _act_grad(p1, ACT) * dd1
            dd2 += _dot_t(dback1, kb2, PRECISION)
            dkb2 = _t_dot(d2, dback1, PRECISION)
            # dL/dP1 but for the path through P2, which needs every tile's share of dd2 first (pass 4)
            part = _act_grad2(p1, ACT) * back1 * dd1 + _act_grad(p1, ACT) * dx2
            s_off = scratch + rows[:, None] * HID + (hid0 + hrows)[None, :]
            tl.store(scratch_ptr + s_off, part, mask=hmask[None, :])
            if HAS_BASE:
                dkb2 += tl.load(dbw2_ptr + state + off2, mask=mask2, other=0.0)
            else:
                lw2_new += dkb2
            tl.debug_barrier()  # every thread holding a copy of the tile has read it
            if HAS_BASE:
                tl.store(dbw2_ptr + state + off2, dkb2, mask=mask2)
            if TO_INIT:
                tl.store(dm01_ptr + state + off1, dm01, mask=mask1)
                tl.store(dm02_ptr + state + off2, dm02, mask=mask2)
            tl.store(lw1_ptr + state + off1, lw1_new, mask=mask1)
            tl.store(lm1_ptr + state + off1, lm1_new, mask=mask1)
            tl.store(lw2_ptr + state + off2, lw2_new, mask=mask2)
            tl.store(lm2_ptr + state + off2, lm2_new, mask=mask2)
        tl.debug_barrier()
        # the first layer's coefficients: its retrieval's and update's factors, then the recurrence
        dA1, dc1 = qq * dqa1, qq * dqc1
        dq += A1 * dqa1 + c1 * dqc1
        if TO_INIT:
            dA1 -= qq * dq01
            dq += (1.0 - A1) * dq01
        dk -= g1 * ul1 + s1 * um1
        dz1_g, dx1_g = _coefs_bwd(
            gate1, sg1_g, sg1_t, sg1_c, dgate1, dg1_g, dg1_t, dg1_c, t0, n_tok, rows, cols, mask_d, qq, kk,
            dA1, dc1, dmd1, -kk * ul1, -kk * um1, da1_end, dc1_end, de1_end, cscr1,
            BLOCK_N, BLOCK_D,
        )  # fmt: skip
        dq += dz1_g
        dk += dx1_g
        # the keys' target: kv = 2 gain (k + bias - v)
        dkv, dp2, dw2 = _key_error_bwd(dd2, d2, o_k, r_k, err, wsq, mask_d, D, NORM)
        dtarget = 2.0 * gain[None, :] * dkv
        if RESIDUAL:
            dk += dtarget
        dv = -dtarget
        dbias += _sum(dtarget, 0)
        dgain += _sum(2.0 * target * dkv, 0) + 4.0 * gain * dw2
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
    _add_vec(dnw_ptr + pid.to(tl.int64) * D, dgain, cols, mask_d)
    _add_vec(dnb_ptr + pid.to(tl.int64) * D, dbias, cols, mask_d)
