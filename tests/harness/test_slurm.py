"""The Slurm executor without a cluster: the [slurm] table and its flags, the sbatch parameters derived
from them, how a job's end becomes a cell's status, and one task's loop run here, in this process."""

import json
import os
import signal

import pytest
import submitit

from bench.cli import build_parser, main
from bench.commands.run import spec_from_args
from bench.errors import BenchError
from bench.running import slurm, slurm_queue
from bench.running.slurm_task import DONE, OUTCOME, STARTED, oom_kills, run_task, write_whole
from bench.spec.cells import expand
from bench.spec.config import ModelEntry, parse_spec
from tests.helpers import TINY_SWEEP

FAULTY = "tests.plugins.faulty"


def cells_of(model: str, seq_lens=(16, 64, 128), **spec):
    data = {"seq_lens": list(seq_lens), "modes": ["prefill"], "d_model": 16, "n_layers": 1, "vocab_size": 32,
            "repeats": 2, "warmup": 1, **spec}  # fmt: skip
    parsed = parse_spec(data, "test")
    return parsed, expand(parsed, [ModelEntry(name=model)], "cpu")


def test_the_slurm_table_is_validated_strictly():
    spec = parse_spec({"executor": "slurm", "slurm": {"partition": "gpu", "gpus_per_cell": 2}}, "s.toml")
    assert spec.executor == "slurm" and spec.slurm.partition == "gpu" and spec.slurm.gpus_per_cell == 2
    with pytest.raises(BenchError, match=r"s.toml: unknown field 'slurm.partitio'"):
        parse_spec({"slurm": {"partitio": "gpu"}}, "s.toml")
    with pytest.raises(BenchError, match=r"field 'slurm.extra_sbatch'.*not a long sbatch option"):
        parse_spec({"slurm": {"extra_sbatch": ["-C a100"]}}, "s.toml")
    with pytest.raises(BenchError, match=r"field 'executor'"):
        parse_spec({"executor": "pbs"}, "s.toml")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--slurm-partition", "gpu"], "--slurm-partition applies to --executor slurm only"),
        (["--executor", "slurm", "--slurm-cpus-per-cell", "0"], "--slurm-cpus-per-cell: Input should"),
        (["--executor", "slurm", "--slurm-gpus-per-cell", "-1"], "--slurm-gpus-per-cell: Input should"),
        (["--executor", "slurm", "--slurm-mem-gb", "0"], "--slurm-mem-gb: Input should be greater than 0"),
        (["--executor", "slurm", "--slurm-account", " "], "--slurm-account: String should match pattern"),
        (["--executor", "slurm", "--ray-cpus-per-cell", "2"], "applies to --executor ray only"),
    ],
)
def test_slurm_flags_errors_name_the_flag(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--models", "transformer", *TINY_SWEEP, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_flags_fill_the_slurm_table_and_override_the_file(tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text('executor = "slurm"\n[slurm]\npartition = "cpu"\nqos = "low"\n')
    args = build_parser().parse_args(
        [
            "run",
            str(sweep),
            "--slurm-partition",
            "gpu",
            "--slurm-mem-gb",
            "16",
            "--slurm-array-parallelism",
            "3",
        ]
    )
    spec = spec_from_args(args)
    assert spec.executor == "slurm"
    assert (spec.slurm.partition, spec.slurm.qos, spec.slurm.mem_gb) == ("gpu", "low", 16.0)
    assert spec.slurm.array_parallelism == 3
    local = spec_from_args(build_parser().parse_args(["run", str(sweep), "--executor", "local"]))
    assert local.executor == "local"


def test_sbatch_parameters_follow_the_cells_and_the_table():
    spec, cells = cells_of("transformer", timeout_s=150)
    params = slurm.sbatch_parameters(spec, cells, cells_per_task=3, name="bench-x")
    # 150 s -> 3 min + 1 for the cell's process to start, per cell, and 2 for the job's own start
    assert params["time"] == 4 * 3 + 2 and params["cpus_per_task"] == 1 and "gpus_per_node" not in params
    assert params["job_name"] == "bench-x" and str(slurm.ROOT) in params["setup"][0]
    assert not {"partition", "account", "qos", "mem"} & set(params)

    cuda = [c.model_copy(update={"device": "cuda"}) for c in cells]
    spec = parse_spec({"timeout_s": 150, "slurm": {
        "partition": "gpu", "account": "lab", "qos": "high", "mem_gb": 7.5, "time_per_cell_min": 10,
        "extra_sbatch": ["--constraint=a100", "#SBATCH --exclusive"], "setup": ["module load cuda"]}},
        "s.toml")  # fmt: skip
    params = slurm.sbatch_parameters(spec, cuda, cells_per_task=2, name="bench-x")
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == 4 and params["time"] == 22
    assert (params["partition"], params["account"], params["qos"], params["mem"]) == (
        "gpu",
        "lab",
        "high",
        "7680M",
    )
    assert params["additional_parameters"] == {"constraint": "a100", "exclusive": True}
    assert params["setup"][1:] == ["module load cuda"]
    assert set(params) <= submitit.SlurmExecutor._valid_parameters()

    threaded = [c.model_copy(update={"threads": 8}) for c in cells]
    spec = parse_spec({"slurm": {"gpus_per_cell": 0}}, "s.toml")
    params = slurm.sbatch_parameters(spec, threaded, 1, "bench-x")
    assert params["cpus_per_task"] == 8 and "gpus_per_node" not in params


def test_a_job_that_ends_without_an_outcome_says_how():
    assert slurm_queue.verdict("TIMEOUT")[0] == "timeout"
    assert slurm_queue.verdict("OUT_OF_MEMORY")[0] == "oom"
    assert slurm_queue.verdict("PREEMPTED")[0] == "preempted"
    assert slurm_queue.verdict("CANCELLED") == ("crashed", "was cancelled")
    assert slurm_queue.verdict("NODE_FAIL")[0] == "crashed"
    assert "sacct" in slurm_queue.verdict(slurm_queue.UNKNOWN)[1]
    parsed = slurm_queue._parse("12_3|RUNNING|vm|debug\n13|CANCELLED by 0||gpu\n\nbad line\n")
    assert parsed["12_3"] == slurm_queue.JobState("RUNNING", "vm", "debug") and parsed["12_3"].live
    assert parsed["13"] == slurm_queue.JobState("CANCELLED", None, "gpu") and not parsed["13"].live


def test_oom_kills_are_read_from_cgroup_v2_and_v1(tmp_path):
    (tmp_path / "v2" / "job_1" / "step_0").mkdir(parents=True)
    (tmp_path / "v2" / "job_1" / "step_0" / "memory.events").write_text("low 0\nhigh 0\noom 1\noom_kill 2\n")
    (tmp_path / "self_v2").write_text("0::/job_1/step_0\n")
    assert oom_kills(str(tmp_path / "self_v2"), str(tmp_path / "v2")) == 2
    (tmp_path / "v1" / "memory" / "slurm" / "job_1").mkdir(parents=True)
    (tmp_path / "v1" / "memory" / "slurm" / "job_1" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
    )
    (tmp_path / "self_v1").write_text("12:cpuset:/slurm/job_1\n4:memory:/slurm/job_1\n")
    assert oom_kills(str(tmp_path / "self_v1"), str(tmp_path / "v1")) == 1
    assert oom_kills(str(tmp_path / "missing"), str(tmp_path)) is None


def payload(task_dir, cells) -> dict:
    return {"task_dir": str(task_dir), "round": 0, "cells": [c.model_dump_json() for c in cells],
            "timeout_s": 60.0, "isolation": "none"}  # fmt: skip


def test_a_task_measures_its_cells_in_order_and_stops_at_an_oom(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURMD_NODENAME", "node7")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    handler = signal.getsignal(signal.SIGTERM)
    _, cells = cells_of(f"{FAULTY}:oom")
    assert run_task(payload(tmp_path, cells)) == {"measured": 2}
    outcomes = [json.loads((tmp_path / f"{i}{OUTCOME}").read_text()) for i in range(2)]
    assert [o["status"] for o in outcomes] == ["ok", "oom"]
    assert {(o["slurm_job_id"], o["slurm_node"], o["slurm_partition"]) for o in outcomes} == {
        ("41_2", "node7", "gpu")
    }
    assert not (tmp_path / f"2{STARTED}").exists() and (tmp_path / DONE).exists()  # the driver skips T=128
    assert signal.getsignal(signal.SIGTERM) == handler  # the job's handlers are not left behind


def test_a_requeued_task_keeps_what_it_measured_and_never_retries_the_cell_in_flight(tmp_path):
    _, cells = cells_of(f"{FAULTY}:healthy")
    write_whole(tmp_path / f"0{OUTCOME}", {"status": "ok", "marker": "from the first run"})
    write_whole(tmp_path / f"1{STARTED}", {"slurm_job_id": "41_2", "slurm_node": "node7"})
    assert run_task(payload(tmp_path, cells)) == {"measured": 1}
    first, second, third = (json.loads((tmp_path / f"{i}{OUTCOME}").read_text()) for i in range(3))
    assert first["marker"] == "from the first run"
    assert second["status"] == "preempted" and "41_2 was requeued" in second["error"]
    assert third["status"] == "ok"


def test_resuming_on_another_executor_is_allowed_but_not_another_sweep(tmp_path, monkeypatch):
    from bench.running.sweep import changed_fields

    a = parse_spec({"executor": "slurm", "slurm": {"partition": "gpu"}}, "a").model_dump(mode="json")
    b = parse_spec({"executor": "local"}, "b").model_dump(mode="json")
    c = parse_spec({"executor": "local", "seq_lens": [8]}, "c").model_dump(mode="json")
    assert changed_fields(a, b) == [] and changed_fields(b, c) == ["seq_lens"]


def test_the_device_is_the_compute_nodes_and_slurm_must_be_there(monkeypatch):
    assert slurm.slurm_device(parse_spec({"slurm": {"gpus_per_cell": 1}}, "s")) == "cuda"
    assert slurm.slurm_device(parse_spec({"device": "cuda"}, "s")) == "cuda"
    assert slurm.slurm_device(parse_spec({"device": "cpu", "slurm": {"gpus_per_cell": 1}}, "s")) == "cpu"
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: None)
    with pytest.raises(BenchError, match="sbatch, srun, squeue, scancel not found"):
        slurm.check_available()


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, text, refresh=True):
        pass


