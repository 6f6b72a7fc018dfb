"""Chunked Titans neural memory: the results of naive.py's per-token loop without a weight copy per token.

Why a chunk has a closed form. Inside a chunk of b tokens (j = 0..b-1) every gradient u_i is taken at the
chunk's base weights W, so all b of them come from one batched forward and backward of the memory MLP on the
chunk's keys. What is left is a linear recurrence. Write E_j and A_j for the products of eta and of
(1 - alpha) from the chunk start to token j, and S_prev for the momentum carried in. Unrolling
S_j = eta_j S_{j-1} - theta_j u_j and M_j = (1 - alpha_j) M_{j-1} + S_j gives

    S_j = E_j S_prev - sum_{i<=j} theta_i (E_j / E_i) u_i
    M_j = A_j W + c_j S_prev - sum_{i<=j} G[j, i] u_i
    c_j = sum_{r<=j} (A_j / A_r) E_r,      G[j, i] = theta_i sum_{r=i..j} (A_j / A_r) (E_r / E_i)

Ratios of vanishing products are never formed: with the interval products P[j, r] = prod_{r<m<=j} g_m,
built as exp of differences of cumulative log-sums (DecayProducts), G = (P_A @ P_E) * theta (column-wise)
and c = P_A @ E, and every entry lies in [0, 1].

Per layer the gradient is an outer product, u_i = delta_i x_i^T, with x_i the layer's input and delta_i the
error at its output, both computed on key k_i at W (last layer: delta = 2 (M(k_i) - v_i), through the
LayerNorm's Jacobian when ``norm``; earlier layers: back through W^T and act'). Retrieval therefore needs no
per-token weights: with Z the layer's inputs on the queries (q for the first layer, act of the previous
layer's output after it), the "dual form"

    OUT = A * (Z W^T) + c * (Z S_prev^T) - (G * (Z X^T)) Delta

is matmuls only, and the chunk ends with W' = A_{b-1} W + c_{b-1} S_prev - Delta^T diag(G[b-1, :]) X and
S' = E_{b-1} S_prev - Delta^T diag(theta_i E_{b-1} / E_i) X. Only the loop over chunks is sequential; the
tests hold this to the per-token reference in float64, gradients included.

How it runs. Each PyTorch call costs a dispatch (a kernel launch on a GPU) however little it computes. The
loop over chunks (MemoryScan) does per chunk only what needs that chunk's memory: the keys through the memory
at the base and back (the errors Delta), retrieval, and the memory at the chunk end (forward_step); its
backward, written by hand (backward_step), walks the chunks in reverse. What needs no memory (the coefficients
above, the first layer's key and query factors, the LayerNorm's second-order operators) is computed for all
chunks at once, before or after the loop. Retrieval does not feed the recurrence and could be batched over
chunks too, but only from every chunk's memory in one tensor: on the CPU, a product with a memory still in
cache was faster than that tensor's traffic. Each layer's memory is one matrix [W^T; S^T] of shape
[2 d_in, d_out], so that retrieval is one matmul ([A z | c z] against it) and the update one baddbmm; the
first layer's keys and retrieval factors are stacked (lhs0) and meet the memory in one product. The chunk
steps can be compiled (``compiled=True``): their shapes are fixed, so they compile once whatever the
sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.modules.dtypes import compute_dtype

from .naive import LN_EPS, MemoryState, get_activation, initial_state

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


class DecayProducts(torch.autograd.Function):
    """Products of gates over every token interval of a chunk.

    g: [..., n] -> P: [..., n + 1, n + 1] with P[j, r] = prod_{r < m <= j} g_m for r <= j (tokens numbered
    1..n, so column 0 means "from the chunk start"), and 0 above the diagonal.

    Forward: exp of differences of cumulative log-sums, masked, so no entry is a ratio of vanishing products.
    Backward: division-free, so gates that are exactly 0 (no momentum, full forgetting) get exact gradients;
    it uses P[j, r] = P[j, m] g_m P[m - 1, r] for r < m <= j.
    """

    @staticmethod
    def forward(ctx, g: Tensor) -> Tensor:
        n = g.shape[-1]
        tiny = torch.finfo(g.dtype).tiny
        logs = torch.log(g.clamp_min(tiny))
        cum = torch.cat([logs.new_zeros(*logs.shape[:-1], 1), logs.cumsum(-1)], dim=-1)
        mask = torch.ones(n + 1, n + 1, dtype=torch.bool, device=g.device).tril()
        diff = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~mask, -math.inf)
        prod = torch.exp(diff)
        ctx.save_for_backward(prod)
        return prod

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_prod: Tensor) -> Tensor:
        (prod,) = ctx.saved_tensors
        # q[j, m'] = sum_r grad[j, r] P[m', r]; dL/dg_m = sum_j P[j, m] q[j, m - 1]
        q = grad_prod @ prod.transpose(-1, -2)
        return (prod[..., :, 1:] * q[..., :, :-1]).sum(-2)


def chunk_coefficients(theta: Tensor, eta: Tensor, alpha: Tensor) -> tuple[Tensor, ...]:
    """Closed-form coefficients of the momentum/decay recurrence inside chunks.

    theta, eta, alpha: [..., n] (one chunk per leading index). With A_j, E_j the products of (1 - alpha) and
    eta from the chunk start to token j, the memory after token j is
        M_j = A_j W + c_j S_prev - sum_i G[j, i] u_i,   and the momentum after the chunk is
        S_end = e S_prev - sum_i s_i u_i.
    Returns A [..., n], c [..., n], G [..., n, n], s [..., n], e [...].
    """
    pa, pe = DecayProducts.apply(1.0 - alpha), DecayProducts.apply(eta)
    a_cum, a_dec = pa[..., 1:, 0], pa[..., 1:, 1:]
    e_cum, e_dec = pe[..., 1:, 0], pe[..., 1:, 1:]
    g_mat = (a_dec @ e_dec) * theta.unsqueeze(-2)
    c = (a_dec @ e_cum.unsqueeze(-1)).squeeze(-1)
    return a_cum, c, g_mat, theta * e_dec[..., -1, :], e_cum[..., -1]


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


def forward_step(ws, base, new_ws, lhs0, kv, xgs0_t, gs, ae, c, m0, ac, neg_g, activation: str, norm: bool):
    """One chunk: the inner loss's errors at the base weights, retrieval, and the memory at the chunk end.

    ws: per layer [N, 2 d_in, d_out], the memory [W^T; S^T] at the chunk start. base: per layer W_b^T
    [N, d_in, d_out] for a chunk begun in an earlier call, None when the base is W. new_ws: per layer a
    tensor like ws to write the memory at the chunk end into, or None for new ones. lhs0: [N, 2 n, 2 D],
    [[k | 0]; [A q | c q]], the keys and the first layer's retrieval factors, which meet the memory in one
    product. kv: [N, n, D], 2 (k - v) (residual) or -2 v, so that the inner loss's gradient at the memory's
    output o is kv + 2 o. xgs0_t: [N, 2 D, n] = -[g k | s k]^T, the first layer's update factor
    (g = G[n-1, :] and s from chunk_coefficients). gs: [N, n, 2, 1] = -(g, s). ae: per layer
    [N, 2 d_in, 1], A_{n-1} on the W^T rows and E_{n-1} on the S^T rows. c: [N, 1, 1], c_{n-1}.
    m0: [N, n, n] = -G * (q k^T). ac: [N, n, 2, 1] = (A, c). neg_g: [N, n, n] = -G.
    Returns the memory at the chunk end and what the retrieval and the backward need: per layer the key
    pre-activations p_i, the layer inputs x_i (i >= 1), the errors delta_i, m_i = delta_{i+1} W_{i+1}
    (i < L - 1), the keys' LayerNorm (output, mean, 1/std, error) when ``norm``, the update factors
    -[g x_i | s x_i] (i >= 1), and the retrieval's out_i, z_i = act(out_{i-1}), [A z_i | c z_i], z_i x_i^T
    and -G * (z_i x_i^T) (i >= 1); the last out_i is the retrieval before its LayerNorm.
    """
    act, act_bwd, _ = ACT_FNS[activation]
    n, D = lhs0.shape[1] // 2, lhs0.shape[2] // 2
    halves = [w.split(w.shape[1] // 2, dim=1) for w in ws]  # (W^T, S^T)
    bt = [wt for wt, _ in halves] if base is None else base
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
        err = torch.add(kv, o, alpha=2.0)
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

    # Retrieval by the dual form: out_i = [A z_i | c z_i] [W^T; S^T] - (G * (z_i x_i^T)) delta_i,
    # z_0 = q, z_{i+1} = act(out_i).
    outs, zs, zacs, pzs, m_ret = [torch.baddbmm(r0, m0, deltas[0])], [None], [None], [None], [None]
    for i in range(1, len(ws)):
        zs.append(act(outs[-1]))
        zacs.append((ac * zs[i].unsqueeze(-2)).flatten(-2))
        pzs.append(torch.bmm(zs[i], xs[i].mT))
        m_ret.append(neg_g * pzs[i])
        outs.append(torch.bmm(zacs[i], ws[i]).baddbmm_(m_ret[i], deltas[i]))

    # W'^T = A W^T + c S^T - (g x)^T delta,  S'^T = E S^T - (s x)^T delta, both row blocks at once
    xgs = [(gs * x.unsqueeze(-2)).flatten(-2) for x in xs[1:]]
    new_ws = new_ws or [None] * len(ws)
    for i, (w, (wt, st)) in enumerate(zip(ws, halves, strict=True)):
        new_ws[i] = torch.mul(ae[i], w) if new_ws[i] is None else torch.mul(ae[i], w, out=new_ws[i])
        new_ws[i][:, : wt.shape[1]].addcmul_(c, st)
        new_ws[i].baddbmm_(xgs0_t if i == 0 else xgs[i - 1].mT, deltas[i])
    return new_ws, (ps, xs[1:], deltas, ms, ln_k, xgs, outs, zs, zacs, pzs, m_ret)


def _retrieval_terms(dout, delta, m, pz, z, x, neg_g):
    """For out = zac [W^T; S^T] + m delta with m = -G * (z x^T): the gradients w.r.t. delta and m (the first
    layer, z None) or, else, w.r.t. delta, neg_g, x, and m's share of the gradient w.r.t. z. Batched or per
    chunk alike."""
    dm = dout @ delta.mT
    if z is None:
        return m.mT @ dout, dm, None, None
    dpz = dm * neg_g
    return m.mT @ dout, dm * pz, dpz.mT @ z, dpz @ x


def backward_step(lam, new_lam, last, ws, base, lhs0, xgs0, gs_tok, ac_tok, ae, c, m0, neg_g, fwd, h, ln_ops,
                  activation: str, norm: bool):  # fmt: skip
    """One chunk of the backward, from dL/d(memory) at the chunk end to that at its start.

    lam: per layer dL/d[W'^T; S'^T] [N, 2 d_in, d_out] at the chunk end; new_lam: per layer a tensor like
    lam to write the gradient at the chunk start into, or None for new ones. last: the last layer's
    dL/dout and _retrieval_terms, formed for all chunks at once. ws, base, lhs0, ae, c, m0, neg_g: as in
    forward_step; xgs0: [N, n, 2 D]; gs_tok, ac_tok: -(g, s) and (A, c) as [N n, 1, 2]; fwd: forward_step's;
    h: per layer i < L - 1, m_i act''(p_i); ln_ops: the keys' LayerNorm's second-order operators
    (MemoryScan).
    Returns dL/d(memory at the chunk start), this chunk's gradients w.r.t. (lhs0, the last layer's error
    (for d kv), mix, xgs0, gs, ac, and, from the layers before the last, m0 and neg_g) and, when base is
    given, dL/dW_b^T per layer.
    """
    _, act_bwd, _ = ACT_FNS[activation]
    ps, xs, deltas, ms, ln_k, xgs, outs, zs, zacs, pzs, m_ret = fwd
    L = len(lam)
    N, n = deltas[0].shape[:2]
    D = lhs0.shape[2] // 2
    xs, xgs, zacs, m_ret = [None, *xs], [xgs0, *xgs], [lhs0[:, n:], *zacs[1:]], [m0, *m_ret[1:]]
    bt = [w[:, : w.shape[1] // 2] for w in ws] if base is None else base

    # Retrieval, last layer first: out_i = zac_i [W^T; S^T] + m_i delta_i, m_i = -G * (z_i x_i^T),
    # zac_i = (A z_i, c z_i), z_i = act(out_{i-1}). The errors also feed the update (rows += xgs_i^T
    # delta_i), and the layer inputs the update's xgs_i = -(g, s) x_i.
    dout, terms = last[0], last[1:]
    douts, gd, gx = [None] * L, [None] * L, [None] * L
    dm0 = dneg_g = dac = dgs = None
    for i in range(L - 1, -1, -1):
        if i < L - 1:
            terms = _retrieval_terms(dout, deltas[i], m_ret[i], pzs[i], zs[i], xs[i], neg_g)
        ddelta, dm, dx, dz = terms
        douts[i] = dout
        gd[i] = torch.baddbmm(ddelta, xgs[i], lam[i])
        if i == 0:
            dm0 = dm if L > 1 else None  # with one layer it was formed for all chunks at once
            break
        if i < L - 1:
            dneg_g = dm if dneg_g is None else dneg_g + dm
        dzac = torch.bmm(dout, ws[i].mT).view(N * n, 2, -1)
        dxgs = torch.bmm(deltas[i], lam[i].mT).view(N * n, 2, -1)
        terms = (torch.bmm(dzac, zs[i].view(N * n, -1, 1)), torch.bmm(dxgs, xs[i].view(N * n, -1, 1)))
        dac, dgs = (t if acc is None else acc + t for acc, t in zip((dac, dgs), terms, strict=True))
        gx[i] = torch.baddbmm(dx.view(N * n, 1, -1), gs_tok, dxgs).view(N, n, -1)
        dout = act_bwd(torch.bmm(ac_tok, dzac).view(N, n, -1).add_(dz), outs[i - 1])

    # Back through the inner gradient: delta_i = act'(p_i) * (delta_{i+1} W_{i+1}), first layer first.
    # Every gradient w.r.t. a memory is a sum of token products left^T right: the retrieval's, and, when
    # the memory is the base, the keys' (padded with zeros on the S^T rows).
    left: list[list[Tensor]] = [[zacs[i]] for i in range(L)]
    right: list[list[Tensor]] = [[douts[i]] for i in range(L)]
    keys: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(L)]
    for i in range(L - 1):
        gm = act_bwd(gd[i], ps[i])
        gd[i + 1].baddbmm_(gm, bt[i + 1])
        keys[i + 1].append((gm, deltas[i + 1]))
    gp: list = [None] * L
    if norm:  # delta = J^T (kv + 2 LN(p)): linear in the incoming gradient, see MemoryScan
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
    dmix, dbase = 0.0, []
    for i in range(L):
        d_in = bt[i].shape[1]
        if base is None:
            for lt, rt in keys[i]:
                left[i].append(F.pad(lt, (0, d_in)))
                right[i].append(rt)
        else:
            dbase.append(sum(torch.bmm(lt.mT, rt) for lt, rt in keys[i]))
        # back through W'^T = A W^T + c S^T + ...,  S'^T = E S^T + ...
        out = new_lam[i]
        new_lam[i] = torch.mul(ae[i], lam[i]) if out is None else torch.mul(ae[i], lam[i], out=out)
        new_lam[i][:, d_in:].addcmul_(c, lam[i][:, :d_in])
        lt = left[i][0] if len(left[i]) == 1 else torch.cat(left[i], dim=1)
        rt = right[i][0] if len(right[i]) == 1 else torch.cat(right[i], dim=1)
        new_lam[i].baddbmm_(lt.mT, rt)
        # the update's coefficients: <dW'^T, W^T>, <dS'^T, S^T> on the diagonal, <dW'^T, S^T> at [0, 1]
        dmix = dmix + torch.bmm(lam[i].view(N, 2, -1), ws[i].view(N, 2, -1).mT)
    # dL/dlhs0: the keys' rows (through the base) and the retrieval's zac_0 rows
    d_lhs0 = torch.bmm(d_right0, ws[0].mT)
    if base is not None:
        d_lhs0[:, :n, :D] = torch.bmm(gp[0], bt[0].mT)
    dxgs0 = torch.bmm(deltas[0], lam[0].mT)
    return new_lam, (d_lhs0, gd[-1], dmix, dxgs0, dgs, dac, dm0, dneg_g), dbase


def _decays(mix: Tensor, d_ins: list[int]) -> list[Tensor]:
    """Per layer, mix's diagonal (A_{n-1}, E_{n-1}) on the memory's rows: [n_chunks, N, 2 d_in, 1]."""
    diag = mix.diagonal(dim1=-2, dim2=-1)
    return [diag.repeat_interleave(d, dim=-1).unsqueeze(-1) for d in d_ins]


def _scan(config, lhs0, kv, xgs0, gs, mix, m0, ac, neg_g, ws, base, keep: bool):
    """forward_step over the chunks (inputs as in MemoryScan). Returns the retrievals before the
    residual, [n_chunks, N, n, D], per layer the memory after the last chunk, and, if ``keep``, what the
    backward needs: per chunk the memory at its start and forward_step's tensors, and the retrieval's
    LayerNorm statistics."""
    L, activation, norm, has_base, compiled = config
    # the same tensor properties for every chunk, so that a compiled step is not compiled again
    ws, base = [w.detach() for w in ws], base and [b.detach() for b in base]
    d_ins = [w.shape[1] // 2 for w in ws]
    aes = [a.unbind(0) for a in _decays(mix, d_ins)]
    per_chunk = zip(
        *(t.unbind(0) for t in (lhs0, kv, xgs0.mT, gs, mix[..., :1, 1:], m0, ac, neg_g)), strict=True
    )
    # Without a backward, two memories per layer take turns (eagerly; a compiled step makes its own).
    spare = [[torch.empty_like(w) for w in ws] for _ in range(2)] if not (keep or compiled) else None
    outs, starts, saved = [], [], []
    for j, (lhs0_j, kv_j, xgs0_j, gs_j, c_j, m0_j, ac_j, neg_g_j) in enumerate(per_chunk):
        b = base if j == 0 else None
        step = _compiled("forward") if compiled and b is None else forward_step
        ae_j, new = [a[j] for a in aes], spare and spare[j % 2]
        new, fwd = step(
            ws, b, new, lhs0_j, kv_j, xgs0_j, gs_j, ae_j, c_j, m0_j, ac_j, neg_g_j, activation, norm
        )
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


def _ln_second_order(out: Tensor, rstd: Tensor, err: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B3, V, beta) of MemoryScan's LayerNorm term, for tensors [..., D] of LN outputs, 1/std and errors."""
    D = out.shape[-1]
    rho2 = rstd * rstd
    err_c = err - err.mean(-1, keepdim=True)
    e_o = (err * out).sum(-1, keepdim=True)
    o_o = (out * out).sum(-1, keepdim=True)
    beta = rho2 * (2.0 - e_o / D)
    B3 = torch.stack([torch.full_like(out, 1.0 / D), out, err_c], dim=-1)
    v_o = rho2 / D * ((3.0 * e_o / D - 4.0 + 2.0 * o_o / D) * out - err_c)
    V = torch.stack([-beta.expand_as(out), v_o, -rho2 / D * out], dim=-2)
    return B3, V, beta


