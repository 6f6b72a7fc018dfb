"""Token-by-token Titans memory for decoding: the results of naive.py, a few ops per token.

The chunked form pays for its chunk machinery (gate products, dual-form matrices) on every call, which
is all overhead when a call holds one token. Here each token's gradient at the chunk-base weights is
written out by hand, as an outer product per layer:
    p_1 = W_1 k,  x_{i+1} = act(p_i),  p_{i+1} = W_{i+1} x_{i+1}
    delta_L = 2 (M(k) - v),  delta_i = act'(p_i) * (W_{i+1}^T delta_{i+1}),  u_i = delta_i x_i^T
then momentum, forgetting and retrieval follow the reference line for line. Everything is plain tensor
algebra, so autograd differentiates it like any other op (the tests hold its gradients to the reference).
Like fla's fused_recurrent ops, it serves decoding; training and prefill use chunk.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.modules.dtypes import compute_dtype

from .naive import ACTIVATIONS, LN_EPS, MemoryState, get_activation, initial_state, layer_norm


def _silu_backward(grad: Tensor, h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return grad * s * (1.0 + h * (1.0 - s))


# grad * act'(h). ATen's fused gelu backward can itself be differentiated; its silu backward cannot.
ACT_BACKWARDS = {"gelu": torch.ops.aten.gelu_backward, "silu": _silu_backward}


def token_grads(base: list[Tensor], k: Tensor, v: Tensor, activation: str, residual: bool, norm: bool):
    """Per layer, the factors (delta_i, x_i) of the gradient u_i = delta_i^T x_i of ||M_base(k) - v||^2.

    base: per layer [N, d_out, d_in]; k, v: [N, 1, D]. Returns two lists of [N, 1, d_out] and [N, 1, d_in].
    """
    act, act_bwd = ACTIVATIONS[activation], ACT_BACKWARDS[activation]
    xs, ps = [k], [torch.bmm(k, base[0].mT)]
    for w in base[1:]:
        xs.append(act(ps[-1]))
        ps.append(torch.bmm(xs[-1], w.mT))
    p = ps[-1]
    if norm:  # ATen's LayerNorm kernels, whose backward autograd can differentiate again
        out, mean, rstd = torch.native_layer_norm(p, p.shape[-1:], None, None, LN_EPS)
    else:
        out = p
    delta = 2.0 * (out + k - v if residual else out - v)
    if norm:
        delta = torch.ops.aten.native_layer_norm_backward(
            delta, p, p.shape[-1:], mean, rstd, None, None, [True, False, False]
        )[0]
    deltas = [delta]
    for i in range(len(base) - 1, 0, -1):
        deltas.insert(0, act_bwd(torch.bmm(deltas[0], base[i]), ps[i - 1]))
    return deltas, xs


def fused_recurrent_titans_memory(
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
    """Titans memory, token by token with hand-written gradients, for decoding: same contract
    and results as naive_recurrent_titans_memory.

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
    act = get_activation(activation)
    B, H, T, D = q.shape
    dtype, out_dtype = compute_dtype(q.dtype, params[0].dtype), q.dtype
    if state is None:
        state = initial_state(params, B, dtype)
    pos = state.pos

    def flat(t: Tensor) -> Tensor:  # batch and heads as one dimension, for bmm
        return t.reshape(B * H, *t.shape[2:])

    weights, momentum, base = (
        [flat(t) for t in group] for group in (state.weights, state.momentum, state.base)
    )
    ys = []
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (flat(t).to(dtype) for t in (q, k, v))
        gates = [flat(g).to(dtype)[..., None, None] for g in (theta, eta, 1 - alpha.to(dtype))]
        for t in range(T):
            if pos == 0:
                base = weights
            q_t, k_t, v_t = q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1]  # [N, 1, D]
            deltas, xs = token_grads(base, k_t, v_t, activation, residual, norm)
            th, et, kp = (g[:, t] for g in gates)  # each [N, 1, 1]
            # S = eta S - theta delta^T x;  W = (1 - alpha) W + S
            momentum = [
                (et * s).baddbmm_((th * d).mT, x, alpha=-1.0)
                for s, d, x in zip(momentum, deltas, xs, strict=True)
            ]
            weights = [(kp * w).add_(s) for w, s in zip(weights, momentum, strict=True)]
            h = q_t
            for i, w in enumerate(weights):
                h = torch.bmm(act(h) if i > 0 else h, w.mT)
            if norm:
                h = layer_norm(h)
            ys.append(h + q_t if residual else h)
            pos = (pos + 1) % chunk_size
        y = torch.cat(ys, dim=1) if ys else q.new_zeros(B * H, 0, D)
    if pos == 0:
        base = weights

    def unflat(ts: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(t.view(B, H, *t.shape[1:]) for t in ts)

    return y.view(B, H, T, D).to(out_dtype), MemoryState(unflat(weights), unflat(momentum), unflat(base), pos)
