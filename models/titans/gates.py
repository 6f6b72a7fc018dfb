"""The Titans memory's data-dependent gates: theta (inner learning rate), eta (momentum), alpha (forgetting).

The paper makes each gate a function of the token x_t and does not say which (§3.1); the camera-ready
version makes alpha_t channel-wise, alpha_t in [0,1]^d, and its appendix finds that deep memory needs its
parameters per layer. Each gate here is sigmoid(linear(x_t)) (theta times ``max_lr``), at one of three
granularities:

- "channel" (default): per head, memory layer and input channel of that layer (a column of its weight
  [d_out, d_in]; naive.py argues the axis), the camera-ready paper's gates. The projection is low-rank
  (``rank``, 16 by default, GLA's choice for its channel-wise forget gate): at full rank it would map
  d_model to 3 H sum(d_in) logits, more parameters than the rest of the mixer at the usual expansion of 4.
- "layer": one scalar per head and memory layer.
- "head": one scalar per head shared by every memory layer (this project's first form, kept to compare).

Forgetting "none" learns no alpha (alpha = 0, the paper's "w/o weight decay" ablation); "decay" and
"to_init" (toward the initial memory, chunk.py) both learn it.
"""

from __future__ import annotations

import torch
from torch import nn

from models.modules.dtypes import compute_dtype

GRANULARITIES = ("channel", "layer", "head")
FORGETTING = ("decay", "none", "to_init")
# Initial logits: a small step size (theta ~ max_lr / 20), strong momentum and little forgetting. Inside a
# chunk every gradient is taken at the same base weights while momentum keeps applying them, so with
# aligned keys one chunk moves the memory by ~80 theta-sized steps (chunk 16, eta 0.88). Keys are aligned
# at initialisation wherever the memory reads attention outputs (MAC, and MAG's later blocks); from
# theta = max_lr / 2 it diverged within a few hundred tokens.
INITIAL_LOGITS = {"theta": -3.0, "eta": 2.0, "alpha": -4.0}


class MemoryGates(nn.Module):
    """x [B, T, d_model] -> (theta, eta, alpha) in the memory ops' forms: [B, H, T] for "head", else per
    memory layer [B, H, T] ("layer") or [B, H, T, d_in] ("channel"); alpha is zeros [B, H, T] when the
    memory does not forget. ``writes`` False forces theta to 0: the memory is never written."""

    def __init__(self, d_model: int, n_heads: int, d_ins: list[int], granularity: str = "channel",
                 rank: int | None = 16, max_lr: float = 0.1, forgetting: str = "decay"):  # fmt: skip
        super().__init__()
        if granularity not in GRANULARITIES:
            choices = ", ".join(GRANULARITIES)
            raise ValueError(f"unknown gate granularity {granularity!r}; choose from {choices}")
        if forgetting not in FORGETTING:
            raise ValueError(f"unknown forgetting {forgetting!r}; choose from {', '.join(FORGETTING)}")
        self.granularity, self.n_heads, self.max_lr = granularity, n_heads, max_lr
        self.names = ("theta", "eta") if forgetting == "none" else ("theta", "eta", "alpha")
        widths = {"head": [1], "layer": [1] * len(d_ins), "channel": list(d_ins)}[granularity]
        self.widths = widths
        self.sizes = [n_heads * w for _ in self.names for w in widths]
        total = sum(self.sizes)
        if granularity == "channel" and rank is not None:
            self.down = nn.Linear(d_model, rank, bias=False)
            self.proj = nn.Linear(rank, total)
            nn.init.normal_(self.down.weight, std=0.02)
        else:
            self.down = None
            self.proj = nn.Linear(d_model, total)
        nn.init.normal_(self.proj.weight, std=0.02)
        with torch.no_grad():
            for bias, name in zip(self.proj.bias.split(n_heads * sum(widths)), self.names, strict=True):
                bias.fill_(INITIAL_LOGITS[name])
        self.writes = True

    def forward(self, x: torch.Tensor):
        B, T, _ = x.shape
        h = x if self.down is None else self.down(x)
        logits = self.proj(h).to(compute_dtype(x.dtype))  # gates never in bf16
        parts = iter(torch.sigmoid(logits).split(self.sizes, dim=-1))
        gates = {}
        for name in self.names:
            per_layer = []
            for w in self.widths:
                g = next(parts).view(B, T, self.n_heads, w).permute(0, 2, 1, 3)  # [B, H, T, w]
                per_layer.append(g.squeeze(-1) if self.granularity != "channel" else g)
            gates[name] = per_layer[0] if self.granularity == "head" else per_layer
        if self.writes:
            gates["theta"] = _scale(gates["theta"], self.max_lr)
        else:  # no step: the memory is never written
            gates["theta"] = _scale(gates["theta"], 0.0)
        alpha = gates.get("alpha")
        if alpha is None:
            alpha = torch.zeros(B, self.n_heads, T, dtype=logits.dtype, device=x.device)
        return gates["theta"], gates["eta"], alpha

    def flops_per_token(self) -> float:
        layers = [self.proj] if self.down is None else [self.down, self.proj]
        return sum(2.0 * layer.in_features * layer.out_features for layer in layers)


def _scale(gate, factor: float):
    if isinstance(gate, torch.Tensor):
        return gate * factor
    return [g * factor for g in gate]
