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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .naive import LN_EPS, MemoryState, compute_dtype, get_activation, initial_state

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


def layer_norm_stats(h: Tensor) -> tuple[Tensor, Tensor]:
    """(n, r): n = layer_norm(h) (no affine parameters) and r = 1 / std, what its derivatives need."""
    u = h - h.mean(-1, keepdim=True)
    r = torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + LN_EPS)
    return u * r, r


def ln_backward(grad: Tensor, n: Tensor, r: Tensor) -> Tensor:
    """grad through layer_norm, from its stats: J^T grad with J = r (I - 1/D - n n^T / D), symmetric.
    Plain tensor algebra, so autograd can differentiate it again."""
    return r * (grad - grad.mean(-1, keepdim=True) - n * (grad * n).mean(-1, keepdim=True))


def layer_norm_backward(grad: Tensor, h: Tensor) -> Tensor:
    """grad through layer_norm at h."""
    return ln_backward(grad, *layer_norm_stats(h))


def ln_backward_input_grad(err: Tensor, n: Tensor, r: Tensor, g: Tensor) -> Tensor:
    """d/dh of <g, J(h)^T err> with err and g fixed, the second-order term the chunk's backward needs for
    the output error. With u = h - mean(h) = n / r, S = <g, u>, E = <err, u>, G = <g, err - mean(err)>:
    <g, J^T err> = r G - r^3 S E / D, whose gradient w.r.t. u, centred, is returned (written with n)."""
    D = n.shape[-1]
    gn, en = (g * n).sum(-1, keepdim=True), (err * n).sum(-1, keepdim=True)
    G = (g * (err - err.mean(-1, keepdim=True))).sum(-1, keepdim=True)
    grad_u = (r * r / D) * (n * (3.0 * gn * en / D - G) - en * g - gn * err)
    return grad_u - grad_u.mean(-1, keepdim=True)


def _dot(x: Tensor, y: Tensor) -> Tensor:
    """Per-batch Frobenius inner product of [N, a, b] tensors -> [N], as one gemv pass without a temporary."""
    return (x.flatten(1).unsqueeze(1) @ y.flatten(1).unsqueeze(2)).view(-1)


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


