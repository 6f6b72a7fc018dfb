"""The machine's load at a run's start and end: a 1-second sample of the cores' busy time decides whether
the report calls the machine busy, not the lagging 1-minute load average."""

import subprocess
import sys

from bench.analysis.report import provenance_lines
from bench.running.machine_load import busy_cores, cpu_times


def test_cpu_times_counts_idle_and_iowait_as_not_busy():
    text = "cpu  100 5 20 800 50 3 2 0 0 0\ncpu0 50 2 10 400 25 1 1 0 0 0\n"
    assert cpu_times(text) == (130, 980)


def test_a_spinning_process_shows_as_a_busy_core():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(0.5) >= 0.5
    finally:
        burner.kill()
        burner.wait()


def _busy(manifest):
    flags = ("busy with other work", "Other work loaded the machine")
    return any(flag in line for line in provenance_lines(manifest) for flag in flags)


def test_the_sample_decides_not_the_lagging_average():
    base = {"cpu_count": 2, "load_average_start": [1.9, 1.5, 1.2], "load_average_end": [1.0, 1.0, 1.0]}
    # a run started seconds after another: the average still counts it, the cores are idle
    quiet = {**base, "busy_cores_start": 0.02, "busy_cores_end": 0.1}
    assert not _busy(quiet)
    assert "0.02 cores busy in the second before it started" in provenance_lines(quiet)[0]
    assert _busy({**base, "busy_cores_start": 1.4})
    # an older manifest without the sample: judged by the average, and said to be only that
    assert _busy(base) and not _busy({**base, "load_average_start": [0.2, 0.2, 0.2]})
    assert "cannot tell whether it was still running" in provenance_lines(base)[0]
