"""Reference Titans neural memory: a plain per-token loop, written to be obviously correct.

Semantics (Behrouz et al. 2024, §3.1-3.2, mini-batch gradient descent inside a chunk):
    u_t = grad_W ||M_base(k_t) - v_t||^2      (gradient at the memory left by the previous chunk)
    S_t = eta_t S_{t-1} - theta_t u_t           (momentum, "surprise")
    M_t = (1 - alpha_t) M_{t-1} + S_t           (forgetting)
    y_t = M_t(q_t)                              (retrieval with the updated memory)
With ``forget_to_init`` the forgetting pulls the memory toward its initial weights M_0 instead of toward 0:
    M_t - M_0 = (1 - alpha_t) (M_{t-1} - M_0) + S_t.
The memory M is a bias-free MLP, M(x) = x + W_L act(... act(W_1 x)) with the residual, else without it;
with ``norm``, M(x) = x + LN(W_L act(...)), the paper's camera-ready form: a LayerNorm on the last layer's
output, which keeps retrieval bounded however large the weights grow, optionally with a learnable gain and
bias per head (``norm_weight``, ``norm_bias``).

The gates. Each of theta, eta, alpha is one scalar per head and token ([B, H, T], shared by every memory
layer) or one tensor per memory layer, each [B, H, T] (one scalar per head and layer) or [B, H, T, d_in]
(one value per channel). A channel is a column of a layer's weight W [d_out, d_in], an input feature of
the layer: the gates act as W diag(g), so that
    S_t = S_{t-1} diag(eta_t) - u_t diag(theta_t),     M_t = M_{t-1} diag(1 - alpha_t) + S_t.
Why the input axis. The paper says the forget gate is channel-wise (alpha_t in [0,1]^d) and leaves open
which axis of a matrix weight a channel is. (1) The memory is an associative map read by its key, M(k) = W k
for a linear memory. Gated linear attention (GLA), the matrix-state model with a channel-wise data-dependent
decay, keeps its state S [d_k, d_v], read as q S, and decays it as diag(alpha_t) S: per key channel. Our
W [d_out, d_in] is that S transposed, so the key axis is d_in. (Gated DeltaNet, to which the paper reduces
linear Titans, has one scalar per head: our "head" form.) (2) Every write is an outer product
u = delta x^T with x the layer's input; a gate on the input axis weights x per channel
(u diag(theta) = delta (theta * x)^T) and every past write through the decays the same way, so each
column of the memory is an independent scalar recurrence and the chunk closed form (chunk.py) holds per
column unchanged. (3) Retrieval reads W diag(g) z = W (g * z): decay and reading meet in the input
features, where the queries and keys live for the first layer. The output axis would work algebraically
too; it would break (3), and chunk.py's stored layout (W^T, one row per input channel), where a factor per
row is one broadcast multiply.

This file also defines MemoryState and the gate and LayerNorm helpers shared with chunk.py and
fused_recurrent.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models.modules.dtypes import compute_dtype

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}
GATE_NAMES = ("theta", "eta", "alpha")
# One gate: [B, H, T] shared by every memory layer, or per layer [B, H, T] or [B, H, T, d_in].
Gate = Tensor | Sequence[Tensor]


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def layer_gates(gate: Gate, d_ins: Sequence[int], name: str = "gate") -> list[Tensor]:
    """A gate in any accepted form as one tensor per memory layer, [B, H, T, C] with C = 1 (one value per
    head) or C = that layer's d_in (one per channel). A gate shared by the layers is the same tensor in
    every entry."""
    if isinstance(gate, Tensor):
        if gate.dim() != 3:
            raise ValueError(f"{name} shared by the memory layers must be [B, H, T], got {tuple(gate.shape)}")
        return [gate.unsqueeze(-1)] * len(d_ins)
    gates = list(gate)
    if len(gates) != len(d_ins):
        raise ValueError(f"{name}: {len(gates)} tensors for {len(d_ins)} memory layers")
    out = []
    for i, (g, d) in enumerate(zip(gates, d_ins, strict=True)):
        if g.dim() == 3:
            g = g.unsqueeze(-1)
        if g.dim() != 4 or g.shape[-1] not in (1, d):
            raise ValueError(f"{name} of memory layer {i} must be [B, H, T] or [B, H, T, {d}], "
                             f"got {tuple(g.shape)}")  # fmt: skip
        out.append(g)
    return out


class MemoryState(NamedTuple):
    """Everything needed to continue a sequence exactly where a previous call stopped.

    weights:  per layer [B, H, d_out, d_in], the memory after the last token seen.
    momentum: per layer [B, H, d_out, d_in], the surprise S after the last token seen.
    base:     per layer [B, H, d_out, d_in], the memory at the start of the current chunk; gradients of the
              remaining tokens of that chunk are taken here. Equal to `weights` when pos == 0.
    pos:      how many tokens of the current chunk have been consumed (0 <= pos < chunk_size).
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...]
    base: tuple[Tensor, ...]
    pos: int

    def nbytes(self) -> int:
        """Bytes held by the state's tensors (all three groups, as decoding mid-chunk needs them all)."""
        tensors = (*self.weights, *self.momentum, *self.base)
        return sum(t.numel() * t.element_size() for t in tensors)


