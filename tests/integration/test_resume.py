"""A sweep killed with SIGKILL loses at most the cell in flight; --resume finishes it without redoing
finished cells; --retry-failed re-runs the failed ones; Ray runs the same cells as the local executor."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench import results
from bench.cli import main
from tests.helpers import TINY_SWEEP

pytestmark = pytest.mark.slow

ARGS = [*TINY_SWEEP, "--no-report"]


def test_killed_sweep_resumes_with_every_cell_exactly_once(tmp_path):
    out = tmp_path / "run"
    sweep = [
        "run",
        "--models",
        "tests.plugins.faulty:slow",
        "--seq-lens",
        "8,16,32,64",
        "--modes",
        "train,prefill",
        "--isolation",
        "none",
        "--out",
        str(out),
        *ARGS,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *sweep], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    path = out / results.RESULTS
    deadline = time.time() + 120
    while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results.read_records(path)
    assert 2 <= len(before) < 8, "the kill should land partway through the sweep"

    assert main(["run", "--resume", str(out), *sweep[1:]]) == 0
    after = results.read_records(path)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 8
    assert after[: len(before)] == before  # finished cells are neither redone nor rewritten
    assert {r["status"] for r in after} == {"ok"}


def test_rerunning_into_a_finished_dir_refuses_and_resume_has_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    sweep = [
        "run",
        "--models",
        "tests.plugins.faulty:healthy",
        "--seq-lens",
        "8",
        "--modes",
        "prefill",
        "--isolation",
        "none",
        "--out",
        str(out),
        *ARGS,
    ]
    assert main(sweep) == 0
    assert main(sweep) == 2 and "already holds results" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), *sweep[1:]]) == 0
    assert len(results.read_records(out)) == 1


def test_retry_failed_reruns_only_failed_cells(tmp_path):
    out = tmp_path / "run"
    sweep = [
        "run",
        "--models",
        "tests.plugins.faulty:healthy,tests.plugins.faulty:fail",
        "--seq-lens",
        "8,64",
        "--modes",
        "prefill",
        "--isolation",
        "none",
        "--out",
        str(out),
        *ARGS,
    ]
    assert main(sweep) == 0
    assert main(["run", "--resume", str(out), "--retry-failed", *sweep[1:]]) == 0
    records = results.read_records(out)
    reruns = [r["key"] for r in records[4:]]
    assert len(records) == 5 and len(reruns) == 1 and "fail/prefill/T64" in reruns[0]
    assert list(results.load(out)["status"]).count("crashed") == 1


def test_ray_executor_runs_the_same_cells_as_local(tmp_path):
    sweep = [
        "run",
        "--models",
        "tests.plugins.faulty:healthy,tests.plugins.faulty:oom",
        "--seq-lens",
        "8,64,128",
        "--modes",
        "prefill",
        *ARGS,
    ]
    assert main([*sweep, "--out", str(tmp_path / "local")]) == 0
    assert (
        main([*sweep, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-cpus-per-cell", "1"]) == 0
    )
    local, ray = results.load(tmp_path / "local"), results.load(tmp_path / "ray")
    as_set = lambda f: set(zip(f["key"], f["status"], strict=True))  # noqa: E731
    assert as_set(local) == as_set(ray)
    assert ("skipped" in set(ray["status"])) and ("oom" in set(ray["status"]))


def test_a_resumed_sweep_naming_no_models_keeps_the_models_it_found(tmp_path):
    """A sweep without a model list runs every registered model; resumed, it runs the ones its first
    invocation recorded, not a plug-in registered since."""
    from bench.registry import list_models
    from bench.running.sweep import _every_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"models": ["transformer", "mamba2"]}))
    assert [m.name for m in _every_model(run, resume=True)] == ["transformer", "mamba2"]
    assert [m.name for m in _every_model(run, resume=False)] == list(list_models())
    (run / "manifest.json").write_text(json.dumps({"command": "an older run's manifest, without models"}))
    assert [m.name for m in _every_model(run, resume=True)] == list(list_models())
    # and a run records the models its cells came from
    out = tmp_path / "tiny"
    argv = ["run", "--models", "tests.plugins.gru:build", "--modes", "prefill", "--seq-lens", "8",
            "--repeats", "1", "--warmup", "1", "--isolation", "none", "--no-report", "--no-progress",
            "--d-model", "16", "--n-layers", "1", "--vocab-size", "32", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["models"] == ["tests.plugins.gru:build"]
