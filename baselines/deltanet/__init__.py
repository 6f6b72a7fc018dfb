"""DeltaNet and Gated DeltaNet: the delta rules in pure PyTorch (layout [B, H, T, D]) and the two models.

``*_recurrent`` are the per-token references (and ``*_step`` the single-token updates for decoding);
``*_chunked`` are the fast chunkwise forms used for training and prefill. ``model`` registers
``deltanet`` and ``gated-deltanet``.
"""

from baselines.deltanet import model
from baselines.deltanet.chunk import delta_rule_chunked, gated_delta_rule_chunked
from baselines.deltanet.naive import (
    delta_rule_recurrent,
    delta_rule_step,
    gated_delta_rule_recurrent,
    gated_delta_rule_step,
)

__all__ = [
    "delta_rule_chunked",
    "delta_rule_recurrent",
    "delta_rule_step",
    "gated_delta_rule_chunked",
    "gated_delta_rule_recurrent",
    "gated_delta_rule_step",
    "model",
]
