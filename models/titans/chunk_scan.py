"""The loop over chunks of chunk.py's memory, forward and backward written by hand (MemoryScan).

chunk.py derives the closed form of one chunk and builds, for all chunks at once, every coefficient that
needs no memory; this file walks the chunks. Per chunk it does only what needs that chunk's memory: the
keys through the memory at the base and back (the errors Delta), retrieval, and the memory at the chunk
end (forward_step); its backward (backward_step) walks the chunks in reverse. What needs no chunk's memory
(the last layer's share of the retrieval's backward, the LayerNorm's second-order operators, d kv) is
formed for all chunks at once, before or after the loop.

Layout. Each layer's memory is one matrix of K row blocks, [W^T; S^T] (K = 2) or [W^T; S^T; M_0^T]
(K = 3, forgetting toward the initial memory M_0, a block that never changes), [K d_in, d_out], so that
retrieval is one matmul ([A z | c z (| (1 - A) z)] against it) and the update one baddbmm; the first
layer's keys and retrieval factors are stacked (lhs0) and meet the memory in one product. Gates are per
layer, each either one scalar per head (C = 1) or one value per input channel (C = d_in, a row of W^T);
every coefficient carries that trailing C. With C = 1 every step is the same sequence of kernels as before
per-channel gates existed; with C = d_in the dual form's token-pair matrix -G * (z x^T) becomes
-sum_c G[:, :, c] z_c x_c (_dual_form), the only product that is not a broadcast.

The chunk steps can be compiled (``compiled=True``): their shapes are fixed, so they compile once whatever
the sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .naive import LN_EPS

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_grad2(h: Tensor) -> Tensor:
    # second derivative of the exact gelu h Phi(h): phi(h) (2 - h^2)
    return torch.exp(-0.5 * h * h).mul_(INV_SQRT_2PI).mul_(2.0 - h * h)


def _silu_grad2(h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1.0 - s) * (2.0 + h * (1.0 - 2.0 * s))


# activation name (as in naive.ACTIVATIONS) -> (f(h), g * f'(h), f''(h)). The middle one is ATen's fused
# backward kernel: one pass instead of the half a dozen that spelling f' out takes.
ACT_FNS = {
    "gelu": (F.gelu, torch.ops.aten.gelu_backward, _gelu_grad2),
    "silu": (F.silu, torch.ops.aten.silu_backward, _silu_grad2),
}

# Inductor records its generated CPU kernels in the profiler only with this flag (a check per kernel call
# when no profiler runs), which the launch counter (bench.measure.launches) needs to count them.
COMPILE_OPTIONS = {"cpp.enable_kernel_profile": True}
_COMPILED: dict[str, Callable] = {}


def _compiled(name: str) -> Callable:
    """The chunk step ("forward" or "backward") compiled once: fixed shapes, no graph breaks."""
    if name not in _COMPILED:
        fn = {"forward": forward_step, "backward": backward_step}[name]
        _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=False, options=COMPILE_OPTIONS)
    return _COMPILED[name]


def _per_channel(neg_g: Tensor, like: Tensor) -> bool:
    """Whether a layer's -G carries a channel dimension beyond like's (a token-pair matrix per channel)."""
    return neg_g.dim() > like.dim()


def _dual_form(neg_g: Tensor, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """m[j, i] = -sum_c G[j, i, c] z[j, c] x[i, c] for z, x [..., n, C]: with one G per token pair (neg_g
    [..., n, n]) that is -G * (z x^T), returned with z x^T; per channel (neg_g [..., n, n, C]) the product
    with x, then with z, and no z x^T."""
    if not _per_channel(neg_g, z):
        pz = torch.bmm(z, x.mT) if z.dim() == 3 else z @ x.mT  # bmm: matmul's reshapes cost a dispatch each
        return neg_g * pz, pz
    return ((neg_g * x.unsqueeze(-3)) @ z.unsqueeze(-1)).squeeze(-1), None


def _retrieval_terms(dout, delta, m, pz, z, x, neg_g, dneg_out=None):
    """For out = zac [W^T; S^T] + m delta with m = _dual_form(neg_g, z, x): the gradients w.r.t. delta and
    m (the first layer, z None) or, else, w.r.t. delta, neg_g, x, and m's share of the gradient w.r.t. z.
    Batched or per chunk alike. dneg_out: where to write the gradient w.r.t. a per-channel neg_g (it is
    n times larger than the rest: written once into its place rather than gathered afterwards)."""
    dm = dout @ delta.mT
    if z is None:
        return m.mT @ dout, dm, None, None
    if not _per_channel(neg_g, z):
        dpz = dm * neg_g
        return m.mT @ dout, dm * pz, dpz.mT @ z, dpz @ x
    zd = dm.unsqueeze(-1) * z.unsqueeze(-2)  # [..., j, i, C]: dm[j, i] z[j, c]
    dz = (dm.unsqueeze(-2) @ (neg_g * x.unsqueeze(-3))).squeeze(-2)
    return m.mT @ dout, torch.mul(zd, x.unsqueeze(-3), out=dneg_out), (zd * neg_g).sum(-3), dz


def forward_step(ws, base, new_ws, lhs0, kv, xgs0_t, m0, w2, layers, activation: str, norm: bool):
    """One chunk: the inner loss's errors at the base weights, retrieval, and the memory at the chunk end.

    ws: per layer [N, K d_in, d_out], the memory's row blocks at the chunk start. base: per layer W_b^T
    [N, d_in, d_out] for a chunk begun in an earlier call, None when the base is W. new_ws: per layer a
    tensor like ws to write the memory at the chunk end into, or None for new ones. lhs0: [N, 2 n, K D],
    [[k | 0]; [A q | c q (| (1 - A) q)]], the keys and the first layer's retrieval factors, which meet the
    memory in one product. kv: [N, n, D], the part of the inner loss's gradient at the LayerNorm's output
    (or the memory's output, without it) that does not depend on the memory: 2 (k - v) (residual) or -2 v,
    times the gain and with the bias, so that the gradient is kv + w2 o (kv + 2 o without a gain).
    xgs0_t: [N, 2 D, n] = -[g k | s k]^T, the first layer's update factor (g = G[n-1, :] and s from
    chunk_coefficients). m0: [N, n, n], the first layer's _dual_form of q and k. w2: [N, 1, D], 2 gain^2,
    or None (no gain). layers: per layer (ae, cross, ac, gs, neg_g): ae [N, K d_in, 1], the end-of-chunk
    factor of each memory row (A_{n-1} on W^T, E_{n-1} on S^T, 1 on M_0^T); cross, the other blocks'
    shares in W'^T, (c_{n-1} (, 1 - A_{n-1} toward M_0)), each [N, C, 1]; for the layers after the first
    (None for the first, whose factors lhs0, xgs0 and m0 hold) ac [N, n, K, C] = (A, c (, 1 - A)),
    gs [N, n, 2, C] = -(g, s) and neg_g, -G, [N, n, n] (C = 1) or [N, n, n, C].
    Returns the memory at the chunk end and what the retrieval and the backward need: per layer the key
    pre-activations p_i, the layer inputs x_i (i >= 1), the errors delta_i, m_i = delta_{i+1} W_{i+1}
    (i < L - 1), the keys' LayerNorm (output, mean, 1/std, error) when ``norm``, the update factors
    -[g x_i | s x_i] (i >= 1), and the retrieval's out_i, z_i = act(out_{i-1}), zac_i = [A z_i | c z_i ..],
    z_i x_i^T (one G per token pair) and the dual form m_i (i >= 1); the last out_i is the retrieval
    before its LayerNorm.
    """
    act, act_bwd, _ = ACT_FNS[activation]
    n, D = lhs0.shape[1] // 2, kv.shape[-1]
    K = lhs0.shape[2] // D
    blocks = [w.split(w.shape[1] // K, dim=1) for w in ws]  # (W^T, S^T (, M_0^T))
    bt = [b[0] for b in blocks] if base is None else base
    if base is None:  # the keys at the base and the first layer's retrieval in one product
        p0, r0 = torch.bmm(lhs0, ws[0]).split(n, dim=1)
    else:
        p0, r0 = torch.bmm(lhs0[:, :n, :D], base[0]), torch.bmm(lhs0[:, n:], ws[0])
    xs, ps = [lhs0[:, :n, :D]], [p0]
    for i in range(1, len(ws)):
        xs.append(act(ps[-1]))
        ps.append(torch.bmm(xs[-1], bt[i]))
    p = ps[-1]
    if norm:
        # ATen's fused LayerNorm kernels, forward and backward, each one call instead of half a dozen
        o, mean, rstd = torch.native_layer_norm(p, p.shape[-1:], None, None, LN_EPS)
        err = torch.add(kv, o, alpha=2.0) if w2 is None else torch.addcmul(kv, w2, o)
        delta = torch.ops.aten.native_layer_norm_backward(
            err, p, p.shape[-1:], mean, rstd, None, None, [True, False, False]
        )[0]
        ln_k = (o, mean, rstd, err)
    else:
        delta, ln_k = torch.add(kv, p, alpha=2.0), ()
    deltas, ms = [delta], []
    for i in range(len(ws) - 2, -1, -1):
        ms.insert(0, torch.bmm(deltas[0], bt[i + 1].mT))
        deltas.insert(0, act_bwd(ms[0], ps[i]))

    # Retrieval by the dual form: out_i = zac_i [W^T; S^T ..] + m_i delta_i, z_0 = q, z_{i+1} = act(out_i).
    outs, zs, zacs, pzs, m_ret = [torch.baddbmm(r0, m0, deltas[0])], [None], [None], [None], [None]
    for i in range(1, len(ws)):
        _, _, ac, _, neg_g = layers[i]
        zs.append(act(outs[-1]))
        zacs.append((ac * zs[i].unsqueeze(-2)).flatten(-2))
        m, pz = _dual_form(neg_g, zs[i], xs[i])
        pzs.append(pz)
        m_ret.append(m)
        outs.append(torch.bmm(zacs[i], ws[i]).baddbmm_(m, deltas[i]))

    # W'^T = A W^T + c S^T (+ (1 - A) M_0^T) - (g x)^T delta,  S'^T = E S^T - (s x)^T delta
    xgs = [(layers[i][3] * xs[i].unsqueeze(-2)).flatten(-2) for i in range(1, len(ws))]
    new_ws = new_ws or [None] * len(ws)
    for i, w in enumerate(ws):
        ae, cross = layers[i][:2]
        d = w.shape[1] // K
        new_ws[i] = torch.mul(ae, w) if new_ws[i] is None else torch.mul(ae, w, out=new_ws[i])
        for b in range(1, K):
            new_ws[i][:, :d].addcmul_(cross[b - 1], blocks[i][b])
        written = new_ws[i] if K == 2 else new_ws[i][:, : 2 * d]
        written.baddbmm_(xgs0_t if i == 0 else xgs[i - 1].mT, deltas[i])
    return new_ws, (ps, xs[1:], deltas, ms, ln_k, xgs, outs, zs, zacs, pzs, m_ret)


def backward_step(lam, new_lam, last, ws, base, lhs0, xgs0, m0, layers, fwd, h, ln_ops,
                  activation: str, norm: bool):  # fmt: skip
    """One chunk of the backward, from dL/d(memory) at the chunk end to that at its start.

    lam: per layer dL/d(memory) [N, K d_in, d_out] at the chunk end; new_lam: per layer a tensor like lam
    to write the gradient at the chunk start into, or None for new ones. last: the last layer's dL/dout
    and _retrieval_terms, formed for all chunks at once. ws, base, lhs0, m0: as in forward_step; xgs0:
    [N, n, 2 D]; layers: as in forward_step, with ac and gs per token: [N n, 1, K] and [N n, 1, 2] (C = 1)
    or [N n, K, C] and [N n, 2, C]; fwd: forward_step's; h: per layer i < L - 1, m_i act''(p_i); ln_ops:
    the keys' LayerNorm's second-order operators (MemoryScan).
    Returns dL/d(memory at the chunk start), this chunk's gradients w.r.t. (lhs0, the last layer's error
    (for d kv), xgs0, m0 (layers before the last only), and per layer the end-of-chunk coefficients
    [N, K, K] (C = 1) or [N, K, K, C], ac, gs and neg_g (None where they do not apply)) and, when base is
    given, dL/dW_b^T per layer.
    """
    _, act_bwd, _ = ACT_FNS[activation]
    ps, xs, deltas, ms, ln_k, xgs, outs, zs, zacs, pzs, m_ret = fwd
    L = len(lam)
    N, n = deltas[0].shape[:2]
    D = deltas[-1].shape[-1]
    K = lhs0.shape[2] // D
    xs, xgs, zacs, m_ret = [None, *xs], [xgs0, *xgs], [lhs0[:, n:], *zacs[1:]], [m0, *m_ret[1:]]
    d_ins = [w.shape[1] // K for w in ws]
    bt = [w[:, :d] for w, d in zip(ws, d_ins, strict=True)] if base is None else base
    # the rows the update's -[g x | s x]^T delta writes: W^T and S^T
    lam_w = [lm if K == 2 else lm[:, : 2 * d] for lm, d in zip(lam, d_ins, strict=True)]

    # Retrieval, last layer first: out_i = zac_i [W^T; S^T ..] + m_i delta_i, zac_i = (A z_i, c z_i ..),
    # z_i = act(out_{i-1}). The errors also feed the update (rows += xgs_i^T delta_i), and the layer
    # inputs the update's xgs_i = -(g, s) x_i.
    dout, terms = last[0], last[1:]
    douts, gd, gx = [None] * L, [None] * L, [None] * L
    dm0, dac, dgs, dneg = None, [None] * L, [None] * L, [None] * L
    for i in range(L - 1, -1, -1):
        _, _, ac_tok, gs_tok, neg_g = layers[i]
        if i < L - 1:
            terms = _retrieval_terms(dout, deltas[i], m_ret[i], pzs[i], zs[i], xs[i], neg_g)
        ddelta, dm, dx, dz = terms
        douts[i] = dout
        gd[i] = torch.baddbmm(ddelta, xgs[i], lam_w[i])
        if i == 0:
            dm0 = dm if L > 1 else None  # with one layer it was formed for all chunks at once
            break
        if i < L - 1:
            dneg[i] = dm
        dzac = torch.bmm(dout, ws[i].mT).view(N * n, K, -1)
        dxgs = torch.bmm(deltas[i], lam_w[i].mT).view(N * n, 2, -1)
        if not _per_channel(neg_g, dout):  # one coefficient per token: sums over the channels
            dac[i] = torch.bmm(dzac, zs[i].view(N * n, -1, 1))
            dgs[i] = torch.bmm(dxgs, xs[i].view(N * n, -1, 1))
            gx[i] = torch.baddbmm(dx.view(N * n, 1, -1), gs_tok, dxgs).view(N, n, -1)
            dz_all = torch.bmm(ac_tok, dzac).view(N, n, -1).add_(dz)
        else:
            dac[i], dgs[i] = dzac * zs[i].view(N * n, 1, -1), dxgs * xs[i].view(N * n, 1, -1)
            gx[i] = (gs_tok * dxgs).sum(1).view(N, n, -1).add_(dx)
            dz_all = (ac_tok * dzac).sum(1).view(N, n, -1).add_(dz)
        dout = act_bwd(dz_all, outs[i - 1])

    # Back through the inner gradient: delta_i = act'(p_i) * (delta_{i+1} W_{i+1}), first layer first.
    # Every gradient w.r.t. a memory is a sum of token products left^T right: the retrieval's, and, when
    # the memory is the base, the keys' (padded with zeros on the other row blocks).
    left: list[list[Tensor]] = [[zacs[i]] for i in range(L)]
    right: list[list[Tensor]] = [[douts[i]] for i in range(L)]
    keys: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(L)]
    for i in range(L - 1):
        gm = act_bwd(gd[i], ps[i])
        gd[i + 1].baddbmm_(gm, bt[i + 1])
        keys[i + 1].append((gm, deltas[i + 1]))
    gp: list = [None] * L
    if norm:  # delta = J^T (kv + w2 LN(p)): linear in the incoming gradient, see MemoryScan
        B3, V, beta = ln_ops
        g = gd[-1].view(N * n, 1, -1)
        gp[-1] = torch.baddbmm(beta * g, torch.bmm(g, B3), V).view(N, n, -1)
    else:
        gp[-1] = 2.0 * gd[-1]
    # The keys' forward at the base, last layer first: p_i = x_i W_b_i^T.
    for i in range(L - 1, 0, -1):
        keys[i].append((xs[i], gp[i]))
        gx[i].baddbmm_(gp[i], bt[i].mT)
        gp[i - 1] = torch.addcmul(act_bwd(gx[i], ps[i - 1]), gd[i - 1], h[i - 1])
    # the first layer: lhs0 = [[k | 0]; zac_0] against [dp_0; dout_0] is the keys' and the retrieval's
    d_right0 = torch.cat([gp[0], douts[0]], dim=1)
    if base is None:
        left[0], right[0] = [lhs0], [d_right0]
    else:
        left[0], right[0] = [lhs0[:, n:]], [douts[0]]
        keys[0].append((lhs0[:, :n, :D], gp[0]))

    new_lam = new_lam or [None] * L
    dmix, dbase = [None] * L, []
    for i in range(L):
        ae, cross = layers[i][:2]
        d = d_ins[i]
        if base is None:
            for lt, rt in keys[i]:
                left[i].append(F.pad(lt, (0, (K - 1) * d)))
                right[i].append(rt)
        else:
            dbase.append(sum(torch.bmm(lt.mT, rt) for lt, rt in keys[i]))
        # back through W'^T = A W^T + c S^T (+ (1 - A) M_0^T) + ...,  S'^T = E S^T + ...
        out = new_lam[i]
        new_lam[i] = torch.mul(ae, lam[i]) if out is None else torch.mul(ae, lam[i], out=out)
        for b in range(1, K):
            new_lam[i][:, b * d : (b + 1) * d].addcmul_(cross[b - 1], lam[i][:, :d])
        lt = left[i][0] if len(left[i]) == 1 else torch.cat(left[i], dim=1)
        rt = right[i][0] if len(right[i]) == 1 else torch.cat(right[i], dim=1)
        new_lam[i].baddbmm_(lt.mT, rt)
        # the end-of-chunk coefficients: <dL/d block r at the end, block s at the start>, per channel or not
        if cross[0].shape[-2] == 1:
            dmix[i] = torch.bmm(lam[i].view(N, K, -1), ws[i].view(N, K, -1).mT)
        else:
            dmix[i] = _mix_grad(lam[i].view(N, K, d, -1), ws[i].view(N, K, d, -1))
    # dL/dlhs0: the keys' rows (through the base) and the retrieval's zac_0 rows
    d_lhs0 = torch.bmm(d_right0, ws[0].mT)
    if base is not None:
        d_lhs0[:, :n, :D] = torch.bmm(gp[0], bt[0].mT)
    dxgs0 = torch.bmm(deltas[0], lam_w[0].mT)
    return new_lam, (d_lhs0, gd[-1], dxgs0, dm0, dmix, dac, dgs, dneg), dbase


def _mix_grad(lam: Tensor, w: Tensor) -> Tensor:
    """dL/d(end-of-chunk coefficients) per channel: lam, w [N, K, C, d_out] (dL/d(memory) at the chunk end,
    the memory at its start, by row block) -> [N, K, K, C], <lam block r, w block s> summed over d_out.
    One broadcast product (K^2 times the memory's size, in cache at these sizes) and one sum: an einsum
    copied both operands into K x d_out blocks per channel for thousands of tiny matmuls, four times slower
    on the CPU (though it counts as fewer operator calls)."""
    return (lam.unsqueeze(2) * w.unsqueeze(1)).sum(-1)


def _decays(mix: Tensor, d_in: int) -> Tensor:
    """A layer's end-of-chunk coefficients [n_chunks, N, K, K, C] -> the diagonal on the memory's rows,
    [n_chunks, N, K d_in, 1]."""
    diag = mix.diagonal(dim1=-3, dim2=-2).mT  # [n_chunks, N, K, C]
    return diag.expand(*diag.shape[:-1], d_in).flatten(-2).unsqueeze(-1)


def _crosses(mix: Tensor) -> list[tuple[Tensor, ...]]:
    """A layer's end-of-chunk coefficients [n_chunks, N, K, K, C] -> per chunk the other blocks' shares in
    W'^T, (c_{n-1} (, 1 - A_{n-1})), each [N, C, 1]."""
    blocks = [mix[..., 0, b, :].unsqueeze(-1).unbind(0) for b in range(1, mix.shape[-2])]
    return list(zip(*blocks, strict=True))


def _layer_chunks(mixes, acs, gss, negs, d_ins) -> list[list[tuple]]:
    """Per chunk, per layer, forward_step's (ae, cross, ac, gs, neg_g) (the last three None for the first
    layer), sliced once for all chunks."""
    per_layer = [zip(_decays(mixes[0], d_ins[0]).unbind(0), _crosses(mixes[0]), strict=True)]
    for i in range(1, len(mixes)):
        slices = (_decays(mixes[i], d_ins[i]), acs[i - 1], gss[i - 1], negs[i - 1])
        first, *rest = (t.unbind(0) for t in slices)
        per_layer.append(zip(first, _crosses(mixes[i]), *rest, strict=True))
    first_layer = [(ae, cross, None, None, None) for ae, cross in per_layer[0]]
    return [list(layers) for layers in zip(first_layer, *per_layer[1:], strict=True)]


def _split_layers(rest, L: int):
    """MemoryScan's per-layer inputs (mixes, then acs, gss, negs of the layers after the first, then ws,
    then base) as lists."""
    mixes, acs, gss, negs = (
        list(rest[:L]),
        list(rest[L : 2 * L - 1]),
        list(rest[2 * L - 1 : 3 * L - 2]),
        list(rest[3 * L - 2 : 4 * L - 3]),
    )
    ws, base = list(rest[4 * L - 3 : 5 * L - 3]), list(rest[5 * L - 3 :]) or None
    return mixes, acs, gss, negs, ws, base


def _scan(config, lhs0, kv, xgs0, m0, w2, mixes, acs, gss, negs, ws, base, keep: bool):
    """forward_step over the chunks (inputs as in MemoryScan). Returns the retrievals before the
    residual, [n_chunks, N, n, D], per layer the memory after the last chunk, and, if ``keep``, what the
    backward needs: per chunk the memory at its start and forward_step's tensors, and the retrieval's
    LayerNorm statistics."""
    L, activation, norm, has_base, compiled = config
    # the same tensor properties for every chunk, so that a compiled step is not compiled again
    ws, base = [w.detach() for w in ws], base and [b.detach() for b in base]
    K = lhs0.shape[-1] // kv.shape[-1]
    d_ins = [w.shape[1] // K for w in ws]
    layer_chunks = _layer_chunks(mixes, acs, gss, negs, d_ins)
    per_chunk = zip(*(t.unbind(0) for t in (lhs0, kv, xgs0.mT, m0)), strict=True)
    # Without a backward, two memories per layer take turns (eagerly; a compiled step makes its own).
    spare = [[torch.empty_like(w) for w in ws] for _ in range(2)] if not (keep or compiled) else None
    outs, starts, saved = [], [], []
    for j, (lhs0_j, kv_j, xgs0_j, m0_j) in enumerate(per_chunk):
        b = base if j == 0 else None
        step = _compiled("forward") if compiled and b is None else forward_step
        new = spare and spare[j % 2]
        new, fwd = step(ws, b, new, lhs0_j, kv_j, xgs0_j, m0_j, w2, layer_chunks[j], activation, norm)
        outs.append(fwd[6][-1])
        if keep:
            starts.append(ws)
            saved.append(fwd)
        ws = new
    out = torch.stack(outs)
    if not norm:
        return out, ws, starts, saved, ()
    y, mean, rstd = torch.native_layer_norm(out, out.shape[-1:], None, None, LN_EPS)
    return y, ws, starts, saved, (out, mean, rstd)


def _ln_second_order(out: Tensor, rstd: Tensor, err: Tensor, w2: Tensor | None):
    """(B, V, beta) of MemoryScan's LayerNorm term, for tensors [..., D] of LN outputs, 1/std and errors
    and the error's weight on the outputs, w2 (None: 2)."""
    D = out.shape[-1]
    rho2 = rstd * rstd
    err_c = err - err.mean(-1, keepdim=True)
    e_o = (err * out).sum(-1, keepdim=True)
    if w2 is None:
        o_o = (out * out).sum(-1, keepdim=True)
        beta = rho2 * (2.0 - e_o / D)
        B = torch.stack([torch.full_like(out, 1.0 / D), out, err_c], dim=-1)
        v_o = rho2 / D * ((3.0 * e_o / D - 4.0 + 2.0 * o_o / D) * out - err_c)
        V = torch.stack([-beta.expand_as(out), v_o, -rho2 / D * out], dim=-2)
        return B, V, beta

    def project(x: Tensor) -> Tensor:  # (I - 11^T/D - o o^T/D) x
        return x - x.mean(-1, keepdim=True) - out * ((out * x).sum(-1, keepdim=True) / D)

    w2 = w2.expand_as(out)
    wo = w2 * out
    beta = rho2 * (w2 - e_o / D)
    B = torch.stack([torch.full_like(out, 1.0 / D), out, err_c + wo, w2], dim=-1)
    V = torch.stack(
        [
            rho2 * (e_o / D - project(w2)),
            rho2 / D * (3.0 * e_o / D * out - project(wo) - err_c),
            -rho2 / D * out,
            (-rho2 / D).expand_as(out),
        ],
        dim=-2,
    )
    return B, V, beta


class MemoryScan(torch.autograd.Function):
    """The chunked memory over a run of n_chunks chunks of n tokens, with its backward written by hand.

    Inputs (N = batch * heads; chunk-major, so that each chunk's slice is contiguous): config = (n_layers L,
    activation, norm, has_base, compiled); lhs0 [n_chunks, N, 2 n, K D], kv, xgs0, m0 as in forward_step
    with a leading chunk dimension; w2 [N, 1, D] or None; then per layer the end-of-chunk coefficients
    mix [n_chunks, N, K, K, C], [[A, c (, 1 - A)], [0, E (, 0)] (, [0, 0, 1])] (only the first row and the
    diagonal are used); for the layers after the first, ac [n_chunks, N, n, K, C], gs [n_chunks, N, n, 2, C]
    and neg_g [n_chunks, N, n, n (, C)]; then per layer the memory [N, K d_in, d_out] at the first chunk's
    start and, if has_base, the base W_b^T of a first chunk begun earlier. Outputs: the retrievals before
    the residual (after the LayerNorm when ``norm``, before its gain), [n_chunks, N, n, D], and per layer
    the memory after the last chunk.

    Forward: forward_step per chunk, then the retrieval's LayerNorm for all chunks at once. Backward:
    backward_step per chunk in reverse, carrying dL/d(memory) from each chunk's end to its start. Whatever
    needs no chunk's memory is formed for all chunks at once, before the loop (the last layer's share of
    the retrieval's backward, m_i act''(p_i), the keys' LayerNorm operators below) or after it (d kv, d w2).

    The keys' LayerNorm's second order. With o = LN(p), rho = 1/std, P = I - 11^T/D - o o^T/D, J = rho P
    (symmetric) and err = kv + w2 o, the forward takes delta = J err. A gradient g at delta reaches kv as
    J g, w2 as o * (J g), and p as J (w2 * J g) (through err) plus the derivative of <g, J(p) err> with err
    held (J's own dependence on p),
        -rho^2 / D (<o, err> g + <g, err_c> o - <o, err> mean(g) 1 - 3 <o, err> <g, o> o / D + <g, o> err_c),
    err_c = err - mean(err). Both are linear in g and see it, beyond a per-channel multiple beta * g, only
    through a few inner products t = g B:
        dp = beta g + t V,   beta = rho^2 (w2 - <o, err> / D),
        B = (1/D, o, err_c + w2 o, w2),
        V = (rho^2 (<o, err>/D - P w2),  rho^2/D (3 <o, err>/D o - P(w2 o) - err_c),  -rho^2/D o,  -rho^2/D),
    so per chunk it costs one bmm and one baddbmm. Without a gain (w2 = 2) the last two columns fold into
    the first three (P 1 = 0, P o = o (1 - |o|^2/D)), as _ln_second_order does.
    """

    @staticmethod
    def forward(ctx, config, lhs0, kv, xgs0, m0, w2, *rest):
        L = config[0]
        mixes, acs, gss, negs, ws, base = _split_layers(rest, L)
        y, finals, starts, saved, ln_q = _scan(
            config, lhs0, kv, xgs0, m0, w2, mixes, acs, gss, negs, ws, base, keep=True
        )
        ctx.config, ctx.starts, ctx.per_chunk, ctx.ln_q = config, starts, saved, ln_q
        ctx.save_for_backward(lhs0, xgs0, m0, w2, *mixes, *acs, *gss, *negs, *(base or ()))
        return (y, *finals)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *dfinals):
        L, activation, norm, has_base, compiled = ctx.config
        lhs0, xgs0, m0, w2, *rest = ctx.saved_tensors
        mixes, acs, gss, negs = rest[:L], rest[L : 2 * L - 1], rest[2 * L - 1 : 3 * L - 2], rest[3 * L - 2 :]
        base = negs[L - 1 :] or None
        negs = negs[: L - 1]
        dy, dfinals = dy.contiguous(), [g.contiguous() for g in dfinals]  # the layouts the steps expect
        n_chunks, N, n, D = dy.shape
        K = lhs0.shape[-1] // D
        d_ins = [w.shape[1] // K for w in ctx.starts[0]]
        _, _, act_grad2 = ACT_FNS[activation]

        # For all chunks at once: what the backward needs that no memory enters. fields: forward_step's
        # tensors, each per layer, each per chunk.
        fields = [[list(t) for t in zip(*f, strict=True)] for f in zip(*ctx.per_chunk, strict=True)]
        ps, xs, deltas, ms, ln_k, _, _, zs, _, pzs, m_ret = fields
        hs = [
            (torch.stack(m) * act_grad2(torch.stack(p))).unbind(0) for m, p in zip(ms, ps[:-1], strict=True)
        ]
        ln_ops = [()] * n_chunks
        if norm:
            o_k, _, rstd_k, err = (torch.stack(t) for t in ln_k)
            B, V, beta = _ln_second_order(o_k, rstd_k, err, w2)
            ln_ops = list(zip(*(t.flatten(1, 2).unbind(0) for t in (B, V, beta.unsqueeze(-2))), strict=True))
        dout = dy  # the retrieval's last layer, before its LayerNorm
        if norm:
            out_q, mean_q, rstd_q = ctx.ln_q
            dout = torch.ops.aten.native_layer_norm_backward(
                dy, out_q, out_q.shape[-1:], mean_q, rstd_q, None, None, [True, False, False]
            )[0]
        # With gates per channel the last layer's terms are n times larger: per chunk, while in cache.
        late = L > 1 and _per_channel(negs[-1], dout)
        if L == 1:
            last = _retrieval_terms(dout, torch.stack(deltas[0]), m0, None, None, None, None)
        elif not late:
            z, x = torch.stack(zs[-1]), torch.stack(xs[-1])
            pz = None if pzs[-1][0] is None else torch.stack(pzs[-1])
            last = _retrieval_terms(dout, torch.stack(deltas[-1]), torch.stack(m_ret[-1]), pz, z, x, negs[-1])
        if late:
            negs_last, douts_last = negs[-1].unbind(0), dout.unbind(0)
            last, dneg_last = [None] * n_chunks, torch.empty_like(negs[-1])
        else:
            dneg_last = last[1]
            columns = (t.unbind(0) if t is not None else [None] * n_chunks for t in (dout, *last))
            last = list(zip(*columns, strict=True))
        # ac and gs per token: [N n, 1, K] with one coefficient per head, [N n, K, C] per channel
        ac_tok, gs_tok = (
            [t.view(n_chunks, N * n, 1, -1) if t.shape[-1] == 1 else t.flatten(1, 2) for t in group]
            for group in (acs, gss)
        )
        layer_chunks = _layer_chunks(mixes, ac_tok, gs_tok, negs, d_ins)
        per_chunk = list(zip(*(t.unbind(0) for t in (lhs0, xgs0, m0)), strict=True))

        # dL/d(memory) needs only the latest chunk's: eagerly, two per layer take turns
        spare = None if compiled else [[torch.empty_like(g) for g in dfinals] for _ in range(2)]
        lam, grads, dbase = list(dfinals), [], None
        for j in reversed(range(n_chunks)):
            b = base if has_base and j == 0 else None
            step = _compiled("backward") if compiled and b is None else backward_step
            new = spare and spare[j % 2]
            h_j = [h[j] for h in hs]
            lhs0_j, xgs0_j, m0_j = per_chunk[j]
            if late:
                terms = _retrieval_terms(douts_last[j], deltas[-1][j], m_ret[-1][j], None, zs[-1][j],
                                         xs[-1][j], negs_last[j], dneg_out=dneg_last[j])  # fmt: skip
                last[j] = (douts_last[j], *terms)
            lam, g, db = step(lam, new, last[j], ctx.starts[j], b, lhs0_j, xgs0_j, m0_j, layer_chunks[j],
                              ctx.per_chunk[j], h_j, ln_ops[j], activation, norm)  # fmt: skip
            grads.append(g)
            dbase = db or dbase

        # For all chunks at once: the gradients gathered per chunk, the last layer's, and d kv (and d w2)
        # through the keys' LayerNorm.
        grads = grads[::-1]
        d_lhs0, gd, dxgs0 = (torch.stack([g[f] for g in grads]) for f in range(3))
        dm0 = dneg_last if L == 1 else torch.stack([g[3] for g in grads])
        dmixes = [torch.stack([g[4][i] for g in grads]).view(mixes[i].shape) for i in range(L)]
        dacs, dgss = (
            [torch.stack([g[f][i] for g in grads]).view(like[i - 1].shape) for i in range(1, L)]
            for f, like in ((5, acs), (6, gss))
        )
        dnegs = [torch.stack([g[7][i] for g in grads]) for i in range(1, L - 1)] + [dneg_last] * (L > 1)
        dw2 = None
        if norm:  # kv enters delta = J^T (kv + w2 LN(p)) through J^T, symmetric
            p, mean_k, rstd_k = torch.stack(ps[-1]), torch.stack(ln_k[1]), torch.stack(ln_k[2])
            gd = torch.ops.aten.native_layer_norm_backward(
                gd, p, p.shape[-1:], mean_k, rstd_k, None, None, [True, False, False]
            )[0]
            if w2 is not None:
                dw2 = (o_k * gd).sum((0, 2)).unsqueeze(1)
        return (None, d_lhs0, gd, dxgs0, dm0, dw2, *dmixes, *dacs, *dgss, *dnegs, *lam,
                *(dbase if has_base else ()))  # fmt: skip
