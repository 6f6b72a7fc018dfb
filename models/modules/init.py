"""Initialisations the mixers share."""

from __future__ import annotations

import math

import torch
from torch import nn


def init_projections(layer: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """The shell's init for a mixer's plain linear layers (N(0, 0.02), zero bias); ``skip`` names layers
    with an init of their own, such as Mamba's dt_proj."""
    for name, module in layer.named_children():
        if isinstance(module, nn.Linear) and name not in skip:
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def inverse_softplus_dt(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4):
    """dt biases such that softplus(bias) is log-uniform in [dt_min, dt_max], the Mamba papers' init."""
    log_dt = torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
