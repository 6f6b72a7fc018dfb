"""The chunk coefficients of gates per channel (chunk.py), forward and backward written by hand.

With a channel per column of a memory layer, every coefficient of the chunk closed form gains a channel
index: per chunk and head, G alone is n x n x C numbers where one coefficient per head needs n x n. Built by
autograd from its row recurrences (below), that costs a dozen passes over n^2 C numbers and keeps their
intermediates; here the forward writes each row straight into G and the backward runs the same
recurrences in reverse, both over the nonzero part of each row only (G[j, i] = 0 for i > j).

The recurrences (per channel, rows over i, chunk tokens j = 0..n-1, a = 1 - alpha, e = eta):
    p_j = e_j p_{j-1} + onehot(j)               p_j[i] = prod_{i<m<=j} e_m  (P_E's row j)
    r_j = a_j r_{j-1} - theta * p_j             r_j = -G[j, :]
    A_j = a_j A_{j-1},  E_j = e_j E_{j-1},  c_j = a_j c_{j-1} + E_j
and -s = -theta * p_{n-1}, e = E_{n-1}: products and sums of numbers in [0, 1] only, nothing divided, as
stable as chunk_coefficients' interval products. The backward carries lambda_r, lambda_p (the gradients
w.r.t. r_j and p_j) from the last row to the first:
    lambda_r_{j-1} = dR_{j-1} + a_j lambda_r_j,   lambda_p_j = -theta * lambda_r_j + e_{j+1} lambda_p_{j+1},
    d a_j = sum_i lambda_r_j r_{j-1},   d e_j = sum_i lambda_p_j p_{j-1},   d(-theta) = sum_j lambda_r_j p_j,
and the same for the scalar chains A, E, c.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _rows(neg_theta: Tensor, eta: Tensor, keep: Tensor, into: Tensor | None = None, with_r: bool = True):
    """Yield, for j = 0..n-1, (j, p_j, r_j) as prefixes [..., :j+1, C]. p_j is a working buffer, overwritten
    by the next step; r_j is row j of ``into`` [..., n, n, C] (zeros), written there, or without it a
    working buffer too (None if not ``with_r``). Copy what must be kept."""
    n = neg_theta.shape[-2]
    p = torch.zeros_like(neg_theta)
    r = torch.zeros_like(neg_theta) if into is None and with_r else None
    e_rows, a_rows = eta.unsqueeze(-2).unbind(-3), keep.unsqueeze(-2).unbind(-3)  # each [..., 1, C]
    for j in range(n):
        pre_p, nt = p[..., : j + 1, :], neg_theta[..., : j + 1, :]
        if j:
            pre_p[..., :j, :].mul_(e_rows[j])
        pre_p[..., j, :] = 1.0
        if not with_r:
            pre_r = None
        elif into is None:
            pre_r = r[..., : j + 1, :]
            if j:
                pre_r.mul_(a_rows[j])
            pre_r.addcmul_(nt, pre_p)
        else:  # straight into row j: a_j r_{j-1} - theta * p_j
            pre_r = torch.mul(nt, pre_p, out=into[..., j, : j + 1, :])
            if j:
                pre_r.addcmul_(a_rows[j], into[..., j - 1, : j + 1, :])
        yield j, pre_p, pre_r


def _chains(eta: Tensor, keep: Tensor):
    """A_j, E_j, c_j: [..., n, C] each."""
    A, E, c = torch.cumprod(keep, dim=-2), torch.cumprod(eta, dim=-2), torch.empty_like(keep)
    c[..., 0, :] = E[..., 0, :]
    for j in range(1, keep.shape[-2]):
        c[..., j, :] = torch.addcmul(E[..., j, :], keep[..., j, :], c[..., j - 1, :])
    return A, E, c


class ChannelCoefficients(torch.autograd.Function):
    """(-theta, eta, 1 - alpha) [..., n, C], optionally (z, x) [..., n, C] -> A, c [..., n, C]; -G
    [..., n, n, C] (j, i, channel), or with (z, x) its dual form -sum_c G[:, :, c] z_c x_c [..., n, n];
    -s [..., n, C]; e [..., C]; -G's last row [..., n, C]. The gates must have one shape."""

    @staticmethod
    def forward(ctx, neg_theta, eta, keep, z, x):
        n = neg_theta.shape[-2]
        pair = z is not None
        out = neg_theta.new_zeros(*neg_theta.shape[:-2], n, n, *(() if pair else neg_theta.shape[-1:]))
        for j, p_j, r_j in _rows(neg_theta, eta, keep, into=None if pair else out):
            if pair:  # row j of the dual form: sum_c r_j[i, c] x[i, c] z[j, c]
                out[..., j, : j + 1] = ((r_j * x[..., : j + 1, :]) @ z[..., j, :, None]).squeeze(-1)
            p, r = p_j, r_j  # at the last row, whole
        A, E, c = _chains(eta, keep)
        neg_s = neg_theta * p
        ctx.save_for_backward(neg_theta, eta, keep, z, x, A, E, c, None if pair else out)
        return A, c, out, neg_s, E[..., -1, :], r.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, gA, gc, gout, g_neg_s, g_e, g_last):
        neg_theta, eta, keep, z, x, A, E, c, rows = ctx.saved_tensors
        n, pair = neg_theta.shape[-2], z is not None
        # the rows again: r_j from the forward's -G, or formed anew with the dual form
        rows = torch.zeros_like(neg_theta).unsqueeze(-3).repeat_interleave(n, -3) if pair else rows
        ps, rs = [], []
        for j, p, r in _rows(neg_theta, eta, keep, into=rows if pair else None, with_r=pair):
            ps.append(p.clone())
            rs.append(r if pair else rows[..., j, : j + 1, :])
        g_nt, g_eta, g_keep = (torch.zeros_like(neg_theta) for _ in range(3))
        gz = torch.zeros_like(z) if pair else None
        gx = torch.zeros_like(x) if pair else None
        lam_r = torch.zeros_like(neg_theta) if g_last is None else g_last.clone()
        lam_p = torch.zeros_like(neg_theta)
        if g_neg_s is not None:  # -s = -theta * p_{n-1}
            g_nt.addcmul_(g_neg_s, ps[-1])
            lam_p.addcmul_(g_neg_s, neg_theta)
        for j in range(n - 1, -1, -1):
            size = j + 1
            lr, lp = lam_r[..., :size, :], lam_p[..., :size, :]
            if j < n - 1:  # carried from row j + 1: r_{j+1} = a_{j+1} r_j + ...,  p_{j+1} = e_{j+1} p_j + ...
                lr.mul_(keep[..., j + 1 : j + 2, :])
                lp.mul_(eta[..., j + 1 : j + 2, :])
            if gout is not None:
                if pair:
                    go = gout[..., j, :size, None]  # [..., size, 1]
                    xs, zj = x[..., :size, :], z[..., j : j + 1, :]
                    lr.addcmul_(go * xs, zj)
                    gx[..., :size, :].addcmul_(go * rs[j], zj)
                    gz[..., j, :] = ((go * rs[j]) * xs).sum(-2)
                else:
                    lr.add_(gout[..., j, :size, :])
            g_nt[..., :size, :].addcmul_(lr, ps[j])
            lp.addcmul_(lr, neg_theta[..., :size, :])
            if j:
                g_keep[..., j, :] = (lr[..., :j, :] * rs[j - 1]).sum(-2)
                g_eta[..., j, :] = (lp[..., :j, :] * ps[j - 1][..., :j, :]).sum(-2)
            # lam_r, lam_p now hold the gradients w.r.t. r_j, p_j on their nonzero prefix, all that row
            # j - 1 reads
        # the chains: A_j = a_j A_{j-1}, E_j = e_j E_{j-1}, c_j = a_j c_{j-1} + E_j
        lam_a = torch.zeros_like(A[..., 0, :]) if gA is None else None
        lam_c = torch.zeros_like(A[..., 0, :])
        lam_e = torch.zeros_like(A[..., 0, :]) if g_e is None else g_e.clone()
        for j in range(n - 1, -1, -1):
            if gA is not None:
                lam_a = gA[..., j, :] if j == n - 1 else gA[..., j, :] + keep[..., j + 1, :] * lam_a
                prev = A[..., j - 1, :] if j else 1.0
                g_keep[..., j, :] += lam_a * prev
            if gc is not None:
                lam_c = gc[..., j, :] + (keep[..., j + 1, :] * lam_c if j < n - 1 else 0.0)
                if j:
                    g_keep[..., j, :] += lam_c * c[..., j - 1, :]
            if j < n - 1:
                lam_e = lam_e * eta[..., j + 1, :]
            lam_e = lam_e + lam_c
            g_eta[..., j, :] += lam_e * (E[..., j - 1, :] if j else 1.0)
        return g_nt, g_eta, g_keep, gz, gx


def channel_coefficients(theta: Tensor, eta: Tensor, alpha: Tensor, pair=None) -> tuple[Tensor, ...]:
    """The chunk coefficients with a channel dimension last (ChannelCoefficients). theta, eta, alpha:
    [..., n, C] or broadcastable to it; pair: (z, x) [..., n, C] or None. Returns A, c [..., n, C]; -G
    [..., n, n, C] or, with pair, its dual form [..., n, n]; -s [..., n, C]; e [..., C]; -G's last row."""
    shape = torch.broadcast_shapes(theta.shape, eta.shape, alpha.shape)
    gates = [t.expand(shape).contiguous() for t in (-theta, eta, 1.0 - alpha)]
    z, x = (None, None) if pair is None else (t.contiguous() for t in pair)
    return ChannelCoefficients.apply(*gates, z, x)
