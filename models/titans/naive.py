"""Reference Titans neural memory: a plain per-token loop, written to be obviously correct.

Semantics (Behrouz et al. 2024, §3.1-3.2, mini-batch gradient descent inside a chunk):
    u_t = grad_W ||M_base(k_t) - v_t||^2      (gradient at the memory left by the previous chunk)
    S_t = eta_t S_{t-1} - theta_t u_t           (momentum, "surprise")
    M_t = (1 - alpha_t) M_{t-1} + S_t           (forgetting)
    y_t = M_t(q_t)                              (retrieval with the updated memory)
The memory M is a bias-free MLP, M(x) = x + W_L act(... act(W_1 x)) with the residual, else without it;
with ``norm``, M(x) = x + LN(W_L act(...)), the paper's camera-ready form: a LayerNorm without affine
parameters on the last layer's output, which keeps retrieval bounded however large the weights grow.
This file also defines MemoryState, shared with the chunked implementation in chunk.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models.modules.dtypes import compute_dtype

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


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


def layer_norm(h: Tensor) -> Tensor:
    """LayerNorm over the last dimension, without affine parameters."""
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS)


def mlp_forward(weights: tuple[Tensor, ...], x: Tensor, act, residual: bool, norm: bool = False) -> Tensor:
    """Memory forward. weights: per layer [B, H, d_out, d_in]; x: [B, H, N, D] -> [B, H, N, D]."""
    h = x
    for i, w in enumerate(weights):
        if i > 0:
            h = act(h)
        h = h @ w.transpose(-1, -2)
    if norm:
        h = layer_norm(h)
    return x + h if residual else h


def memory_grads(
    weights: tuple[Tensor, ...],
    k: Tensor,
    v: Tensor,
    activation: str = "gelu",
    residual: bool = True,
    norm: bool = False,
) -> tuple[Tensor, ...]:
    """Gradient of ||M(k) - v||^2 w.r.t. each layer, by autograd, one token per batch entry and head.

    weights: per layer [B, H, d_out, d_in]; k, v: [B, H, D]. Returns per layer [B, H, d_out, d_in].
    Differentiable (create_graph) whenever grad mode is on, so the outer loop can train through it.
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
        out = mlp_forward(weights, k.unsqueeze(-2), act, residual, norm).squeeze(-2)
        # Summing over batch and heads is harmless: every (b, h) has its own weight slice.
        loss = (out - v).pow(2).sum()
        grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
    return grads if create_graph else tuple(g.detach() for g in grads)


def naive_recurrent_titans_memory(
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
    """Titans memory, one token at a time: the reference every other op is tested against.

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
    dtype, out_dtype = compute_dtype(q.dtype, params[0].dtype), q.dtype  # memory math in float32 at least
    if state is None:
        state = initial_state(params, B, dtype)
    weights, momentum, base, pos = list(state.weights), list(state.momentum), list(state.base), state.pos

    ys = []
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        theta, eta, alpha = theta.to(dtype), eta.to(dtype), alpha.to(dtype)
        for t in range(T):
            if pos == 0:
                base = list(weights)
            grads = memory_grads(tuple(base), k[:, :, t], v[:, :, t], activation, residual, norm)
            th, et = theta[:, :, t, None, None], eta[:, :, t, None, None]
            keep = 1 - alpha[:, :, t, None, None]
            for i, u in enumerate(grads):
                momentum[i] = et * momentum[i] - th * u
                weights[i] = keep * weights[i] + momentum[i]
            ys.append(mlp_forward(tuple(weights), q[:, :, t : t + 1], act, residual, norm))
            pos = (pos + 1) % chunk_size
        y = torch.cat(ys, dim=2) if ys else q.new_zeros(B, H, 0, D)
    if pos == 0:
        base = list(weights)
    return y.to(out_dtype), MemoryState(tuple(weights), tuple(momentum), tuple(base), pos)