class MemoryScan(torch.autograd.Function):
    """The chunked memory over a run of n_chunks chunks of n tokens, with its backward written by hand.

    Inputs (N = batch * heads; chunk-major, so that each chunk's slice is contiguous): config = (n_layers,
    activation, norm, has_base, compiled); lhs0 [n_chunks, N, 2 n, 2 D], kv, xgs0, gs, m0, ac, neg_g as in
    forward_step with a leading chunk dimension; mix = [[A_{n-1}, c_{n-1}], [0, E_{n-1}]]
    [n_chunks, N, 2, 2], the update's coefficients on the row blocks (its [1, 0] entry unused); then per
    layer the memory [W^T; S^T] [N, 2 d_in, d_out] at the first chunk's start and, if has_base, the base
    W_b^T of a first chunk begun earlier. Outputs: the retrievals before the residual, [n_chunks, N, n, D],
    and per layer the memory after the last chunk.

    Forward: forward_step per chunk, then the retrieval's LayerNorm for all chunks at once. Backward:
    backward_step per chunk in reverse, carrying dL/d(memory) from each chunk's end to its start. Whatever
    needs no chunk's memory is formed for all chunks at once, before the loop (the last layer's share of
    the retrieval's backward, m_i act''(p_i), the keys' LayerNorm operators below) or after it (d kv).

    The keys' LayerNorm's second order. With o = LN(p), rho = 1/std, J = rho (I - 11^T/D - o o^T/D) and
    err = kv + 2 o, the forward takes delta = J err. A gradient g at delta reaches p as 2 J J g (through
    err) plus the derivative of <g, J(p) err> with err held (J's own dependence on p). Both are linear in g
    and see it only through t = (mean(g), <g, o>, <g, err - mean(err)>) = g B3:
        dp = beta g + t V,   beta = rho^2 (2 - e_o / D),  e_o = <err, o>,
        V = (-beta 1,  rho^2 / D ((3 e_o / D - 4 + 2 |o|^2 / D) o - (err - mean(err))),  -rho^2 / D o),
    so per chunk it costs one bmm and one baddbmm.
    """

    @staticmethod
    def forward(ctx, config, lhs0, kv, xgs0, gs, mix, m0, ac, neg_g, *mats):
        L = config[0]
        ws, base = list(mats[:L]), (list(mats[L:]) or None)
        y, finals, starts, saved, ln_q = _scan(
            config, lhs0, kv, xgs0, gs, mix, m0, ac, neg_g, ws, base, keep=True
        )
        ctx.config, ctx.starts, ctx.per_chunk, ctx.ln_q = config, starts, saved, ln_q
        ctx.save_for_backward(lhs0, xgs0, gs, mix, m0, ac, neg_g, *(base or ()))
        return (y, *finals)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *dfinals):
        L, activation, norm, has_base, compiled = ctx.config
        lhs0, xgs0, gs, mix, m0, ac, neg_g, *base = ctx.saved_tensors
        dy, dfinals = dy.contiguous(), [g.contiguous() for g in dfinals]  # the layouts the steps expect
        n_chunks, N, n, _ = dy.shape
        d_ins = [w.shape[1] // 2 for w in ctx.starts[0]]
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
            B3, V, beta = _ln_second_order(o_k, rstd_k, err)
            ln_ops = list(zip(*(t.flatten(1, 2).unbind(0) for t in (B3, V, beta.unsqueeze(-1))), strict=True))
        dout = dy  # the retrieval's last layer, before its LayerNorm
        if norm:
            out_q, mean_q, rstd_q = ctx.ln_q
            dout = torch.ops.aten.native_layer_norm_backward(
                dy, out_q, out_q.shape[-1:], mean_q, rstd_q, None, None, [True, False, False]
            )[0]
        if L == 1:
            last = _retrieval_terms(dout, torch.stack(deltas[0]), m0, None, None, None, None)
        else:
            z, pz, x = torch.stack(zs[-1]), torch.stack(pzs[-1]), torch.stack(xs[-1])
            last = _retrieval_terms(dout, torch.stack(deltas[-1]), torch.stack(m_ret[-1]), pz, z, x, neg_g)
        dm_last = last[1]
        last = list(
            zip(*(t.unbind(0) if t is not None else [None] * n_chunks for t in (dout, *last)), strict=True)
        )
        aes = [a.unbind(0) for a in _decays(mix, d_ins)]
        tokens = (n_chunks, N * n, 1, 2)
        c_end = mix[..., :1, 1:]
        inputs = (lhs0, xgs0, gs.view(tokens), ac.view(tokens), c_end, m0, neg_g)
        per_chunk = list(zip(*(t.unbind(0) for t in inputs), strict=True))

        # dL/d(memory) needs only the latest chunk's: eagerly, two per layer take turns
        spare = None if compiled else [[torch.empty_like(g) for g in dfinals] for _ in range(2)]
        lam, grads, dbase = list(dfinals), [], None
        for j in reversed(range(n_chunks)):
            b = base if has_base and j == 0 else None
            step = _compiled("backward") if compiled and b is None else backward_step
            new = spare and spare[j % 2]
            h_j, ae_j = [h[j] for h in hs], [a[j] for a in aes]
            lhs0_j, xgs0_j, gs_j, ac_j, c_j, m0_j, neg_g_j = per_chunk[j]
            lam, g, db = step(lam, new, last[j], ctx.starts[j], b, lhs0_j, xgs0_j, gs_j, ac_j, ae_j, c_j,
                              m0_j, neg_g_j, ctx.per_chunk[j], h_j, ln_ops[j], activation, norm)  # fmt: skip
            grads.append(g)
            dbase = db or dbase

        # For all chunks at once: the gradients gathered per chunk, the last layer's, and d kv through the
        # keys' LayerNorm.
        d_lhs0, gd, dmix, dxgs0, dgs, dac, dm0, dneg_g = (
            None if t[0] is None else torch.stack(t[::-1]) for t in zip(*grads, strict=True)
        )
        if L == 1:
            dm0 = dm_last
        else:
            dneg_g = dm_last if dneg_g is None else dneg_g + dm_last
        if norm:  # kv enters delta = J^T (kv + 2 LN(p)) through J^T, symmetric
            p, mean_k, rstd_k = torch.stack(ps[-1]), torch.stack(ln_k[1]), torch.stack(ln_k[2])
            gd = torch.ops.aten.native_layer_norm_backward(
                gd, p, p.shape[-1:], mean_k, rstd_k, None, None, [True, False, False]
            )[0]
        dgs, dac = (None if t is None else t.view(gs.shape) for t in (dgs, dac))
        return (None, d_lhs0, gd, dxgs0, dgs, dmix, dm0, dac, dneg_g, *lam, *(dbase if has_base else ()))


def _memory_run(q, k, v, theta, eta, alpha, ws, base, activation, residual, norm, compiled):
    """A run of equal chunks. q, k, v [n_chunks, N, n, D], gates [n_chunks, N, n]; ws per layer the memory
    [W^T; S^T] at the first chunk's start; base: W_b^T per layer if the first chunk began earlier, else None.
    Returns y [n_chunks, N, n, D] and per layer the memory after the last chunk."""
    A, c, G, s, e = chunk_coefficients(theta, eta, alpha)
    gs = -torch.stack([G[..., -1, :], s], dim=-1).unsqueeze(-1)
    ac, neg_g = torch.stack([A, c], dim=-1).unsqueeze(-1), -G
    mix = torch.stack([A[..., -1], c[..., -1], torch.zeros_like(e), e], dim=-1).unflatten(-1, (2, 2))
    inputs = (
        torch.cat([F.pad(k, (0, k.shape[-1])), (ac * q.unsqueeze(-2)).flatten(-2)], dim=-2),  # lhs0
        2.0 * (k - v) if residual else -2.0 * v,  # kv
        (gs * k.unsqueeze(-2)).flatten(-2),  # xgs0
        gs,
        mix,
        neg_g * (q @ k.mT),  # m0
        ac,
        neg_g,
    )
    config = (len(ws), activation, norm, base is not None, compiled)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *ws, *(base or ()))):
        y, *ws = MemoryScan.apply(config, *inputs, *ws, *(base or ()))
    else:  # nothing to differentiate: no autograd node, nothing kept for a backward
        y, ws = _scan(config, *inputs, ws, base, keep=False)[:2]
    return (y + q if residual else y), ws


