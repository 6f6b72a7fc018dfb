"""RMSNorm and its gated form (Mamba2's and fla's output norms), normalising in float32 or wider."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.modules.dtypes import compute_dtype


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: bf16 sums of squares lose too much at d_model in the thousands.
        wide = x.to(compute_dtype(x.dtype))
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return wide.to(x.dtype) * self.weight


class GatedRMSNorm(nn.Module):
    """RMSNorm with a SiLU gate, per group of ``group_size`` channels: norm(x * silu(z)) * weight (Mamba2's
    default) or, with ``norm_before_gate``, norm(x) * weight * silu(z) (fla's gated output norm)."""

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None, norm_before_gate=False):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or dim
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        wide = compute_dtype(x.dtype)
        y, gate = x.to(wide), F.silu(z.to(wide))
        if not self.norm_before_gate:
            y = y * gate
        groups = y.unflatten(-1, (-1, self.group_size))
        y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        y = y * self.weight.to(wide)
        if self.norm_before_gate:
            y = y * gate
        return y.to(x.dtype)
