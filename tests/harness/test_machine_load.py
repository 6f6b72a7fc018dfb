"""The machine's load at a run's start and end: a 1-second sample of the cores' busy time decides whether
the report calls the machine busy, not the lagging 1-minute load average."""

import subprocess
import sys
from types import SimpleNamespace

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


def test_each_resumption_gets_its_own_load_line_and_cell_count():
    first = {"cpu_count": 2, "run_id": "a", "git_commit": "c1", "load_average_start": [0.1, 0.1, 0.1]}
    first["busy_cores_start"] = 0.01
    resumed = {"created_at": "T2", "run_id": "b", "git_commit": "c1", "load_average_start": [1.9, 1, 1]}
    resumed["busy_cores_start"] = 1.6
    rows = [SimpleNamespace(run_id=r) for r in ("a", "b", "b")]
    lines = [x for x in provenance_lines({**first, "resumed": [resumed]}, rows) if x]
    assert lines[0].startswith("Machine load before the run") and "It measured 1 of the 3 cells" in lines[0]
    assert "busy" not in lines[0].split("started")[1]
    assert lines[1].startswith("Machine load when the run was resumed (T2)")
    assert "It measured 2 of the 3 cells" in lines[1]
    assert "busy with other work when this invocation" in lines[1]
    # a run never resumed reads as before: no count
    assert "It measured" not in provenance_lines(first, rows)[0]


def test_a_dirty_resumption_or_a_second_commit_is_said():
    first = {"cpu_count": 2, "git_commit": "c1"}
    resumed = {"created_at": "T2", "git_commit": "c1", "git_dirty": True}
    dirty = provenance_lines({**first, "resumed": [resumed]})
    assert any("dirty tree** (the resumption of T2)" in x for x in dirty)
    moved = provenance_lines({**first, "resumed": [{"created_at": "T2", "git_commit": "c2"}]})
    assert any("different commits** (c1, c2" in x for x in moved)
    assert provenance_lines({**first, "resumed": [{"created_at": "T2", "git_commit": "c1"}]}) == []
