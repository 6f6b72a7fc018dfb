"""How busy the machine is when a sweep starts and ends: the share of CPU time other work took over a
short window (from /proc/stat), beside the kernel's 1-minute load average.

The load average lags: a job that ended ten seconds before the sweep still counts in it for about a
minute, so a sweep started right after another looked "busy" when the cores were idle. The sample over
the last second says what the cores are doing now; it is what the report judges by, where there is one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
WINDOW_S = 1.0  # long enough to see a busy core, short enough for the 4-minute default run
IDLE_FIELDS = (3, 4)  # idle and iowait, among: user nice system idle iowait irq softirq steal


def cpu_times(text: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the text of /proc/stat."""
    fields = [int(x) for x in text.splitlines()[0].split()[1:9]]
    idle = sum(fields[i] for i in IDLE_FIELDS)
    return sum(fields) - idle, sum(fields)


def busy_cores(window_s: float = WINDOW_S) -> float | None:
    """How many cores' worth of CPU time was used during ``window_s`` seconds (0 to the core count);
    None where /proc/stat is not there (not Linux)."""
    try:
        busy0, total0 = cpu_times(PROC_STAT.read_text())
        time.sleep(window_s)
        busy1, total1 = cpu_times(PROC_STAT.read_text())
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return round((busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1), 3)


def sample() -> dict:
    """The manifest's fields for one moment: the load averages and the cores busy in the last second."""
    return {"load_average": list(os.getloadavg()), "busy_cores": busy_cores()}