class ChunkStep(torch.autograd.Function):
    """One chunk of the memory, forward and a hand-written backward.

    With ``norm`` the memory's output is layer_norm(last layer) (see naive.py): the output error and the
    retrieval pass through it, and so do their backward passes (the error's with a second-order term).

    Shapes (N = batch * heads, n = tokens in this chunk): q, k, v [N, n, D]; coefficients from
    chunk_coefficients, A, c, s [N, n], G [N, n, n], e [N]; then per layer the current weights
    W [N, d_out, d_in], the momentum S, and the chunk-base weights Wb unless base_is_weights.
    Returns y [N, n, D], new W, new S.

    Why by hand: the backward reuses everything the forward computed, accumulates each weight gradient with a
    single matmul over concatenated token factors, updates the [d_out, d_in] matrices in place instead of
    through autograd's chain of temporaries, and skips the work for state nobody differentiates.
    """

    @staticmethod
    def forward(ctx, n_layers, activation, residual, norm, base_is_weights, q, k, v, A, c, G, s, e, *mats):
        L, n = n_layers, q.shape[1]
        act, act_bwd, _ = ACT_FNS[activation]
        W, S = mats[:L], mats[L : 2 * L]
        Wb = W if base_is_weights else mats[2 * L :]

        # Keys through the memory at the base weights, then the backward pass for the errors delta.
        # With the base equal to the current weights, keys and queries share the first layer's matmul.
        if base_is_weights:
            first = torch.cat([k, q], dim=1) @ W[0].mT
            ps, zw = [first[:, :n]], [first[:, n:]]
        else:
            ps, zw = [k @ Wb[0].mT], [q @ W[0].mT]
        xs = [k]
        for i in range(1, L):
            xs.append(act(ps[-1]))
            ps.append(xs[i] @ Wb[i].mT)
        deltas = [None] * L
        ln_k = layer_norm_stats(ps[-1]) if norm else None  # (LN(p), 1/std) of the keys' output
        out_k = ln_k[0] if norm else ps[-1]
        err = 2.0 * (out_k + k - v if residual else out_k - v)  # gradient of the loss at M(k)
        deltas[-1] = ln_backward(err, *ln_k) if norm else err
        ms = [None] * (L - 1)  # ms[i] = delta_{i+1} Wb_{i+1}
        for i in range(L - 2, -1, -1):
            ms[i] = deltas[i + 1] @ Wb[i + 1]
            deltas[i] = act_bwd(ms[i], ps[i])

        # Dual-form retrieval, layer by layer.
        A_, c_ = A.unsqueeze(-1), c.unsqueeze(-1)
        zs, outs, zm, pz = [q], [], [], []
        for i in range(L):
            if i > 0:
                zs.append(act(outs[-1]))
                zw.append(zs[i] @ W[i].mT)
            zm.append(zs[i] @ S[i].mT)
            pz.append(zs[i] @ xs[i].mT)  # [N, n, n]
            outs.append(torch.addcmul(A_ * zw[i], c_, zm[i]).baddbmm_(G * pz[i], deltas[i], alpha=-1.0))
        ln_q = layer_norm_stats(outs[-1]) if norm else (None, None)  # the same for the queries' output
        y = ln_q[0] if norm else outs[-1]
        if residual:
            y = y + q

        # Weights and momentum at the end of the chunk, updated in place on one fresh buffer each.
        a_end, c_end, e_end = A[:, -1, None, None], c[:, -1, None, None], e[:, None, None]
        g_row, s_ = G[:, -1, :, None], s.unsqueeze(-1)
        new_w, new_s = [], []
        for i in range(L):
            dt = deltas[i].mT
            new_w.append((a_end * W[i]).addcmul_(c_end, S[i]).baddbmm_(dt, g_row * xs[i], alpha=-1.0))
            new_s.append((e_end * S[i]).baddbmm_(dt, s_ * xs[i], alpha=-1.0))

        ctx.meta = (L, activation, residual, norm, base_is_weights)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(A, c, G, s, e, *W, *S, *(() if base_is_weights else Wb), *xs, *ps, *deltas,
                              *ms, *zs, *outs[:-1], *zw, *zm, *pz, err if norm else None,
                              *(ln_k if norm else (None, None)), *ln_q)  # fmt: skip
        return (y, *new_w, *new_s)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *dstate):
        L, activation, residual, norm, base_is_weights = ctx.meta
        _, act_bwd, act_grad2 = ACT_FNS[activation]
        saved = list(ctx.saved_tensors)

        def take(count: int) -> list[Tensor]:
            taken = saved[:count]
            del saved[:count]
            return taken

        A, c, G, s, e = take(5)
        W, S = take(L), take(L)
        Wb = W if base_is_weights else take(L)
        xs, ps, deltas, ms = take(L), take(L), take(L), take(L - 1)
        zs, outs, zw, zm, pz = take(L), take(L - 1), take(L), take(L), take(L)
        err, n_k, r_k, n_q, r_q = take(5)
        dW_new, dS_new = dstate[:L], dstate[L:]
        if dy is None:
            dy = torch.zeros_like(zs[0])

        A_, c_ = A.unsqueeze(-1), c.unsqueeze(-1)
        dA, dc = torch.zeros_like(A), torch.zeros_like(c)
        dG = torch.zeros_like(G)
        # token factors (left, right) whose products left^T right add up to each weight's gradient
        w_terms: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(L)]
        base_terms: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(L)]
        s_terms: list[Tensor] = [None] * L
        dxs, ddeltas = [None] * L, [None] * L

        # Retrieval, last layer first: out = A * (z W^T) + c * (z S^T) - (G * (z x^T)) delta.
        dout = ln_backward(dy, n_q, r_q) if norm else dy
        for i in range(L - 1, -1, -1):
            dA += (dout * zw[i]).sum(-1)
            dc += (dout * zm[i]).sum(-1)
            a_dout, c_dout = A_ * dout, c_ * dout
            r = dout @ deltas[i].mT  # [N, n, n]
            dG -= r * pz[i]
            dmix = r.mul_(G).neg_()  # gradient of pz = z x^T
            ddeltas[i] = -((G * pz[i]).mT @ dout)
            dxs[i] = dmix.mT @ zs[i]
            w_terms[i].append((a_dout, zs[i]))
            s_terms[i] = c_dout
            dz = (a_dout @ W[i]).baddbmm_(c_dout, S[i]).baddbmm_(dmix, xs[i])
            if i > 0:
                dout = act_bwd(dz, outs[i - 1])
        dq = dz + dy if residual else dz

        # End-of-chunk update: W' = a W + c S - delta^T diag(g) x,  S' = e S - delta^T diag(s) x.
        a_end, c_end, e_end = A[:, -1, None, None], c[:, -1, None, None], e[:, None, None]
        g_col, s_col = G[:, -1, :, None], s.unsqueeze(-1)
        de = torch.zeros_like(e)
        dg, ds = torch.zeros_like(s), torch.zeros_like(s)
        for i in range(L):
            if dW_new[i] is not None:
                dA[:, -1] += _dot(dW_new[i], W[i])
                dc[:, -1] += _dot(dW_new[i], S[i])
                qw = deltas[i] @ dW_new[i]  # [N, n, d_in]
                dg -= (xs[i] * qw).sum(-1)
                dxs[i].addcmul_(g_col, qw, value=-1.0)
                ddeltas[i].baddbmm_(g_col * xs[i], dW_new[i].mT, alpha=-1.0)
            if dS_new[i] is not None:
                de += _dot(dS_new[i], S[i])
                qs = deltas[i] @ dS_new[i]
                ds -= (xs[i] * qs).sum(-1)
                dxs[i].addcmul_(s_col, qs, value=-1.0)
                ddeltas[i].baddbmm_(s_col * xs[i], dS_new[i].mT, alpha=-1.0)
        dG[:, -1, :] += dg

        # Errors delta_i = (delta_{i+1} Wb_{i+1}) * act'(p_i), first layer first.
        dps: list[Tensor] = [None] * L
        for i in range(L - 1):
            dm = act_bwd(ddeltas[i], ps[i])
            dps[i] = ddeltas[i] * ms[i] * act_grad2(ps[i])
            ddeltas[i + 1].baddbmm_(dm, Wb[i + 1].mT)
            base_terms[i + 1].append((deltas[i + 1], dm))
        if norm:
            # delta = J(p)^T err(p, k, v), err = 2 (LN(p) + k - v): through err, J is symmetric so the
            # k, v and p parts share a = J ddelta; then J's own dependence on p.
            a = ln_backward(ddeltas[-1], n_k, r_k)
            dps[-1] = 2.0 * ln_backward(a, n_k, r_k) + ln_backward_input_grad(err, n_k, r_k, ddeltas[-1])
            dk_out, dv = 2.0 * a, -2.0 * a
        else:
            dps[-1] = 2.0 * ddeltas[-1]
            dk_out, dv = dps[-1], -dps[-1]
        # Forward through the layers at the base, last layer first.
        for i in range(L - 1, -1, -1):
            dxs[i].baddbmm_(dps[i], Wb[i])
            base_terms[i].append((dps[i], xs[i]))
            if i > 0:
                dps[i - 1] += act_bwd(dxs[i], ps[i - 1])
        dk = dxs[0] + dk_out if residual else dxs[0]

        def gram(init: Tensor | None, scale: Tensor, terms: list[tuple[Tensor, Tensor]]) -> Tensor:
            left = torch.cat([t[0] for t in terms], dim=1).mT
            right = torch.cat([t[1] for t in terms], dim=1)
            return left @ right if init is None else (scale * init).baddbmm_(left, right)

        dW, dS, dWb = [], [], []
        for i in range(L):
            if base_is_weights:
                dW.append(gram(dW_new[i], a_end, w_terms[i] + base_terms[i]))
            else:
                dW.append(gram(dW_new[i], a_end, w_terms[i]))
                dWb.append(gram(None, a_end, base_terms[i]))
            if dS_new[i] is None:
                grad_s = s_terms[i].mT @ zs[i]
            else:
                grad_s = (e_end * dS_new[i]).baddbmm_(s_terms[i].mT, zs[i])
            if dW_new[i] is not None:
                grad_s.addcmul_(c_end, dW_new[i])
            dS.append(grad_s)
        return (None, None, None, None, None, dq, dk, dv, dA, dc, dG, ds, de, *dW, *dS, *dWb)


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

    Returns:
        y: [B, H, T, D] retrievals M_t(q_t), in the dtype of q.
        state: the MemoryState after the last token, to continue the sequence exactly.
    """
    get_activation(activation)  # validates the name
    B, H, T, D = q.shape
    N, L = B * H, len(params)
    dtype, out_dtype = compute_dtype(q, params), q.dtype
    if state is None:
        state = initial_state(params, B, dtype)
    pos = state.pos

    def flat(t: Tensor) -> Tensor:
        return t.reshape(N, *t.shape[2:])

    weights, momentum = [flat(w) for w in state.weights], [flat(m) for m in state.momentum]
    base = None if pos == 0 else [flat(b) for b in state.base]

    # Pieces of the sequence: maybe the rest of a chunk begun earlier, whole chunks, maybe a partial one.
    # They are cut with split/unbind, whose backward assembles the gradient once instead of once per piece.
    head = min(T, chunk_size - pos) if pos > 0 else 0
    n_full = (T - head) // chunk_size
    tail = T - head - n_full * chunk_size
    sizes = [head] * (head > 0) + [chunk_size] * n_full + [tail] * (tail > 0)

    ys = []
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (flat(t).to(dtype).split(sizes, dim=1) for t in (q, k, v))
        parts = [head, n_full * chunk_size, tail]
        gates = [flat(t).to(dtype).split(parts, dim=1) for t in (theta, eta, alpha)]
        coefs = []
        if head:
            coefs.append(chunk_coefficients(*(g[0] for g in gates)))
        if n_full:
            batched = chunk_coefficients(*(g[1].unflatten(1, (n_full, chunk_size)) for g in gates))
            coefs.extend(zip(*(c.unbind(1) for c in batched), strict=True))
        if tail:
            coefs.append(chunk_coefficients(*(g[2] for g in gates)))

        p = pos
        for i, coef in enumerate(coefs):
            mats = (*weights, *momentum, *(() if p == 0 else base))
            y, *new = ChunkStep.apply(L, activation, residual, norm, p == 0, q[i], k[i], v[i], *coef, *mats)
            if p == 0:
                base = weights
            weights, momentum = new[:L], new[L:]
            ys.append(y)
            p = (p + sizes[i]) % chunk_size
        y = torch.cat(ys, dim=1) if ys else torch.zeros(N, 0, D, dtype=dtype, device=weights[0].device)
    if p == 0:
        base = weights

    def unflat(ts: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(t.view(B, H, *t.shape[1:]) for t in ts)

    return y.view(B, H, T, D).to(out_dtype), MemoryState(unflat(weights), unflat(momentum), unflat(base), p)
