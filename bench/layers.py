"""Building blocks shared by every model family: RMSNorm, the SwiGLU MLP, a causal short convolution
with a decoding state, and rotary position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: bf16 sums of squares lose too much at d_model in the thousands.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    """Llama's MLP: W2 (silu(W1 x) * W3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)

    def flops_per_token(self) -> float:
        return 2.0 * 3 * self.hidden * self.down.out_features


def swiglu_hidden(dim: int, ratio: float = 8 / 3, multiple: int = 8) -> int:
    """Llama's hidden size: about 8/3 d, rounded up to a multiple of 8."""
    hidden = int(ratio * dim)
    return multiple * ((hidden + multiple - 1) // multiple)


class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over time, as used after the q/k/v projections of linear
    recurrent models. The decoding state is the last ``kernel_size - 1`` inputs."""

    def __init__(self, channels: int, kernel_size: int = 4, activation: str | None = "silu"):
        super().__init__()
        if activation not in (None, "silu"):
            raise ValueError(f"ShortConv activation must be None or 'silu', got {activation!r}")
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        nn.init.normal_(self.weight, std=kernel_size**-0.5)

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        return F.silu(y) if self.activation == "silu" else y

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """x [B, T, C]; state [B, K-1, C] of earlier inputs (zeros when None). Returns (y, new_state)."""
        B, T, C = x.shape
        K = self.kernel_size
        if state is None:
            state = x.new_zeros(B, K - 1, C)
        padded = torch.cat([state.to(x.dtype), x], dim=1)  # [B, K-1+T, C]: left padding keeps it causal
        y = F.conv1d(padded.transpose(1, 2), self.weight.unsqueeze(1), groups=C).transpose(1, 2)
        return self._act(y), padded[:, -(K - 1) :] if K > 1 else padded[:, :0]

    def step(self, x: torch.Tensor, state: torch.Tensor):
        """x [B, C], state [B, K-1, C] -> (y [B, C], new_state)."""
        window = torch.cat([state.to(x.dtype), x.unsqueeze(1)], dim=1)  # [B, K, C]
        y = (window * self.weight.t()).sum(1)
        return self._act(y), window[:, 1:]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.kernel_size - 1, self.weight.shape[0], device=device, dtype=dtype)


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