def initial_state(params: tuple[Tensor, ...], batch: int, dtype: torch.dtype) -> MemoryState:
    """The state before any token: weights = params (broadcast over the batch), zero momentum."""
    weights = tuple(p.to(dtype).unsqueeze(0).expand(batch, *p.shape) for p in params)
    momentum = tuple(torch.zeros_like(w) for w in weights)
    return MemoryState(weights, momentum, weights, 0)


LN_EPS = 1e-5


def layer_norm(h: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """LayerNorm over the last dimension of h [B, H, N, D], with an optional gain and bias per head [H, D]."""
    h = F.layer_norm(h, h.shape[-1:], eps=LN_EPS)
    if weight is not None:
        h = h * weight.to(h.dtype).unsqueeze(-2)
    if bias is not None:
        h = h + bias.to(h.dtype).unsqueeze(-2)
    return h


def mlp_forward(
    weights: tuple[Tensor, ...],
    x: Tensor,
    act,
    residual: bool,
    norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
) -> Tensor:
    """Memory forward. weights: per layer [B, H, d_out, d_in]; x: [B, H, N, D] -> [B, H, N, D]; the norm's
    gain and bias [H, D] or None."""
    h = x
    for i, w in enumerate(weights):
        if i > 0:
            h = act(h)
        h = h @ w.transpose(-1, -2)
    if norm:
        h = layer_norm(h, norm_weight, norm_bias)
    return x + h if residual else h


def memory_grads(
    weights: tuple[Tensor, ...],
    k: Tensor,
    v: Tensor,
    activation: str = "gelu",
    residual: bool = True,
    norm: bool = False,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Gradient of ||M(k) - v||^2 w.r.t. each layer, by autograd, one token per batch entry and head.

    weights: per layer [B, H, d_out, d_in]; k, v: [B, H, D]; norm_weight, norm_bias: [H, D] or None.
    Returns per layer [B, H, d_out, d_in]. Differentiable (create_graph) whenever grad mode is on, so the
    outer loop can train through it.
    """
    act = get_activation(activation)
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        # The inner loop's gradient is a partial derivative: k and v are data. When they depend on the
        # weights themselves (MAC's keys come from attention over the memory's own retrieval), autograd
        # w.r.t. the weights would add those paths, so it differentiates w.r.t. fresh aliases instead.
        # Fresh leaves when no graph is wanted or the weights carry none (views made under no_grad may still
        # say requires_grad while recording nothing).
        weights = tuple(
            w.view_as(w) if create_graph and w.requires_grad else w.detach().requires_grad_() for w in weights
        )
        out = mlp_forward(weights, k.unsqueeze(-2), act, residual, norm, norm_weight, norm_bias).squeeze(-2)
        # Summing over batch and heads is harmless: every (b, h) has its own weight slice.
        loss = (out - v).pow(2).sum()
        grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
    return grads if create_graph else tuple(g.detach() for g in grads)


def naive_recurrent_titans_memory(
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
    """Titans memory, one token at a time: the reference every other op is tested against.

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
    dtype, out_dtype = compute_dtype(q.dtype, params[0].dtype), q.dtype  # memory math in float32 at least
    d_ins = [p.shape[-1] for p in params]
    gates = [layer_gates(g, d_ins, name) for g, name in zip((theta, eta, alpha), GATE_NAMES, strict=True)]
    if state is None:
        state = initial_state(params, B, dtype)
    anchor = initial_state(params, B, dtype).weights
    weights, momentum, base, pos = list(state.weights), list(state.momentum), list(state.base), state.pos
    ln = dict(norm=norm, norm_weight=norm_weight, norm_bias=norm_bias)

    ys = []
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        for t in range(T):
            if pos == 0:
                base = list(weights)
            grads = memory_grads(tuple(base), k[:, :, t], v[:, :, t], activation, residual, **ln)
            for i, u in enumerate(grads):
                # [B, H, 1, C]: a gate scales the columns (input channels) of W [d_out, d_in]
                th, et, al = (g[i][:, :, t, None, :].to(dtype) for g in gates)
                momentum[i] = et * momentum[i] - th * u
                if forget_to_init:
                    weights[i] = anchor[i] + (1 - al) * (weights[i] - anchor[i]) + momentum[i]
                else:
                    weights[i] = (1 - al) * weights[i] + momentum[i]
            ys.append(mlp_forward(tuple(weights), q[:, :, t : t + 1], act, residual, **ln))
            pos = (pos + 1) % chunk_size
        y = torch.cat(ys, dim=2) if ys else q.new_zeros(B, H, 0, D)
    if pos == 0:
        base = list(weights)
    return y.to(out_dtype), MemoryState(tuple(weights), tuple(momentum), tuple(base), pos)