def _chunk_major(t: Tensor, n_chunks: int, size: int) -> Tensor:
    """[B, H, n_chunks * size, ...] -> [n_chunks, B * H, size, ...], contiguous: every chunk's slice is, and
    a compiled step sees the same strides whatever the layout of the caller's tensors."""
    B, H = t.shape[:2]
    t = t.unflatten(2, (n_chunks, size)).movedim(2, 0)
    return t.reshape(n_chunks, B * H, size, *t.shape[4:]).contiguous()


def chunk_titans_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    params: tuple[Tensor, ...],
    chunk_size: int = 16,
    activation: str = "gelu",
    residual: bool = True,
    state: MemoryState | None = None,
    norm: bool = False,
    compiled: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Titans memory, chunk by chunk: same contract and results as naive_recurrent_titans_memory.

    Args:
        q: [B, H, T, D] queries, read from the memory after each token's update.
        k: [B, H, T, D] keys the memory is written with.
        v: [B, H, T, D] values the memory learns to map the keys to.
        theta: [B, H, T] inner learning rate per token (the step size of the surprise).
        eta: [B, H, T] momentum decay per token (past surprise kept).
        alpha: [B, H, T] forgetting gate per token (weight decay of the memory).
        params: per memory layer [H, d_out, d_in], the memory's initial weights (outer-loop parameters).
        chunk_size: tokens per chunk; inside a chunk every gradient is taken at the chunk-base weights.
        activation: "gelu" or "silu", between the memory's layers.
        residual: M(x) = x + MLP(x) when True, MLP(x) otherwise.
        state: a MemoryState to continue from (None: the initial weights, zero momentum).
        norm: M(x) = x + LN(MLP(x)), the LayerNorm (no affine parameters) on the last layer's output.
        compiled: run the step of every whole chunk through torch.compile (compiled once per shape and
            setting, on first use; partial chunks run eagerly).

    Returns:
        y: [B, H, T, D] retrievals M_t(q_t), in the dtype of q.
        state: the MemoryState after the last token, to continue the sequence exactly.
    """
    get_activation(activation)  # validates the name
    B, H, T, D = q.shape
    N = B * H
    dtype, out_dtype = compute_dtype(q.dtype, params[0].dtype), q.dtype
    if state is None:
        state = initial_state(params, B, dtype)
    pos = state.pos
    d_ins = [w.shape[-1] for w in state.weights]
    ws = [
        torch.cat([w.mT, m.mT], dim=-2).reshape(N, 2 * w.shape[-1], w.shape[-2])
        for w, m in zip(state.weights, state.momentum, strict=True)
    ]
    base = None if pos == 0 else [b.mT.reshape(N, *b.shape[:1:-1]) for b in state.base]

    # Runs of equal chunks: maybe the rest of a chunk begun earlier, whole chunks, maybe a partial one.
    head = min(T, chunk_size - pos) if pos > 0 else 0
    n_full = (T - head) // chunk_size
    tail = T - head - n_full * chunk_size
    runs = [(1, head)] * (head > 0) + [(n_full, chunk_size)] * (n_full > 0) + [(1, tail)] * (tail > 0)

    ys, start, p = [], 0, pos
    with torch.autocast(q.device.type, enabled=False):
        seqs = [t.to(dtype) for t in (q, k, v, theta, eta, alpha)]
        for n_chunks, size in runs:
            span = slice(start, start + n_chunks * size)
            parts = [_chunk_major(t[:, :, span], n_chunks, size) for t in seqs]
            if p == 0:  # a chunk begins here: its base is the memory now
                base = [w[:, :d] for w, d in zip(ws, d_ins, strict=True)]
            y, ws = _memory_run(
                *parts,
                ws,
                base if p > 0 else None,
                activation,
                residual,
                norm,
                compiled and size == chunk_size,
            )
            ys.append(y.view(n_chunks, B, H, size, D).movedim(0, 2).reshape(B, H, n_chunks * size, D))
            start, p = start + n_chunks * size, (p + n_chunks * size) % chunk_size
        y = torch.cat(ys, dim=2) if len(ys) > 1 else ys[0] if ys else q.new_zeros(B, H, 0, D, dtype=dtype)

    def unflat(ts: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(t.mT.reshape(B, H, t.shape[-1], t.shape[-2]) for t in ts)

    weights = unflat([w[:, :d] for w, d in zip(ws, d_ins, strict=True)])
    momentum = unflat([w[:, d:] for w, d in zip(ws, d_ins, strict=True)])
    return y.to(out_dtype), MemoryState(weights, momentum, weights if p == 0 else unflat(base), p)
