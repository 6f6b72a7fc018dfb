"""Token-by-token Titans memory for decoding: the results of naive.py, a few ops per token.

The chunked form pays for its chunk machinery (gate products, dual-form matrices) on every call, which
is all overhead when a call holds one token. Here each token's gradient at the chunk-base weights is
written out by hand, as an outer product per layer:
    p_1 = W_1 k,  x_{i+1} = act(p_i),  p_{i+1} = W_{i+1} x_{i+1}
    delta_L = 2 (M(k) - v),  delta_i = act'(p_i) * (W_{i+1}^T delta_{i+1}),  u_i = delta_i x_i^T
(with the LayerNorm, delta_L goes back through its gain and Jacobian) then momentum, forgetting and
retrieval follow the reference line for line, gates per channel scaling the columns of each layer. Everything
is plain tensor algebra, so autograd differentiates it like any other op (the tests hold its gradients to
the reference). Like fla's fused_recurrent ops, it serves decoding; training and prefill use chunk.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.modules.dtypes import compute_dtype

from .naive import (
    ACTIVATIONS,
    GATE_NAMES,
    LN_EPS,
    Gate,
    MemoryState,
    get_activation,
    initial_state,
    layer_gates,
)


def _silu_backward(grad: Tensor, h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return grad * s * (1.0 + h * (1.0 - s))


# grad * act'(h). ATen's fused gelu backward can itself be differentiated; its silu backward cannot.
ACT_BACKWARDS = {"gelu": torch.ops.aten.gelu_backward, "silu": _silu_backward}


def _affine(o: Tensor, gain: Tensor | None, bias: Tensor | None) -> Tensor:
    if gain is not None:
        o = o * gain
    return o if bias is None else o + bias


def token_grads(base: list[Tensor], k: Tensor, v: Tensor, activation: str, residual: bool, norm: bool,
                gain: Tensor | None = None, bias: Tensor | None = None):  # fmt: skip
    """Per layer, the factors (delta_i, x_i) of the gradient u_i = delta_i^T x_i of ||M_base(k) - v||^2.

    base: per layer [N, d_out, d_in]; k, v: [N, 1, D]; gain, bias: the LayerNorm's [N, 1, D] or None.
    Returns two lists of [N, 1, d_out] and [N, 1, d_in].
    """
    act, act_bwd = ACTIVATIONS[activation], ACT_BACKWARDS[activation]
    xs, ps = [k], [torch.bmm(k, base[0].mT)]
    for w in base[1:]:
        xs.append(act(ps[-1]))
        ps.append(torch.bmm(xs[-1], w.mT))
    p = ps[-1]
    if norm:  # ATen's LayerNorm kernels, whose backward autograd can differentiate again
        o, mean, rstd = torch.native_layer_norm(p, p.shape[-1:], None, None, LN_EPS)
        out = _affine(o, gain, bias)
    else:
        out = p
    delta = 2.0 * (out + k - v if residual else out - v)
    if norm:
        if gain is not None:
            delta = delta * gain
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
    theta: Gate,
    eta: Gate,
    alpha: Gate,
    params: tuple[Tensor, ...],
    chunk_size: int = 16,
    activation: str = "gelu",
    residual: bool = True,
    state: MemoryState | None = None,
    norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    forget_to_init: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Titans memory, token by token with hand-written gradients, for decoding: same contract
    and results as naive_recurrent_titans_memory.

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
        norm_weight: [H, D] the LayerNorm's gain per head, or None (no gain); only with ``norm``.
        norm_bias: [H, D] the LayerNorm's bias per head, or None; only with ``norm``.
        forget_to_init: forget toward M_0 (M_t - M_0 = (1 - alpha_t)(M_{t-1} - M_0) + S_t), not toward 0.

    Returns:
        y: [B, H, T, D] retrievals M_t(q_t), in the dtype of q.
        state: the MemoryState after the last token, to continue the sequence exactly.
    """
    act = get_activation(activation)
    B, H, T, D = q.shape
    dtype, out_dtype = compute_dtype(q.dtype, params[0].dtype), q.dtype
    d_ins = [p.shape[-1] for p in params]
    # one value per head for every layer (decoding's common case) takes no per-layer bookkeeping per token
    shared = all(isinstance(g, Tensor) and g.dim() == 3 for g in (theta, eta, alpha))
    if not shared:
        gates = [layer_gates(g, d_ins, name) for g, name in zip((theta, eta, alpha), GATE_NAMES, strict=True)]
    if state is None:
        state = initial_state(params, B, dtype)
    pos = state.pos

    def flat(t: Tensor) -> Tensor:  # batch and heads as one dimension, for bmm
        return t.reshape(B * H, *t.shape[2:])

    weights, momentum, base = (
        [flat(t) for t in group] for group in (state.weights, state.momentum, state.base)
    )
    anchor = [flat(t) for t in initial_state(params, B, dtype).weights] if forget_to_init else None
    gain, bias = (
        None if p is None or not norm else flat(p.to(dtype).expand(B, H, D)).unsqueeze(1)
        for p in (norm_weight, norm_bias)
    )
    ys = []
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (flat(t).to(dtype) for t in (q, k, v))
        # per gate, per layer [N, T, C], the same tensor for the layers that share it; the forget gate
        # enters as 1 - alpha
        if shared:
            th_all, et_all, al_all = (flat(g).to(dtype).unsqueeze(-1) for g in (theta, eta, alpha))
            per_layer, kp_all, L = None, 1 - al_all, len(params)
        else:
            per_layer = [
                _flat_gates(g, flat, dtype, keep=name == "alpha")
                for g, name in zip(gates, GATE_NAMES, strict=True)
            ]
            distinct = {id(g): g for gate in per_layer for g in gate}
        for t in range(T):
            if pos == 0:
                base = weights
            q_t, k_t, v_t = q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1]  # [N, 1, D]
            deltas, xs = token_grads(base, k_t, v_t, activation, residual, norm, gain, bias)
            if per_layer is None:
                th, et, kp = ([g[:, t : t + 1]] * L for g in (th_all, et_all, kp_all))
            else:
                now = {key: g[:, t : t + 1] for key, g in distinct.items()}
                th, et, kp = ([now[id(g)] for g in gate] for gate in per_layer)  # each per layer [N, 1, C]
            # S = S diag(eta) - delta^T (theta * x);  W = W diag(1 - alpha) + S (or toward M_0)
            momentum = [
                (s * e).baddbmm_(d.mT, th_i * x, alpha=-1.0)
                for s, e, th_i, d, x in zip(momentum, et, th, deltas, xs, strict=True)
            ]
            if anchor is None:
                weights = [(w * p).add_(s) for w, p, s in zip(weights, kp, momentum, strict=True)]
            else:
                weights = [((w - a) * p).add_(a).add_(s) for w, a, p, s in zip(weights, anchor, kp, momentum,
                                                                           strict=True)]  # fmt: skip
            h = q_t
            for i, w in enumerate(weights):
                h = torch.bmm(act(h) if i > 0 else h, w.mT)
            if norm:
                h = _affine(torch.nn.functional.layer_norm(h, h.shape[-1:], eps=LN_EPS), gain, bias)
            ys.append(h + q_t if residual else h)
            pos = (pos + 1) % chunk_size
        y = torch.cat(ys, dim=1) if ys else q.new_zeros(B * H, 0, D)
    if pos == 0:
        base = weights

    def unflat(ts: list[Tensor]) -> tuple[Tensor, ...]:
        return tuple(t.view(B, H, *t.shape[1:]) for t in ts)

    return y.view(B, H, T, D).to(out_dtype), MemoryState(unflat(weights), unflat(momentum), unflat(base), pos)


def _flat_gates(gates: list[Tensor], flat, dtype: torch.dtype, keep: bool) -> list[Tensor]:
    """Per layer [B, H, T, C] -> [N, T, C] in dtype (1 - g when ``keep``), converted once per distinct
    tensor, so that a gate the layers share stays one tensor."""
    done: dict[int, Tensor] = {}
    for g in gates:
        if id(g) not in done:
            g2 = flat(g).to(dtype)
            done[id(g)] = 1 - g2 if keep else g2
    return [done[id(g)] for g in gates]
