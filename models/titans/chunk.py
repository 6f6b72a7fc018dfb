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

Gates per channel. A channel is a column of a layer's weight W [d_out, d_in] (naive.py says why): the gates
act as W diag(g), so column c of the memory follows the recurrence above with its own theta_c, eta_c,
alpha_c, and every coefficient (A, c, G, s, e) gains a trailing channel index. channel_coefficients.py forms
them by the recurrences behind these sums, products and sums of numbers in [0, 1] only, as stable as the
interval products. Per layer, each gate is one scalar per head (C = 1) or per channel (C = d_in).

Forgetting toward the initial memory M_0 (``forget_to_init``): M_t - M_0 = (1 - alpha_t)(M_{t-1} - M_0) + S_t.
The deviation D_t = M_t - M_0 follows exactly the recurrence above (the gradients u_i are still taken at the
memory itself, D_b + M_0, and enter the closed form as given data), so inside a chunk
    M_j - M_0 = A_j (W - M_0) + c_j S_prev - sum_i G[j, i] u_i,
    M_j = A_j W + (1 - A_j) M_0 + c_j S_prev - sum_i G[j, i] u_i,
the same coefficients and one term more, whose factor 1 - A_j also lies in [0, 1] (no new products, nothing
divided). Retrieval gains ((1 - A_j) z_j) M_0^T and the chunk end W' gains (1 - A_{b-1}) M_0; the momentum
is unchanged. With per-channel gates, A_j is per column as above.

Per layer the gradient is an outer product, u_i = delta_i x_i^T, with x_i the layer's input and delta_i the
error at its output, both computed on key k_i at W (last layer: delta = 2 (M(k_i) - v_i), through the
LayerNorm's gain and Jacobian when ``norm``; earlier layers: back through W^T and act'). Retrieval therefore
needs no per-token weights: with Z the layer's inputs on the queries (q for the first layer, act of the
previous layer's output after it), the "dual form"

    OUT = (A * Z) W^T + (c * Z) S_prev^T (+ ((1 - A) * Z) M_0^T) - M Delta,
    M[j, i] = sum_c G[j, i, c] Z[j, c] X[i, c]   (= G * (Z X^T) with one coefficient per head)

is matmuls only, and the chunk ends with W' = W diag(A_{b-1}) + S_prev diag(c_{b-1}) - Delta^T (g * X) and
S' = S_prev diag(E_{b-1}) - Delta^T (s * X), g = G[b-1, :], s_i = theta_i E_{b-1} / E_i. Only the loop over
chunks is sequential (chunk_scan.py); the tests hold this to the per-token reference in float64,
gradients included.

