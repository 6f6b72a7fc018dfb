"""The optimizer and learning-rate schedule every training run uses, timing cells' train mode included:
AdamW (weight decay on matrices only), linear warm-up then cosine decay to a tenth."""

from __future__ import annotations

import math

import torch

from bench.spec.config import TrainSettings

MIN_LR_FRACTION = 0.1


def lr_at(step: int, s: TrainSettings) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return s.lr * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * cosine)


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    # nanoGPT's rule: decay matrices (and embeddings), not gains and biases.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95))


def non_embedding(model) -> int | None:
    """Non-embedding parameters, from the shell's method (a plug-in without it reports None)."""
    count = getattr(model, "n_params_non_embedding", None)
    return count() if callable(count) else None