def driver(tmp_path, model=f"{FAULTY}:healthy", retry_failed=False):
    from bench.running.ledger import Ledger

    spec, cells = cells_of(model)
    ledger = Ledger(cells, tmp_path / "results.jsonl", resume=True, retry_failed=retry_failed)
    return slurm.SlurmRun(spec, ledger, _Bar(), 0, tmp_path), cells


def task_at(run, cells, name: str, job_id: str = "7_0"):
    task_dir = run.folder / "tasks" / name
    task_dir.mkdir(parents=True)
    return slurm._Task(job_id, task_dir, cells, set(range(len(cells))), 0.0)


def test_a_job_killed_mid_cell_fails_that_cell_and_gives_back_the_rest(tmp_path):
    run, cells = driver(tmp_path)
    task = task_at(run, cells, "a")
    write_whole(task.dir / f"0{STARTED}", {"slurm_job_id": "7_0", "slurm_node": "n1"})
    write_whole(task.dir / f"0{OUTCOME}", {"status": "ok", "slurm_job_id": "7_0", "slurm_node": "n1"})
    write_whole(task.dir / f"1{STARTED}", {"slurm_job_id": "7_0", "slurm_node": "n1"})
    assert run._finish(task, "TIMEOUT") == [cells[2]]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["seq_len"], r["status"]) for r in records] == [(16, "ok"), (64, "timeout")]
    assert "slurm job 7_0 reached its time limit" in records[1]["error"] and records[1]["slurm_node"] == "n1"
    assert run.bar.n == 2 and [p["key"] for p in run.placements] == [cells[0].key, cells[1].key]


