"""The Triton kernels' shared pieces (triton_kernels.py): reductions, activations, the memory's LayerNorm with
its gain and bias, the inner loss's error at the keys, loads, stores and products, each with its backward
where the kernels need one.

Imported with the kernels (see triton_kernels.py's docstring): everything here is a jit function that calls
Triton's builtins only, so it runs compiled or interpreted as the module was imported.
"""

from __future__ import annotations

import triton
import triton.language as tl

INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


# -- reductions and elementwise pieces ---------------------------------------------------------------------
@triton.jit
def _sum(x, axis: tl.constexpr):
    """tl.sum, spelt as the reduction with its combine function, which the interpreter recognises by
    identity: tl.sum itself is one of the library's jit functions (see triton_kernels.py)."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _row(x, rows, j):
    """Row j of a 2-D tile (rows: its row indices), as a vector along the tile's second axis."""
    return _sum(tl.where((rows == j)[:, None], x, 0.0), 0)


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


# -- the memory's LayerNorm, the inner loss and the readout ------------------------------------------------
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
def _key_target(kk, vv, gain, bias, row_mask, RESIDUAL: tl.constexpr):
    """(kv, target): the part of the inner loss's gradient at the LayerNorm's output that no memory enters,
    kv = 2 gain (target), target = k + bias - v with the residual, bias - v without (gain 1 and bias 0
    when the LN has neither, or without the LN); zero on the rows past the chunk (row_mask False)."""
    if RESIDUAL:
        target = kk + bias[None, :] - vv
    else:
        target = bias[None, :] - vv
    target = tl.where(row_mask[:, None], target, 0.0)
    return 2.0 * gain[None, :] * target, target


@triton.jit
def _key_error(p, kv, w2, mask_d, n_d, eps, NORM: tl.constexpr):
    """The inner loss's gradient at the memory's last pre-activation p, for the keys: (delta, LN output,
    1/std, err) with err = kv + w2 LN(p) (w2 = 2 gain^2, [BLOCK_D]) and delta = LN'(p)^T err; without the
    norm, delta = err = kv + 2 p."""
    if NORM:
        o, rstd = _ln(p, mask_d, n_d, eps)
        err = kv + w2[None, :] * o
        return _ln_bwd(err, o, rstd, mask_d, n_d), o, rstd, err
    else:
        err = kv + 2.0 * p
        return err, p, _sum(p, 1) * 0.0, err


@triton.jit
def _key_error_bwd(dd, delta, o, rstd, err, w2, mask_d, n_d, NORM: tl.constexpr):
    """From dL/d(delta) to (dL/d(kv), dL/dp, dL/d(w2) summed over the rows). With the norm, delta = J(p) err,
    err = kv + w2 o, J = LN's Jacobian: the path through err gives J (w2 J dd), and J's own dependence on p
    gives, with h = -rstd (mean(err o) dd + mean(dd o) err), the term J h - rstd o mean(dd delta)."""
    if NORM:
        dd = tl.where(mask_d[None, :], dd, 0.0)
        derr = _ln_bwd(dd, o, rstd, mask_d, n_d)
        m_eo = _sum(err * o, 1) / n_d
        m_go = _sum(dd * o, 1) / n_d
        m_gd = _sum(dd * delta, 1) / n_d
        h = -rstd[:, None] * (m_eo[:, None] * dd + m_go[:, None] * err)
        dp = _ln_bwd(w2[None, :] * derr + h, o, rstd, mask_d, n_d) - (rstd * m_gd)[:, None] * o
        return derr, dp, _sum(derr * o, 0)
    else:
        return dd, 2.0 * dd, _sum(dd, 0) * 0.0


@triton.jit
def _readout(out, qq, gain, bias, mask_d, n_d, eps, NORM: tl.constexpr, RESIDUAL: tl.constexpr):
    """y = q + gain LN(out) + bias (or without the residual; without the norm, gain 1 and bias 0)."""
    if NORM:
        out = _ln(out, mask_d, n_d, eps)[0] * gain[None, :] + bias[None, :]
    if RESIDUAL:
        out = out + qq
    return out


@triton.jit
def _readout_bwd(dy, out, gain, mask_d, n_d, eps, NORM: tl.constexpr, RESIDUAL: tl.constexpr):
    """(dL/d out, dL/dq from the residual, dL/d gain and dL/d bias summed over the rows)."""
    dout = dy
    dgain = _sum(dy, 0) * 0.0
    dbias = dgain
    if NORM:
        o, rstd = _ln(out, mask_d, n_d, eps)
        dout = _ln_bwd(dy * gain[None, :], o, rstd, mask_d, n_d)
        dgain = _sum(dy * o, 0)
        dbias = _sum(dy, 0)
    if RESIDUAL:
        return dout, dy, dgain, dbias
    else:
        return dout, dy * 0.0, dgain, dbias


# -- loads, stores and products -----------------------------------------------------------------------------
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
def _add_vec(ptr, val, cols, mask):
    """ptr[cols] += val (a program's own slice of a buffer: no other program writes it)."""
    tl.store(ptr + cols, tl.load(ptr + cols, mask=mask, other=0.0) + val, mask=mask)


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


@triton.jit
def _to_init_bwd(dout, x, A, m0, lw, a_end, dm0_before, PRECISION: tl.constexpr):
    """The backward of forgetting toward M0 in one layer's chunk: the readout gained ((1 - A) o X) M0^T and
    the end-of-chunk weights M0 diag(1 - A_end). Returns what it adds to dA, dX and dA_end, and dM0 with
    ``dm0_before`` (the later chunks' share) included."""
    dx0 = _dot(dout, m0, PRECISION)
    dm0 = lw * (1.0 - a_end)[None, :] + _t_dot(dout, (1.0 - A) * x, PRECISION) + dm0_before
    return -x * dx0, (1.0 - A) * dx0, -_sum(lw * m0, 0), dm0


# -- the depth-2 memory's hidden tiles ----------------------------------------------------------------------
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
