"""Mamba's selective scan and Mamba2's SSD in pure PyTorch.

``selective_scan`` (blocked, linear forward and backward) and ``ssd_chunked`` are the fast forms;
``selective_scan_recurrent`` and ``ssd_recurrent`` the per-step references; ``selective_state_update``
and ``ssd_step`` advance a decoding state by one token.
"""

from baselines.mamba.chunk import ssd_chunked
from baselines.mamba.naive import (
    selective_scan_recurrent,
    selective_state_update,
    ssd_recurrent,
    ssd_step,
)
from baselines.mamba.scan import selective_scan

__all__ = [
    "selective_scan",
    "selective_scan_recurrent",
    "selective_state_update",
    "ssd_chunked",
    "ssd_recurrent",
    "ssd_step",
]
