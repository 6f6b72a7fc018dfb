"""Rotary position embeddings (RoPE)."""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """Rotary position embedding (RoPE), rotate-half convention, applied to [B, H, T, D]."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        self.head_dim = head_dim
        self.base = base

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = x.shape[-2]
        # Angles in float64 and never stored as a buffer: model.to(bfloat16) would round them.
        inv_freq = self.base ** (
            -torch.arange(0, self.head_dim, 2, device=x.device, dtype=torch.float64) / self.head_dim
        )
        pos = torch.arange(start, start + T, device=x.device, dtype=torch.float64)
        angles = torch.outer(pos, inv_freq)
        cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)
        sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin
