"""The SwiGLU MLP of every block in the shared shell (Llama's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
