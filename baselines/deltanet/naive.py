"""Per-token references for the delta rule and the gated delta rule, and their one-token steps.

The state S [B, H, K, V] is a fast-weight memory read as ``o = S^T q``. The delta rule writes only the
part of v that S does not already predict for k:

    u_t = beta_t * (v_t - S_{t-1}^T k_t)          S_t = S_{t-1} + k_t u_t^T          o_t = S_t^T (scale * q_t)

The gated rule first decays the whole memory by alpha_t = exp(g_t) (g is a log decay, <= 0):

    S'_t = alpha_t S_{t-1}                        u_t = beta_t * (v_t - S'_t^T k_t)  S_t = S'_t + k_t u_t^T

These match fla's ``delta_rule_recurrence`` and ``naive_recurrent_gated_delta_rule`` (whose default
scale is K**-0.5). k is used as given: callers L2-normalise it. Everything is computed in at least
float32; outputs come back in the input dtype and the state in the compute dtype.
"""

from __future__ import annotations

import torch

from models.modules.dtypes import compute_dtype


def delta_rule_step(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token. state [B, H, K, V], q, k [B, H, K], v [B, H, V], beta [B, H]
    -> (o [B, H, V], new state [B, H, K, V])."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    predicted = torch.einsum("bhkv,bhk->bhv", state, k)
    u = beta[..., None] * (v - predicted)
    state = state + k[..., :, None] * u[..., None, :]
    o = torch.einsum("bhkv,bhk->bhv", state, q * scale)
    return o, state


def gated_delta_rule_step(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token. state [B, H, K, V], q, k [B, H, K], v [B, H, V], g (log decay), beta [B, H]
    -> (o [B, H, V], new state [B, H, K, V])."""
    return delta_rule_step(state * g.exp()[..., None, None], q, k, v, beta, scale)


def _recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, length, dk = q.shape
    dtype = compute_dtype(q.dtype)
    q, k, v, beta = (x.to(dtype) for x in (q, k, v, beta))
    state = q.new_zeros(batch, heads, dk, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for t in range(length):
        if g is None:
            o, state = delta_rule_step(state, q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], scale)
        else:
            o, state = gated_delta_rule_step(
                state, q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t].to(dtype), beta[:, :, t], scale
            )
        outputs.append(o)
    o = torch.stack(outputs, dim=2) if outputs else v.new_zeros(v.shape)
    return o, state


def delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, T, K], v [B, H, T, V], beta [B, H, T], initial_state [B, H, K, V] or None
    -> (o [B, H, T, V], final state [B, H, K, V]). ``scale`` None means K**-0.5."""
    o, state = _recurrent(q, k, v, None, beta, scale, initial_state)
    return o.to(q.dtype), state


def gated_delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, H, T, K], v [B, H, T, V], g (log decay) and beta [B, H, T], initial_state [B, H, K, V]
    or None -> (o [B, H, T, V], final state [B, H, K, V]). ``scale`` None means K**-0.5."""
    o, state = _recurrent(q, k, v, g, beta, scale, initial_state)
    return o.to(q.dtype), state