How it runs. Each PyTorch call costs a dispatch (a kernel launch on a GPU) however little it computes. What
needs no memory (the coefficients above, the first layer's key and query factors) is computed here for all
chunks at once; chunk_scan.MemoryScan runs the loop over chunks and its hand-written backward. Retrieval does
not feed the recurrence and could be batched over chunks too, but only from every chunk's memory in one
tensor: on the CPU, a product with a memory still in cache was faster than that tensor's traffic. With
per-channel gates G takes n^2 C numbers per chunk and layer: channel_coefficients.py forms it with a
hand-written backward that keeps none of its intermediates, and the first layer's G is never held whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.modules.dtypes import compute_dtype

from .channel_coefficients import channel_coefficients
from .chunk_scan import MemoryScan, _dual_form, _scan
from .naive import GATE_NAMES, Gate, MemoryState, get_activation, initial_state, layer_gates


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


def layer_coefficients(theta: Tensor, eta: Tensor, alpha: Tensor, K: int, pair=None):
    """The coefficients of one memory layer's chunks, as chunk_scan.MemoryScan takes them.

    theta, eta, alpha: [..., n, C] (C = 1: one per head; C = d_in: per input channel; they broadcast).
    K: the memory's row blocks, 2 ([W^T; S^T]) or 3 ([W^T; S^T; M_0^T], forgetting toward M_0).
    Returns ac [..., n, K, C] = (A, c (, 1 - A)), the retrieval's factors; -(g, s) [..., n, 2, C], the
    update's; neg_g = -G, [..., n, n] with one coefficient per head, [..., n, n, C] (j, i, channel) per
    channel, or with ``pair`` (z, x) [..., n, C] the dual form -sum_c G[:, :, c] z_c x_c [..., n, n] in its
    place (chunk_scan._dual_form); mix [..., K, K, C], the end-of-chunk coefficients
    [[A, c (, 1 - A)], [0, E (, 0)] (, [0, 0, 1])].
    """
    C = max(g.shape[-1] for g in (theta, eta, alpha))
    if C == 1:
        A, c, G, s, e = chunk_coefficients(theta[..., 0], eta[..., 0], alpha[..., 0])
        A, c, e, neg_g = A[..., None], c[..., None], e[..., None], -G
        neg_gs = -torch.stack([G[..., -1, :, None], s[..., None]], dim=-2)
        if pair is not None:
            neg_g = _dual_form(neg_g, *pair)[0]
    else:
        A, c, neg_g, neg_s, e, neg_g_end = channel_coefficients(theta, eta, alpha, pair)
        neg_gs = torch.stack([neg_g_end, neg_s], dim=-2)
    ac = torch.stack([A, c, 1.0 - A] if K == 3 else [A, c], dim=-2)
    a_end, c_end, zero = A[..., -1, :], c[..., -1, :], torch.zeros_like(e)
    if K == 2:
        rows = [a_end, c_end, zero, e]
    else:
        rows = [a_end, c_end, 1.0 - a_end, zero, e, zero, zero, zero, torch.ones_like(e)]
    return ac, neg_gs, neg_g, torch.stack(rows, dim=-2).unflatten(-2, (K, K))


def _scan_inputs(q, k, v, gates, K: int, residual: bool, gain, bias):
    """Everything MemoryScan takes that no memory enters, for all chunks at once. q, k, v [n_chunks, N, n, D];
    gates: per layer (theta, eta, alpha), each [n_chunks, N, n, C] (layers that share their gates share the
    tuple: their coefficients are formed once); gain, bias: [N, 1, D] or None."""
    done: dict[tuple[int, ...], tuple] = {}
    coeffs = []
    # The first layer needs only the dual form of its G with q and k: per channel it is formed row by row
    # with G, never held whole. Layers that share their gates share their coefficients.
    per_channel0 = any(t.shape[-1] > 1 for t in gates[0])
    for i, g in enumerate(gates):
        pair = (q, k) if i == 0 and per_channel0 else None
        key = (pair is not None, *map(id, g))
        if key not in done:
            done[key] = layer_coefficients(*g, K, pair=pair)
        coeffs.append(done[key])
    ac0, gs0, g0, _ = coeffs[0]
    m0 = g0 if per_channel0 else _dual_form(g0, q, k)[0]
    D = q.shape[-1]
    lhs0 = torch.cat([F.pad(k, (0, (K - 1) * D)), (ac0 * q.unsqueeze(-2)).flatten(-2)], dim=-2)
    xgs0 = (gs0 * k.unsqueeze(-2)).flatten(-2)
    # the inner loss's gradient at the LayerNorm's output: 2 gain (k + bias - v) + 2 gain^2 LN(p)
    if gain is None and bias is None:
        kv = 2.0 * (k - v) if residual else -2.0 * v
    else:
        target = (k - v if residual else -v) + (0.0 if bias is None else bias)
        kv = 2.0 * target * (1.0 if gain is None else gain)
    w2 = None if gain is None else 2.0 * gain * gain
    mixes = [c[3] for c in coeffs]
    later = coeffs[1:]
    return (lhs0, kv, xgs0, m0, w2, *mixes, *(c[0] for c in later), *(c[1] for c in later),
            *(c[2] for c in later))  # fmt: skip


def _memory_run(q, k, v, gates, ws, base, activation, residual, norm, compiled, gain, bias, K):
    """A run of equal chunks. q, k, v [n_chunks, N, n, D], gates per layer (theta, eta, alpha), each
    [n_chunks, N, n, C]; ws per layer the memory's row blocks [W^T; S^T (; M_0^T)] at the first chunk's
    start; base: W_b^T per layer if the first chunk began earlier, else None; gain, bias [N, 1, D] or None.
    Returns y [n_chunks, N, n, D] and per layer the memory after the last chunk."""
    config = (len(ws), activation, norm, base is not None, compiled)
    leaves = (q, k, v, *(t for g in gates for t in g), *ws, *(base or ()), gain, bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in leaves)
    inputs = _scan_inputs(q, k, v, gates, K, residual, gain, bias)
    if needs_grad:
        y, *ws = MemoryScan.apply(config, *inputs, *ws, *(base or ()))
    else:  # nothing to differentiate: no autograd node, nothing kept for a backward
        L = len(ws)
        lhs0, kv, xgs0, m0, w2, *rest = inputs
        mixes, acs, gss, negs = rest[:L], rest[L : 2 * L - 1], rest[2 * L - 1 : 3 * L - 2], rest[3 * L - 2 :]
        y, ws = _scan(config, lhs0, kv, xgs0, m0, w2, mixes, acs, gss, negs, ws, base, keep=False)[:2]
    if gain is not None:
        y = y * gain
    if bias is not None:
        y = y + bias
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
    theta: Gate,
    eta: Gate,
    alpha: Gate,
    params: tuple[Tensor, ...],
    chunk_size: int = 16,
    activation: str = "gelu",
    residual: bool = True,
    state: MemoryState | None = None,
    norm: bool = False,
    compiled: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    forget_to_init: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Titans memory, chunk by chunk: same contract and results as naive_recurrent_titans_memory.

    Args:
        q: [B, H, T, D] queries, read from the memory after each token's update.
        k: [B, H, T, D] keys the memory is written with.
        v: [B, H, T, D] values the memory learns to map the keys to.
        theta: inner learning rate per token (the step size of the surprise): [B, H, T], shared by the
            memory layers, or one tensor per layer, each [B, H, T] or [B, H, T, d_in] (per input channel).
        eta: momentum decay per token (past surprise kept), shaped as theta.
        alpha: forgetting gate per token (weight decay of the memory), shaped as theta.
        params: per memory layer [H, d_out, d_in], the memory's initial weights M_0 (outer-loop parameters).
        chunk_size: tokens per chunk; inside a chunk every gradient is taken at the chunk-base weights.
        activation: "gelu" or "silu", between the memory's layers.
        residual: M(x) = x + MLP(x) when True, MLP(x) otherwise.
        state: a MemoryState to continue from (None: the initial weights, zero momentum).
        norm: M(x) = x + LN(MLP(x)), the LayerNorm on the last layer's output.
        compiled: run the step of every whole chunk through torch.compile (compiled once per shape and
            setting, on first use; partial chunks run eagerly).
        norm_weight: [H, D] the LayerNorm's gain per head, or None (no gain); only with ``norm``.
        norm_bias: [H, D] the LayerNorm's bias per head, or None; only with ``norm``.
        forget_to_init: forget toward M_0 (M_t - M_0 = (1 - alpha_t)(M_{t-1} - M_0) + S_t), not toward 0.

    Returns:
        y: [B, H, T, D] retrievals M_t(q_t), in the dtype of q.
        state: the MemoryState after the last token, to continue the sequence exactly.
    """
    get_activation(activation)  # validates the name
    B, H, T, D = q.shape
    N = B * H
    dtype, out_dtype = compute_dtype(q.dtype, params[0].dtype), q.dtype
    d_ins = [p.shape[-1] for p in params]
    gates = [layer_gates(g, d_ins, name) for g, name in zip((theta, eta, alpha), GATE_NAMES, strict=True)]
    if state is None:
        state = initial_state(params, B, dtype)
    pos, K = state.pos, 3 if forget_to_init else 2
    blocks = [state.weights, state.momentum] + ([initial_state(params, B, dtype).weights] * forget_to_init)
    ws = [
        torch.cat([b.mT for b in layer], dim=-2).reshape(N, K * layer[0].shape[-1], layer[0].shape[-2])
        for layer in zip(*blocks, strict=True)
    ]
    base = None if pos == 0 else [b.mT.reshape(N, *b.shape[:1:-1]) for b in state.base]
    gain, bias = (
        None if p is None or not norm else p.to(dtype).expand(B, H, D).reshape(N, 1, D)
        for p in (norm_weight, norm_bias)
    )

    # Runs of equal chunks: maybe the rest of a chunk begun earlier, whole chunks, maybe a partial one.
    head = min(T, chunk_size - pos) if pos > 0 else 0
    n_full = (T - head) // chunk_size
    tail = T - head - n_full * chunk_size
    runs = [(1, head)] * (head > 0) + [(n_full, chunk_size)] * (n_full > 0) + [(1, tail)] * (tail > 0)

    ys, start, p = [], 0, pos
    with torch.autocast(q.device.type, enabled=False):
        seqs = [t.to(dtype) for t in (q, k, v)]
        # every distinct gate tensor once (layers may share one), as [B, H, T, C] in dtype
        distinct = {id(g): g.to(dtype) for gate in gates for g in gate}
        for n_chunks, size in runs:
            span = slice(start, start + n_chunks * size)
            parts = [_chunk_major(t[:, :, span], n_chunks, size) for t in seqs]
            chunked = {key: _chunk_major(g[:, :, span], n_chunks, size) for key, g in distinct.items()}
            run_gates = [tuple(chunked[id(g[i])] for g in gates) for i in range(len(params))]
            if p == 0:  # a chunk begins here: its base is the memory now
                base = [w[:, :d] for w, d in zip(ws, d_ins, strict=True)]
            y, ws = _memory_run(
                *parts,
                run_gates,
                ws,
                base if p > 0 else None,
                activation,
                residual,
                norm,
                compiled and size == chunk_size,
                gain,
                bias,
                K,
            )
            ys.append(y.view(n_chunks, B, H, size, D).movedim(0, 2).reshape(B, H, n_chunks * size, D))
            start, p = start + n_chunks * size, (p + n_chunks * size) % chunk_size
        y = torch.cat(ys, dim=2) if len(ys) > 1 else ys[0] if ys else q.new_zeros(B, H, 0, D, dtype=dtype)

    def unflat(ts: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(t.mT.reshape(B, H, t.shape[-1], t.shape[-2]) for t in ts)

    weights = unflat([w[:, :d] for w, d in zip(ws, d_ins, strict=True)])
    momentum = unflat([w[:, d : 2 * d] for w, d in zip(ws, d_ins, strict=True)])
    return y.to(out_dtype), MemoryState(weights, momentum, weights if p == 0 else unflat(base), p)
