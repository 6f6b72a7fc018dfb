"""Building blocks shared by every model family: RMSNorm and its gated form, the SwiGLU MLP, a causal
depthwise convolution with a decoding state, and rotary position embeddings."""

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
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return wide.to(x.dtype) * self.weight


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


class CausalConv1d(nn.Conv1d):
    """Depthwise causal convolution over time, input and output [B, T, C]. An nn.Conv1d so that its
    parameters are named and shaped as mamba_ssm's ``conv1d`` and fla's ``ShortConvolution``
    (weight [C, 1, K], optional bias [C]). The decoding state is the last K - 1 inputs, [B, K - 1, C]."""

    def __init__(self, channels: int, kernel_size: int, bias: bool, activation: str | None = "silu"):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias)
        if activation not in (None, "silu"):
            raise ValueError(f"conv activation must be None or 'silu', got {activation!r}")
        self.activation = activation

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        return F.silu(y) if self.activation == "silu" else y

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """x [B, T, C], state [B, K - 1, C] or None (zeros) -> (y [B, T, C], new state)."""
        keep = self.kernel_size[0] - 1
        if state is not None and x.shape[1] == 1:  # one token after earlier ones: a decoding step
            y, state = self.step(x[:, 0], state)
            return y[:, None], state
        if state is None:
            state = x.new_zeros(x.shape[0], keep, x.shape[2])
        padded = torch.cat([state.to(x.dtype), x], dim=1)  # earlier inputs on the left keep it causal
        # K shifted multiply-adds rather than F.conv1d, whose depthwise backward is very slow on the CPU
        T, taps = x.shape[1], self.weight[:, 0]
        y = sum(padded[:, k : k + T] * taps[:, k] for k in range(keep + 1))
        if self.bias is not None:
            y = y + self.bias
        return self._act(y), padded[:, padded.shape[1] - keep :]

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C], state [B, K - 1, C] -> (y [B, C], new state)."""
        window = torch.cat([state.to(x.dtype), x[:, None]], dim=1)  # [B, K, C]
        y = (window * self.weight[:, 0].T).sum(1)  # half the time of the same einsum for one token
        if self.bias is not None:
            y = y + self.bias
        return self._act(y), window[:, 1:]

    def init_state(self, batch_size: int, device, dtype) -> torch.Tensor:
        return torch.zeros(batch_size, self.kernel_size[0] - 1, self.in_channels, device=device, dtype=dtype)


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
        wide = torch.promote_types(x.dtype, torch.float32)
        y, gate = x.to(wide), F.silu(z.to(wide))
        if not self.norm_before_gate:
            y = y * gate
        groups = y.unflatten(-1, (-1, self.group_size))
        y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        y = y * self.weight.to(wide)
        if self.norm_before_gate:
            y = y * gate
        return y.to(x.dtype)


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