def test_a_task_stopped_between_cells_gives_back_the_rest_without_a_verdict(tmp_path):
    run, cells = driver(tmp_path)
    task = task_at(run, cells, "a")
    write_whole(task.dir / f"0{STARTED}", {})
    write_whole(
        task.dir / f"0{OUTCOME}", {"status": "timeout", "error": "the Slurm job's time limit came first"}
    )
    assert run._finish(task, "COMPLETED") == cells[1:]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1


def test_a_job_that_never_started_a_cell_fails_them_all_with_its_log(tmp_path):
    run, cells = driver(tmp_path)
    task = task_at(run, cells, "a")
    (run.folder / "7_0_0_log.err").write_text("ModuleNotFoundError: No module named 'bench'\n")
    assert run._finish(task, "FAILED") == []
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records} == {"crashed"} and len(records) == 3
    assert all("No module named 'bench'" in r["stderr_tail"] for r in records)


def test_resume_adopts_calls_from_the_submitit_folder(tmp_path):
    from submitit.core.utils import DelayedSubmission

    run, cells = driver(tmp_path)

    def submitted(job_id, name, group, cancelled=False):
        task_dir = run.folder / "tasks" / name
        task_dir.mkdir(parents=True)
        call = {"task_dir": str(task_dir), "round": 0, "cells": [c.model_dump_json() for c in group]}
        DelayedSubmission(run_task, call).dump(run.folder / f"{job_id}{slurm.SUBMITTED}")
        if cancelled:
            write_whole(task_dir / "cancelled", {})
        return task_dir

    first = submitted("5_0", "a", cells)  # measured T=16, was measuring T=64 when the driver died
    write_whole(first / f"0{STARTED}", {})
    write_whole(first / f"0{OUTCOME}", {"status": "ok"})
    write_whole(first / f"1{STARTED}", {})
    then = (run.folder / f"5_0{slurm.SUBMITTED}").stat().st_mtime
    later = submitted("6_0", "b", cells[2:], cancelled=True)  # a stopped driver's: T=128 runs again
    os.utime(run.folder / f"6_0{slurm.SUBMITTED}", (then + 1, then + 1))
    write_whole(later / f"0{STARTED}", {})
    run._adopt({c.key for c in cells})

    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["seq_len"], r["status"]) for r in records] == [(16, "ok")]  # recorded once, now
    assert list(run.tasks) == ["5_0"] and run.tasks["5_0"].owed == {1}  # T=64 waited on; T=128 is free
    assert slurm.cells_in_flight(tmp_path) == {cells[1].key: "5_0"}
