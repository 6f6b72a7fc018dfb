"""A causal depthwise convolution over time with a decoding state: the short convolution of Mamba, DeltaNet
and Titans."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        # earlier inputs (zeros at a sequence start) on the left keep it causal
        padded = F.pad(x, (0, 0, keep, 0)) if state is None else torch.cat([state.to(x.dtype), x], dim=1)
        # K shifted multiply-adds rather than F.conv1d, whose depthwise backward is very slow on the CPU;
        # each tap a contiguous row [C] (a column of the weight, strided, made each product 3x slower)
        T, taps = x.shape[1], self.weight[:, 0].T.contiguous()
        y = sum(padded[:, k : k + T] * taps[k] for k in range(keep + 1))
        if self.bias is not None:
            y = y + self.bias
        # a copy, not a view: a view of ``padded`` would keep the whole prompt's input alive in the state
        return self._act(y), padded[:, padded.shape[1] - keep :].clone()

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C], state [B, K - 1, C] -> (y [B, C], new state)."""
        window = torch.cat([state.to(x.dtype), x[:, None]], dim=1)  # [B, K, C]
        y = (window * self.weight[:, 0].T).sum(1)  # half the time of the same einsum for one token
        if self.bias is not None:
            y = y + self.bias
        return self._act(y), window[:, 1:]

    def init_state(self, batch_size: int, device, dtype) -> torch.Tensor:
        return torch.zeros(batch_size, self.kernel_size[0] - 1, self.in_channels, device=device, dtype=dtype)
