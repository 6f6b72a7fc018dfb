"""Per-step references for Mamba's selective scan and Mamba2's SSD, and their one-token decoding steps.

Selective scan (Mamba), per channel d and state index n, with x the hidden state:

    x_t = exp(delta_t A[d, n]) x_{t-1} + delta_t B_t[n] u_t          y_t = sum_n C_t[n] x_t[n] + D u_t

(then y * silu(z) when z is given), the same function as mamba-ssm's ``selective_scan_ref``.

SSD (Mamba2), per head with a scalar decay, state [P, N], X and A already multiplied by dt:

    S_t = exp(A_t) S_{t-1} + X_t B_t^T          Y_t = S_t C_t

the same function as mamba-ssm's ``ssd_minimal_discrete``. Everything is computed in at least float32;
outputs come back in the input dtype and states in the compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.modules.dtypes import compute_dtype


def _per_channel(M: torch.Tensor, dim: int) -> torch.Tensor:
    """Selective-scan B or C, (b, N, L) or (b, G, N, L) -> broadcastable (b, 1 or dim, N, L).
    With G groups, channel d reads group d // (dim // G)."""
    if M.dim() == 3:
        return M[:, None]
    if M.dim() == 4:
        groups = M.shape[1]
        if dim % groups:
            raise ValueError(f"{dim} channels do not split into {groups} groups")
        return M.repeat_interleave(dim // groups, dim=1)
    raise ValueError(f"B and C must be (batch, N, L) or (batch, G, N, L), got {tuple(M.shape)}")


def selective_scan_recurrent(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """u, delta, z (b, d, L); A (d, N) real; B, C (b, N, L) or (b, G, N, L); D, delta_bias (d,);
    initial_state (b, d, N) or None -> out (b, d, L) in u's dtype [, last state (b, d, N)]."""
    dtype = compute_dtype(u.dtype)
    batch, dim, length = u.shape
    x_in = u.to(dtype)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(dtype)
    B, C = _per_channel(B.to(dtype), dim), _per_channel(C.to(dtype), dim)
    x = x_in.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        x = torch.exp(dt * A) * x + dt * B[..., t] * x_in[:, :, t, None]
        ys.append((x * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + x_in * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(u.dtype)
    return (out, x) if return_last_state else out


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of the selective scan; returns (y, new state) and leaves ``state`` untouched
    (mamba-ssm's ``selective_state_update_ref`` updates it in place and returns y only).

    Mamba form: state (b, d, N), x, dt, z (b, d), A (d, N), B, C (b, N), D, dt_bias (d,).
    Head form: state (b, H, P, N), x, dt, z (b, H, P), A (H, P, N), B, C (b, G, N) with H % G == 0,
    D, dt_bias (H, P). y has x's shape and dtype.
    """
    heads = state.dim() == 4
    if not heads:  # the Mamba form is the head form with one head and one group
        state, x, dt, A, B, C = state[:, None], x[:, None], dt[:, None], A[None], B[:, None], C[:, None]
        D = None if D is None else D[None]
        z = None if z is None else z[:, None]
        dt_bias = None if dt_bias is None else dt_bias[None]
    dtype = compute_dtype(x.dtype)
    n_heads, groups = state.shape[1], B.shape[1]
    if n_heads % groups:
        raise ValueError(f"{n_heads} heads do not split into {groups} groups")
    B = B.to(dtype).repeat_interleave(n_heads // groups, dim=1)[:, :, None]  # (b, H, 1, N)
    C = C.to(dtype).repeat_interleave(n_heads // groups, dim=1)[:, :, None]
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    x_in = x.to(dtype)
    dt = dt[..., None]
    new_state = torch.exp(dt * A.to(dtype)) * state.to(dtype) + dt * B * x_in[..., None]
    y = (new_state * C).sum(-1)
    if D is not None:
        y = y + x_in * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(x.dtype)
    if not heads:
        y, new_state = y[:, 0], new_state[:, 0]
    return y, new_state


def ssd_step(
    state: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SSD token. state (b, H, P, N), x (b, H, P) already times dt, A (b, H) already times dt,
    B, C (b, G, N) with H % G == 0 -> (y (b, H, P) in x's dtype, new state (b, H, P, N))."""
    dtype = compute_dtype(x.dtype)
    n_heads, groups = x.shape[1], B.shape[1]
    if n_heads % groups:
        raise ValueError(f"{n_heads} heads do not split into {groups} groups")
    B = B.to(dtype).repeat_interleave(n_heads // groups, dim=1)
    C = C.to(dtype).repeat_interleave(n_heads // groups, dim=1)
    x_in = x.to(dtype)
    state = A.to(dtype).exp()[..., None, None] * state.to(dtype) + x_in[..., :, None] * B[..., None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return y.to(x.dtype), state


def ssd_recurrent(
    X: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """X (b, L, H, P) and A (b, L, H) already times dt; B, C (b, L, G, N) with H % G == 0;
    initial_states (b, H, P, N) or None -> (Y (b, L, H, P) in X's dtype, final state (b, H, P, N))."""
    batch, length, n_heads, head_dim = X.shape
    dtype = compute_dtype(X.dtype)
    if initial_states is None:
        state = X.new_zeros(batch, n_heads, head_dim, B.shape[-1], dtype=dtype)
    else:
        state = initial_states.to(dtype)
    ys = []
    for t in range(length):
        y, state = ssd_step(state, X[:, t], A[:, t], B[:, t], C[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), state
