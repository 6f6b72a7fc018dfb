"""Real sweeps through the command line: one process per cell, faults recorded, the sweep goes on."""

import json
import subprocess
import sys

import pytest

from bench import results
from bench.cli import main
from tests.helpers import TINY_SWEEP, tiny_sweep

pytestmark = pytest.mark.slow

TINY = TINY_SWEEP


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True)


def test_tiny_sweep_writes_results_and_report(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        "--models",
        "transformer",
        "--modes",
        "train,prefill,decode",
        "--seq-lens",
        "16,32",
        "--device",
        "cpu",
        "--out",
        str(out),
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr
    frame = results.load(out)
    assert len(frame) == 6 and set(frame["status"]) == {"ok"}
    assert set(frame["mode"]) == {"train", "prefill", "decode"}
    assert (frame["tokens_per_s"] > 0).all() and (frame["peak_mem_bytes"] > 0).all()
    assert all(len(s) == 2 for s in frame["samples_s"])
    assert set(frame["backend"]) == {"sdpa-flash"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["torch_threads"] >= 1 and "torch" in manifest["packages"]
    report = (out / "REPORT.md").read_text()
    assert "Training throughput" in report and "![throughput](throughput.png)" in report
    for png in ("throughput.png", "memory.png", "state_size.png"):
        assert (out / png).stat().st_size > 1000

    again = run_cli("run", "--models", "transformer", "--out", str(out), *TINY)
    assert again.returncode == 2 and "already holds results" in again.stderr
    assert len(results.load(out)) == 6  # nothing already measured is touched


def test_faults_are_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "faults"
    models = ",".join(f"tests.plugins.faulty:{m}" for m in ("healthy", "oom", "kill", "hang", "fail"))
    code = main(
        [
            "run",
            "--models",
            models,
            "--seq-lens",
            "16,64,128",
            "--modes",
            "prefill",
            "--device",
            "cpu",
            "--timeout",
            "10",
            "--out",
            str(out),
            "--no-report",
            *TINY,
        ]
    )
    assert code == 0
    frame = results.load(out)
    status = {(r.model.split(":")[1], r.seq_len): r.status for r in frame.itertuples()}
    assert all(status[("healthy", t)] == "ok" for t in (16, 64, 128))
    for fault in ("oom", "kill", "hang", "fail"):
        assert status[(fault, 16)] == "ok"  # healthy below the fault's length
    assert status[("oom", 64)] == "oom" and status[("oom", 128)] == "skipped"
    errors = {(r.model.split(":")[1], r.seq_len): str(r.error) for r in frame.itertuples()}
    assert status[("kill", 64)] == "crashed" and "SIGKILL" in errors[("kill", 64)]
    assert status[("hang", 64)] == "timeout"
    assert status[("fail", 64)] == "crashed" and "simulated kernel failure" in errors[("fail", 64)]


def test_parallel_accuracy_cells_overlap_and_timing_cells_run_alone(tmp_path):
    """--parallel 2: accuracy cells train two at a time (their processes' lifetimes overlap), a timing cell
    never shares the machine with one, and every cell is recorded once."""
    out = tmp_path / "run"
    args = ["run", "--models", "transformer,mamba2", "--modes", "prefill,accuracy", "--tasks", "mqar"]
    args += ["--seq-lens", "16", "--train-len", "16", "--parallel", "2", "--out", str(out), *TINY]
    spec = tmp_path / "s.toml"
    spec.write_text(
        "[accuracy]\nsteps = 20\nwarmup_steps = 2\nthreshold = false\nthreads = 1\nseeds = [0, 1]\n"
        "eval_factors = [1]\nval_samples = 16\neval_samples = 16\nbatch_size = 8\n"
    )
    args[args.index("mqar")] = "mqar-small"
    spec.write_text(
        'tasks = [{ name = "mqar", label = "mqar-small", args = { vocab_size = 16, num_kv_pairs = 2 } }]\n'
        + spec.read_text()
    )
    proc = run_cli(*args[:1], str(spec), *args[1:])
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 + 4 and len({r["key"] for r in records}) == 6
    assert {r["status"] for r in records} == {"ok"}
    spans = {r["key"]: (r["finished_at"] - r["wall_s"], r["finished_at"], r["mode"]) for r in records}

    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1]

    accuracy = [s for s in spans.values() if s[2] == "accuracy"]
    timing = [s for s in spans.values() if s[2] != "accuracy"]
    assert any(overlap(a, b) for i, a in enumerate(accuracy) for b in accuracy[i + 1 :])
    assert not any(overlap(t, a) for t in timing for a in accuracy)


def test_rounds_retime_the_timing_cells_and_train_the_accuracy_cells_once(tmp_path):
    """A second round measures the timing cells again in fresh processes; an accuracy cell trains once (the
    same seed would give the same result), and a resume of the finished run has nothing left to do."""
    out = tmp_path / "run"
    spec = tmp_path / "s.toml"
    spec.write_text(
        'tasks = [{ name = "mqar", label = "mqar-small", args = { vocab_size = 16, num_kv_pairs = 2 } }]\n'
        "[accuracy]\nsteps = 4\nwarmup_steps = 1\nthreshold = false\nthreads = 1\n"
        "eval_factors = [1]\nval_samples = 8\neval_samples = 8\nbatch_size = 8\n"
    )
    args = ["--models", "transformer", "--modes", "prefill,accuracy", "--seq-lens", "16", "--train-len", "16"]
    flags = tiny_sweep("--rounds", "2")
    assert main(["run", str(spec), *args, "--out", str(out), *flags, "--no-report"]) == 0
    records = results.read_records(out / results.RESULTS)
    rounds = sorted((r["mode"], r["round"]) for r in records)
    assert rounds == [("accuracy", 0), ("prefill", 0), ("prefill", 1)]
    assert main(["run", "--resume", str(out), "--no-report", "--no-progress"]) == 0
    assert len(results.read_records(out / results.RESULTS)) == 3
