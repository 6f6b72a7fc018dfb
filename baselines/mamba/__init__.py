"""Mamba and Mamba2: the selective scan and the SSD in pure PyTorch, and the two models built on them.

``selective_scan`` (blocked, linear forward and backward) and ``ssd_chunked`` are the fast forms;
``selective_scan_recurrent`` and ``ssd_recurrent`` the per-step references; ``selective_state_update``
and ``ssd_step`` advance a decoding state by one token. ``model`` registers ``mamba`` and ``mamba2``.
"""

from baselines.mamba import model
from baselines.mamba.chunk import ssd_chunked
from baselines.mamba.naive import (
    selective_scan_recurrent,
    selective_state_update,
    ssd_recurrent,
    ssd_step,
)
from baselines.mamba.scan import selective_scan

__all__ = [
    "model",
    "selective_scan",
    "selective_scan_recurrent",
    "selective_state_update",
    "ssd_chunked",
    "ssd_recurrent",
    "ssd_step",
]
