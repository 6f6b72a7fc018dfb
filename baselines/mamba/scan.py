"""Mamba's selective scan, blocked so that forward and backward are both linear in the length.

Per channel d and state index n the scan is the first-order linear recurrence

    h_t = a_t h_{t-1} + b_t        a_t = exp(delta_t A[d, n])        b_t = delta_t u_t B_t[n]

and y_t = sum_n C_t[n] h_t[n]. mamba-ssm's pure-PyTorch ``selective_scan_ref`` materialises a and b for
all steps, runs L Python steps and leaves the backward to autograd through them (quadratic in L in
practice). Here the whole scan is one autograd node with a hand-written backward, and time is cut into
a few blocks that are processed side by side:

1. every block but the last is scanned from a zero state, keeping only its end state;
2. the true state entering each block is carried across blocks (one small step per block; a block's
   total decay is exp(A * sum of its deltas));
3. every block is scanned again from its true entering state, keeping all states.

Each step of (1) and (3) is a few small elementwise ops over all blocks at once. The drives b_t come
from one batched outer product, into the buffer that (3) then fills with the states; the decays a_t
are formed per step from the small (L, b, d) delta, so the only tensor of size L x b x d x N is the
states h, kept for the backward. The block count is chosen so that one step touches about STEP_NUMEL
numbers: PyTorch keeps ops that small on one thread, so these many small ops never wait for a second
thread (which costs milliseconds per op on a busy machine), while Python's per-op overhead is still
spread over enough work; the steps per block are then about max(sqrt(L), L b d N / STEP_NUMEL).

The backward runs the adjoint of the recurrence, g_t = dLoss/dh_t + a_{t+1} g_{t+1}, through the same
three phases in reverse time, keeping g_t and g_t a_t h_{t-1} (the gradient on delta_t A); the input
gradients are then batched matmuls and sums over all steps. Decays are only multiplied, never divided
out, so strong decay underflows harmlessly to 0. With STEP_NUMEL state entries (b d N) or more there
is a single block (the bench's Mamba sizes), and every step is one op over the whole state.

Internally tensors are time-major with the channels split into groups: delta and u (L, b, G, Dg, 1),
A (G, Dg, N), B and C (L, b, G, 1, N), states (b, G, Dg, N); without groups G = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.modules.dtypes import compute_dtype

# Numbers one step of the scan touches (all blocks together): enough to spread Python's per-op overhead,
# small enough to stay in cache and far below PyTorch's parallel grain (32k elements), so these many small
# ops never wait for a second thread (milliseconds per op on a busy machine).
STEP_NUMEL = 4096
# exp(x) is computed as exp2(x log2 e): torch.exp goes through MKL's vector math, which splits anything
# above 2k elements over threads, while exp2 follows the 32k grain like the other elementwise ops.
LOG2_E = 1.0 / math.log(2.0)


def default_chunk(length: int, state_numel: int) -> int:
    """Steps per block: about STEP_NUMEL / state_numel blocks, and at most sqrt(length) of them."""
    n_blocks = max(1, min(STEP_NUMEL // max(state_numel, 1), math.isqrt(max(length, 1))))
    return -(-length // n_blocks)


def _steps(x: torch.Tensor, n_blocks: int, blocks: slice = slice(None)) -> tuple[torch.Tensor, ...]:
    """(L, ...) -> one view (n_chosen_blocks, ...) per step within a block."""
    return x.view(n_blocks, x.shape[0] // n_blocks, *x.shape[1:])[blocks].unbind(1)


def _block_decay(delta: torch.Tensor, A2: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Product of each block's decays, exp(A * sum of the block's deltas): (n_blocks, b, G, Dg, N)."""
    return torch.exp2(delta.view(n_blocks, -1, *delta.shape[1:]).sum(1) * A2)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(L, b, G, r, c) -> (L b G, r, c), for batched matmuls over all steps."""
    return x.flatten(0, 2)


def _scan_forward(
    delta: torch.Tensor,
    A2: torch.Tensor,
    dx: torch.Tensor,
    B: torch.Tensor,
    h0: torch.Tensor | None,
    n_blocks: int,
) -> torch.Tensor:
    """delta, dx = delta * u (L, b, G, Dg, 1); A2 = A log2(e) (G, Dg, N); B (L, b, G, 1, N);
    h0 (b, G, Dg, N) or None -> states h (L, b, G, Dg, N). L must be a multiple of n_blocks."""
    state_shape = (*dx.shape[1:-1], A2.shape[-1])
    # the drives b_t = dx_t B_t of all steps in one batched outer product; phase 3 overwrites them
    # step by step with the states
    h = torch.bmm(_rows(dx), _rows(B)).view(delta.shape[0], *state_shape)
    entering = dx.new_zeros(n_blocks, *state_shape)
    if h0 is not None:
        entering[0] = h0
    if n_blocks > 1:
        # 1. end state of every block but the last, each started from zero
        head = slice(0, -1)
        end = None
        for delta_i, drive_i in zip(*(_steps(x, n_blocks, head) for x in (delta, h)), strict=True):
            end = drive_i if end is None else torch.addcmul(drive_i, torch.exp2(delta_i * A2), end)
        # 2. carry the true state across blocks
        totals = _block_decay(delta, A2, n_blocks)
        for j in range(1, n_blocks):
            entering[j] = torch.addcmul(end[j - 1], totals[j - 1], entering[j - 1])

    # 3. every block again from its true entering state, keeping all states
    state = entering
    for delta_i, h_i in zip(*(_steps(x, n_blocks) for x in (delta, h)), strict=True):
        state = torch.addcmul(h_i, torch.exp2(delta_i * A2), state, out=h_i)
    return h


def _scan_backward(
    grad_y: torch.Tensor,
    grad_last: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    dx: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None,
    h: torch.Tensor,
    n_blocks: int,
) -> tuple[torch.Tensor, ...]:
    """Gradients on (delta, A, dx, B, C, h0) from those on y (L, b, G, Dg, 1) and on the last state;
    shapes as in the forward."""
    A2 = A * LOG2_E

    # The adjoint entering each block from its right, already multiplied by the decay linking the two
    # blocks; the gradient on the last state enters the last block this way.
    entering = torch.zeros_like(h[:n_blocks])
    entering[-1] = grad_last
    if n_blocks > 1:
        # 1. adjoint at the first step of every block but the first, each started from zero
        tail = slice(1, None)
        local = decay_next = None
        steps = zip(*(_steps(x, n_blocks, tail) for x in (delta, grad_y, C)), strict=True)
        for delta_i, grad_y_i, C_i in reversed(list(steps)):
            direct = grad_y_i * C_i  # dLoss/dh_t through y_t
            local = direct if local is None else torch.addcmul(direct, decay_next, local)
            decay_next = torch.exp2(delta_i * A2)
        # 2. carry it across blocks, right to left
        totals = _block_decay(delta, A2, n_blocks)[1:]
        for j in range(n_blocks - 1, 0, -1):
            entering[j - 1] = torch.addcmul(decay_next[j - 1] * local[j - 1], totals[j - 1], entering[j])

    # 3. every block again from its true entering adjoint, keeping g_t and g_t a_t h_{t-1}
    g = torch.empty_like(h)
    grad_log_decay = torch.empty_like(h)  # g_t a_t h_{t-1}: the gradient on delta_t A
    h_prev_first = torch.zeros_like(entering)  # h_{t-1} at each block's first step
    if h0 is not None:
        h_prev_first[0] = h0
    h_steps = _steps(h, n_blocks)
    h_prev_first[1:] = h_steps[-1][:-1]
    grad_A_parts = torch.zeros_like(entering)  # summed over blocks and batch at the end
    carried = entering
    steps = zip(*(_steps(x, n_blocks) for x in (delta, C, grad_y, g, grad_log_decay)), strict=True)
    for i, (delta_i, C_i, grad_y_i, g_i, grad_log_decay_i) in reversed(list(enumerate(steps))):
        torch.addcmul(carried, grad_y_i, C_i, out=g_i)
        carried = torch.exp2(delta_i * A2) * g_i  # a_t g_t, passed on to step t - 1
        torch.mul(carried, h_steps[i - 1] if i > 0 else h_prev_first, out=grad_log_decay_i)
        grad_A_parts.addcmul_(grad_log_decay_i, delta_i)

    # the reductions over N or Dg, as batched matmuls over all steps at once (the small ops in the loop
    # above stay elementwise: reductions and matmuls use every thread whatever their size)
    grad_delta = (grad_log_decay * A).sum(-1, keepdim=True)
    grad_A = grad_A_parts.sum((0, 1))
    grad_dx = torch.bmm(_rows(g), _rows(B).transpose(-1, -2)).view(dx.shape)
    grad_B = torch.bmm(_rows(dx).transpose(-1, -2), _rows(g)).view(B.shape)
    grad_C = torch.bmm(_rows(grad_y).transpose(-1, -2), _rows(h)).view(C.shape)
    grad_h0 = carried[0] if h0 is not None else None
    return grad_delta, grad_A, grad_dx, grad_B, grad_C, grad_h0


class _SelectiveScan(torch.autograd.Function):
    """(delta, A, dx, B, C, h0) -> (y, last state); see the module docstring."""

    @staticmethod
    def forward(ctx, delta, A, dx, B, C, h0, n_blocks):
        h = _scan_forward(delta, A * LOG2_E, dx, B, h0, n_blocks)
        ctx.save_for_backward(delta, A, dx, B, C, h0, h)
        ctx.n_blocks = n_blocks
        # y_t = h_t C_t, one batched matmul over all steps
        y = torch.bmm(_rows(h), _rows(C).transpose(-1, -2)).view(dx.shape)
        return y, h[-1].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        delta, A, dx, B, C, h0, h = ctx.saved_tensors
        return (*_scan_backward(grad_y, grad_last, delta, A, dx, B, C, h0, h, ctx.n_blocks), None)


def _time_major(M: torch.Tensor, groups: int) -> torch.Tensor:
    """B or C, (b, N, L) or (b, G, N, L) -> (L, b, G, 1, N)."""
    if M.dim() == 3:
        M = M[:, None]
    if M.dim() != 4 or M.shape[1] != groups:
        raise ValueError(f"B and C must be (batch, N, L) or (batch, G, N, L), got {tuple(M.shape)}")
    return M.permute(3, 0, 1, 2)[:, :, :, None]


def selective_scan(
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
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same function as mamba-ssm's ``selective_scan_ref`` (plus an optional initial state).

    u, delta, z (b, d, L); A (d, N), real; B, C (b, N, L) or, with G groups, (b, G, N, L) where channel
    c reads group c // (d // G); D, delta_bias (d,); initial_state (b, d, N) or None
    -> out (b, d, L) in u's dtype [, last state (b, d, N) in at least float32].
    Complex A and time-invariant B/C of shape (d, N), which the reference also accepts, are not
    supported (Mamba uses neither). ``chunk_size`` (steps per block) None picks it from the sizes.
    """
    if A.is_complex():
        raise NotImplementedError("complex A is not supported")
    dtype = compute_dtype(u.dtype)
    batch, dim, length = u.shape
    d_state = A.shape[1]
    groups = B.shape[1] if B.dim() == 4 else 1
    if dim % groups:
        raise ValueError(f"{dim} channels do not split into {groups} groups")
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    x_in = u.to(dtype)

    def channels_time_major(x: torch.Tensor) -> torch.Tensor:
        return x.permute(2, 0, 1).reshape(length, batch, groups, dim // groups, 1)

    delta_t = channels_time_major(delta)
    dx = delta_t * channels_time_major(x_in)
    B_t, C_t = _time_major(B.to(dtype), groups), _time_major(C.to(dtype), groups)
    chunk = chunk_size or default_chunk(length, batch * dim * d_state)
    pad = (-length) % chunk
    if pad:  # padded steps have delta = 0 (no decay) and dx = 0: the state passes through unchanged
        delta_t, dx, B_t, C_t = (
            torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) for x in (delta_t, dx, B_t, C_t)
        )
    h0 = None if initial_state is None else initial_state.to(dtype).reshape(batch, groups, -1, d_state)
    A_g = A.to(dtype).reshape(groups, dim // groups, d_state)
    # Autocast would run the scan's batched matmuls in half precision and hand its backward mixed dtypes:
    # the scan computes in `dtype` whatever the caller's autocast says.
    with torch.autocast(u.device.type, enabled=False):
        y, last = _SelectiveScan.apply(delta_t, A_g, dx, B_t, C_t, h0, (length + pad) // chunk)

    y = y[:length].reshape(length, batch, dim).permute(1, 2, 0)
    if D is not None:
        y = y + x_in * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(u.dtype)
    return (out, last.reshape(batch, dim, d_state)) if return_last_state else out
