"""`--executor slurm` against a real single-node Slurm cluster that the module's fixture starts (munged,
slurmctld and slurmd from scripts/slurm/single_node.py) and stops: the same cells and statuses as the local
executor, a cancelled job fails its cell only, a stopped driver leaves no job behind, and a driver killed
with SIGKILL is resumed with every cell measured exactly once, its running jobs found again."""

import importlib.util
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import results
from bench.cli import main
from bench.running.slurm import SUBMITTED, cells_in_flight
from bench.spec.cells import cell_from_json
from tests.helpers import TINY_SWEEP

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FAULTY = "tests.plugins.faulty"
ARGS = ["--modes", "prefill", "--no-report", *TINY_SWEEP]


def _single_node():
    path = ROOT / "scripts" / "slurm" / "single_node.py"
    spec = importlib.util.spec_from_file_location("single_node", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    single_node = _single_node()
    directory = tmp_path_factory.mktemp("slurm")
    info = single_node.start(directory)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture:  # shown in the test output, as the README promises
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nsingle-node Slurm cluster up in {info['seconds']:.1f} s")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = info["conf"]  # every client command, in this process and the drivers
    try:
        yield info
    finally:
        left = single_node.stop(directory)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
    assert not left, f"jobs outlived the tests: {left}"


def sweep_file(tmp_path: Path, timeout_s: float) -> Path:
    """The executor chosen in the sweep file, as a user would; squeue asked every second, not every 5."""
    path = tmp_path / "sweep.toml"
    path.write_text(f'executor = "slurm"\ntimeout_s = {timeout_s}\n\n[slurm]\npoll_s = 1\n')
    return path


def squeue(*args: str) -> list[str]:
    proc = subprocess.run(["squeue", "--noheader", *args], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def wait_for(what: str, ready, timeout_s: float = 120, driver: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while not (value := ready()):
        if driver is not None and driver.poll() is not None:
            pytest.fail(f"the driver ended ({driver.returncode}) before {what}: {driver.stderr.read()}")
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.2)
    return value


def start_driver(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )


def submitted_cells(out: Path) -> list[str]:
    """Every cell key in every call submitted to Slurm for this run, from submitit's folder."""
    keys = []
    for path in (out / "slurm").glob(f"*{SUBMITTED}"):
        with open(path, "rb") as f:
            keys += [cell_from_json(c).key for c in pickle.load(f).args[0]["cells"]]
    return keys


def test_slurm_runs_the_same_cells_with_the_same_statuses_as_local(tmp_path, cluster):
    # One sweep file for both runs: the executor alone differs. `hang` hangs at 128 only: one timeout.
    sweep = tmp_path / "faults.toml"
    sweep.write_text(
        "models = [" + ", ".join(f'"{FAULTY}:{m}"' for m in ("healthy", "oom", "kill", "fail"))
        + f', {{ name = "{FAULTY}:hang", args = {{ min_len = 128 }} }}]\n'
        + "timeout_s = 8\n\n[slurm]\npoll_s = 1\n"
    )  # fmt: skip
    runs = ["run", str(sweep), "--seq-lens", "64,128", *ARGS]
    assert main([*runs, "--out", str(tmp_path / "local")]) == 0
    assert main([*runs, "--executor", "slurm", "--out", str(tmp_path / "slurm")]) == 0

    local, on_slurm = results.read_records(tmp_path / "local"), results.read_records(tmp_path / "slurm")
    as_set = lambda records: {(r["key"], r["status"]) for r in records}  # noqa: E731
    assert as_set(local) == as_set(on_slurm) and len(on_slurm) == 10
    status = {(r["model"].split(":")[1], r["seq_len"]): r for r in on_slurm}
    assert status[("oom", 64)]["status"] == "oom" and status[("oom", 128)]["status"] == "skipped"
    assert status[("kill", 64)]["status"] == "crashed" and "SIGKILL" in status[("kill", 64)]["error"]
    assert status[("fail", 64)]["status"] == "crashed" and "simulated" in status[("fail", 64)]["error"]
    assert status[("hang", 64)]["status"] == "ok" and status[("hang", 128)]["status"] == "timeout"

    node = socket.gethostname().split(".")[0]
    manifest = json.loads((tmp_path / "slurm" / "manifest.json").read_text())
    assert manifest["executor"] == "slurm"
    placed = {p["key"]: p for p in manifest["slurm"]["cells"]}
    measured = [r for r in on_slurm if r["status"] != "skipped"]
    assert set(placed) == {r["key"] for r in measured}
    for record in measured:
        assert placed[record["key"]]["job_id"] == record["slurm_job_id"]
        assert (placed[record["key"]]["node"], placed[record["key"]]["partition"]) == (node, "debug")
    # one array task per model's group of lengths, in one array
    assert len({r["slurm_job_id"] for r in measured}) == 5
    assert len({r["slurm_job_id"].split("_")[0] for r in measured}) == 1


def test_scancel_of_a_running_cell_fails_that_cell_only(tmp_path, cluster):
    out = tmp_path / "run"
    models = f"{FAULTY}:healthy,{FAULTY}:hang"
    spec = sweep_file(tmp_path, timeout_s=300)
    driver = start_driver(str(spec), "--models", models, "--seq-lens", "16,64", *ARGS, "--out", str(out))
    hung = wait_for(
        "hang's T=64 cell measuring",
        lambda: {k: j for k, j in cells_in_flight(out).items() if "hang/prefill/T64" in k},
        driver=driver,
    )
    ((key, job_id),) = hung.items()
    subprocess.run(["scancel", job_id], check=True)
    assert driver.wait(timeout=120) == 0, driver.stderr.read()

    records = results.read_records(out)
    assert len(records) == 4 and len({r["key"] for r in records}) == 4
    failed = [r for r in records if r["status"] != "ok"]
    assert [r["key"] for r in failed] == [key]
    assert failed[0]["status"] == "crashed" and f"slurm job {job_id} was cancelled" in failed[0]["error"]


def test_sigterm_to_the_driver_leaves_no_job_in_the_queue(tmp_path, cluster):
    out = tmp_path / "run"
    models = ",".join(f"{x}={FAULTY}:hang" for x in ("a", "b", "c"))  # 3 tasks, 2 CPUs: one waits
    spec = sweep_file(tmp_path, timeout_s=300)
    driver = start_driver(str(spec), "--models", models, "--seq-lens", "16,64", *ARGS, "--out", str(out))
    wait_for("2 running jobs", lambda: len(squeue("--states=RUNNING", "--format=%i")) == 2, driver=driver)
    assert len(squeue("--format=%i")) == 3
    driver.send_signal(signal.SIGTERM)
    try:
        code = driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        driver.kill()
        pytest.fail("the driver did not stop within 60 s of SIGTERM")
    stderr = driver.stderr.read()
    assert code == 128 + signal.SIGTERM and "stopped by SIGTERM" in stderr, stderr
    assert squeue("--format=%i") == []  # the default states: pending, running, completing...
    for task in (out / "slurm" / "tasks").iterdir():
        assert (task / "cancelled").exists() or (task / "done").exists()


def test_killed_driver_then_resume_finishes_every_cell_exactly_once(tmp_path, cluster, monkeypatch):
    out = tmp_path / "run"
    models = ",".join(f"{x}={FAULTY}:sleepy" for x in ("a", "b", "c"))  # 3 tasks, 2 CPUs: one waits
    spec = sweep_file(tmp_path, timeout_s=120)
    sweep = [str(spec), "--models", models, "--seq-lens", "16", *ARGS]
    monkeypatch.setenv("TITANS_BENCH_TEST_DELAY", "0.1")  # per forward, in every cell: jobs inherit it
    driver = start_driver(*sweep, "--out", str(out))
    path = out / results.RESULTS
    wait_for("a recorded cell", lambda: path.exists() and results.read_records(out), driver=driver)
    driver.kill()  # SIGKILL: no handler runs, no job is cancelled
    driver.wait()
    before = results.read_records(out)
    assert 1 <= len(before) < 3, "the kill should land partway through the sweep"
    assert squeue("--format=%i"), "the killed driver's jobs should still be queued or running"

    assert main(["run", *sweep, "--resume", str(out)]) == 0
    after = results.read_records(out)
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 3 and {r["status"] for r in after} == {"ok"}
    assert after[: len(before)] == before
    submitted = submitted_cells(out)
    assert len(submitted) == len(set(submitted)) == 3  # found again, never submitted twice
