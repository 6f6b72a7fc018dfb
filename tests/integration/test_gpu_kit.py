"""The GPU kit (scripts/gpu/), rehearsed on the CPU: what fetch.sh downloads is exactly what is pinned,
resolves offline for the GPU machines' Python 3.12 on manylinux, and fits what a device call carries;
run.sh --dry-run goes through every step at toy sizes, keeps its deadline and packs the same archive a
GPU run packs. The wheel tests download from PyPI (about 5 MiB, seconds): a machine without registry
access fails them, saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import tomllib

# Integration tests, all of them: the fetch needs the package registry, the dry runs take minutes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "scripts" / "gpu"
MAX_MIB = 60


def _builtin_models() -> list[str]:
    """The models a fresh process registers, as the kit sees them: not the test-only ones that other tests
    register in this pytest process."""
    code = "import bench; print(' '.join(bench.list_models()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return proc.stdout.split()


def _kit_tools(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(KIT / "kit_tools.py"), *args], capture_output=True, text=True, timeout=120
    )


def _run(cmd: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run a kit script in its own process group; on a timeout the whole group is stopped."""
    began = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[:2]} ran over {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - began


# --- the pinned lists and the sweep files (no network, fast) ---


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (KIT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("!"):
            pkg, _, version = line.partition("==")
            pins[pkg] = version
    return pins


def test_sweep_files_name_every_registered_model_and_stay_on_cuda():
    spec = tomllib.loads((KIT / "sweep.toml").read_text())
    names = [m if isinstance(m, str) else m["name"] for m in spec["models"]]
    assert sorted(names) == sorted(_builtin_models())
    assert spec["device"] == "cuda" and spec["dtypes"] == ["bfloat16"]
    assert (spec["d_model"], spec["n_layers"], spec["seq_lens"]) == (1024, 4, [1024, 4096, 16384])
    assert set(spec["modes"]) == {"train", "prefill", "decode", "accuracy"} and spec["tasks"]
    # Mamba's kernels are built while the sweep runs: the sweep pins their PyTorch path
    pinned = {m["name"]: m["args"]["backend"] for m in spec["models"] if isinstance(m, dict)}
    assert pinned == {"mamba": "torch-chunked", "mamba2": "torch-chunked"}
    later = tomllib.loads((KIT / "sweep-mamba-ssm.toml").read_text())
    assert {m["args"]["backend"] for m in later["models"]} == {"mamba_ssm"}
    assert {k: later[k] for k in ("d_model", "n_layers", "repeats", "warmup", "decode_tokens")} == {
        k: spec[k] for k in ("d_model", "n_layers", "repeats", "warmup", "decode_tokens")
    }
    # the Titans backend comparison: both models on both backends, in the main sweep's shape and settings
    compared = tomllib.loads((KIT / "sweep-titans-backends.toml").read_text())
    entries = {(m["name"], m["args"]["backend"]) for m in compared["models"]}
    assert entries == {(n, b) for n in ("titans-lmm", "titans-mal") for b in ("torch-chunked", "triton")}
    assert compared["seq_lens"] == spec["seq_lens"] and set(compared["modes"]) == {"prefill", "train"}
    shape = ("device", "dtypes", "d_model", "n_layers", "vocab_size", "repeats", "warmup", "warmup_max")
    assert {k: compared[k] for k in shape} == {k: spec[k] for k in shape}


def test_pins_agree_with_the_build_script_and_requirements():
    wheels, sdists, requirements = _pins("wheels.txt"), _pins("sdists.txt"), _pins("requirements.txt")
    assert all(wheels.values()) and all(sdists.values())
    for name, version in requirements.items():
        assert wheels[name] == version, name
    build = (ROOT / "scripts" / "build_mamba_ssm_gpu.sh").read_text()
    versions = dict(re.findall(r"^(FLA|CONV|MAMBA)_VERSION=(\S+)$", build, re.M))
    assert versions == {
        "FLA": wheels["fla-core"],
        "CONV": sdists["causal-conv1d"],
        "MAMBA": sdists["mamba-ssm"],
    }
    assert wheels["flash-linear-attention"] == wheels["fla-core"]


def test_toy_spec_replaces_accuracy_settings_only(tmp_path):
    out = tmp_path / "toy.toml"
    proc = _kit_tools("toy-spec", str(KIT / "sweep.toml"), str(out), "d_model=32", "max_seconds=1")
    assert proc.returncode == 0, proc.stderr
    spec, toy = (tomllib.loads(p.read_text()) for p in (KIT / "sweep.toml", out))
    assert toy["accuracy"]["d_model"] == 32 and toy["accuracy"]["max_seconds"] == 1
    assert toy["d_model"] == spec["d_model"] == 1024  # the top-level key of the same name is untouched
    toy["accuracy"].update(d_model=spec["accuracy"]["d_model"], max_seconds=spec["accuracy"]["max_seconds"])
    assert toy == spec
    proc = _kit_tools("toy-spec", str(KIT / "sweep.toml"), str(out), "no_such_key=1")
    assert proc.returncode == 1 and "no_such_key" in proc.stderr


def test_merge_validate_keeps_every_row_and_names_a_missing_model(tmp_path):
    for model, status in (("a", "ok"), ("b", "MISMATCH")):
        part = tmp_path / "parts" / model
        part.mkdir(parents=True)
        rows = [{"model": model, "backend": "x", "dtype": "float32", "status": status}]
        (part / "validate.json").write_text(json.dumps({"manifest": {"m": model}, "rows": rows}))
        (part / "VALIDATE.md").write_text(
            f"# Backend validation\n\nintro\n\n| model | args |\n|---|---|\n| {model} | row |\n"
        )
    parts = [str(tmp_path / "parts" / m) for m in ("a", "b", "c")]
    proc = _kit_tools("merge-validate", str(tmp_path / "out"), *parts)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((tmp_path / "out" / "validate.json").read_text())
    assert [r["model"] for r in merged["rows"]] == ["a", "b", "c"] and merged["manifest"] == {"m": "a"}
    assert merged["rows"][2]["status"].startswith("no result")
    table = (tmp_path / "out" / "VALIDATE.md").read_text()
    assert table.startswith("# Backend validation\n\nintro\n") and table.count("| model |") == 1
    assert "| a | row |" in table and "| b | row |" in table and "| c |" in table


def test_titans_kernels_compile_for_hopper():
    """The Titans memory's Triton kernels, compiled for sm_90 here without a GPU (Triton ships ptxas):
    what the CPU interpreter cannot show, e.g. tl.dot's shape rules, is checked before a GPU is lent."""
    proc = subprocess.run(
        [sys.executable, str(KIT / "compile_titans_kernels.py")], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("titans_")]
    assert len(lines) == 4 and all("sm_90" in line and "registers" in line for line in lines), proc.stdout


# --- the carried wheels (PyPI) ---


@pytest.fixture(scope="module")
def carried(tmp_path_factory) -> Path:
    """What scripts/gpu/fetch.sh downloads, into a fresh folder."""
    dest = tmp_path_factory.mktemp("gpu-wheels")
    proc, took = _run(
        ["bash", str(KIT / "fetch.sh"), str(dest)], {**os.environ, "PYTHON": sys.executable}, 300
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/gpu/fetch.sh failed (exit {proc.returncode}); it needs PyPI (these tests download "
            f"the GPU kit's wheels from it):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    print(f"fetch.sh: {took:.0f} s\n{proc.stdout}")
    return dest


def test_fetch_gets_exactly_the_pinned_files_within_the_size_limit(carried):
    files = sorted(p.name for p in carried.iterdir())
    expected = [*_pins("wheels.txt").items(), *_pins("sdists.txt").items()]
    assert len(files) == len(expected), files
    for name, version in expected:
        stem = re.sub(r"[-_.]+", "_", name)
        assert any(f.startswith((f"{stem}-{version}-", f"{stem}-{version}.tar.gz")) for f in files), name
    # the ones build_mamba_ssm_gpu.sh checks for by name
    build = (ROOT / "scripts" / "build_mamba_ssm_gpu.sh").read_text()
    versions = dict(re.findall(r"^(FLA|CONV|MAMBA)_VERSION=(\S+)$", build, re.M))
    for needed in (
        f"causal_conv1d-{versions['CONV']}.tar.gz",
        f"mamba_ssm-{versions['MAMBA']}.tar.gz",
        f"fla_core-{versions['FLA']}-py3-none-any.whl",
        f"flash_linear_attention-{versions['FLA']}-py3-none-any.whl",
    ):
        assert needed in files
    assert any(re.match(r"pydantic_core-.*-cp312-cp312-manylinux.*x86_64.*\.whl$", f) for f in files)
    total = sum(p.stat().st_size for p in carried.iterdir())
    assert total < MAX_MIB * 2**20


def test_carried_wheels_resolve_offline_for_python_312(carried):
    proc = _kit_tools("check-wheels", str(carried))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resolved = proc.stdout.split("resolved offline", 1)[1]
    for name in _pins("wheels.txt"):
        assert re.search(rf"^  {re.sub(r'[-_]', '[-_]', name)} \S+  <- carried$", resolved, re.M | re.I), name
    # what fla needs and the image has, not carried
    assert re.search(r"^  transformers \S+  <- image$", resolved, re.M)


def test_a_missing_dependency_is_found_offline(carried, tmp_path):
    """typing-inspection (a dependency of pydantic) left out of the pins and the folder: pip's resolver
    says so here, not pip on the GPU machine."""
    lists, folder = tmp_path / "lists", tmp_path / "wheels"
    shutil.copytree(KIT, lists, ignore=shutil.ignore_patterns("*.py", "*.sh", "*.toml", "__pycache__"))
    shutil.copytree(carried, folder)
    wheels = (lists / "wheels.txt").read_text()
    (lists / "wheels.txt").write_text(re.sub(r"(?m)^typing-inspection==.*$", "", wheels))
    for path in folder.glob("typing_inspection-*"):
        path.unlink()
    proc = _kit_tools("check-wheels", str(folder), "--lists", str(lists))
    assert proc.returncode == 1
    assert "does not resolve offline" in proc.stderr and "typing-inspection" in proc.stderr


def test_a_second_version_or_an_unpinned_file_is_refused(carried, tmp_path):
    folder = tmp_path / "wheels"
    shutil.copytree(carried, folder)
    (folder / "pydantic-2.0.0-py3-none-any.whl").write_bytes(b"")
    (folder / "requests-2.0.0-py3-none-any.whl").write_bytes(b"")
    proc = _kit_tools("check-wheels", str(folder))
    assert proc.returncode == 1
    assert "pydantic: 2 files" in proc.stderr and "not in wheels.txt or sdists.txt: requests" in proc.stderr


# --- run.sh --dry-run ---


def _dry_run(tmp_path: Path, timeout: float, **env: str) -> tuple[subprocess.CompletedProcess, float, Path]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "KIT_WORK": str(tmp_path / "work"), **env}
    proc, took = _run(["bash", str(KIT / "run.sh"), "--dry-run", str(out)], env, timeout)
    return proc, took, out


def _archive(out: Path) -> dict[str, bytes]:
    with tarfile.open(out / "gpu-reports.tar.gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def test_dry_run_goes_through_every_step_and_packs_the_reports(carried, tmp_path):
    proc, took, out = _dry_run(tmp_path, 480, KIT_WHEELS=str(carried))
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"run.sh --dry-run: {took:.0f} s")
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu-reports.tar.gz",
        "kit.log",
    ]  # a device call's few files
    files = _archive(out)
    for name in (
        "kit.log",
        "SUMMARY.md",
        "validate/VALIDATE.md",
        "validate/validate.json",
        "sweep/REPORT.md",
        "sweep/results.jsonl",
        "sweep/manifest.json",
        "validate-mamba-ssm/validate.json",
        "sweep-mamba-ssm/REPORT.md",
        "titans-backends/REPORT.md",
        "titans-backends/results.jsonl",
        "logs/install.log",
        "logs/build.log",
    ):
        assert f"gpu-reports/{name}" in files, name
    assert any(n.startswith("gpu-reports/sweep/") and n.endswith(".png") for n in files)

    log = files["gpu-reports/kit.log"].decode()
    steps = ["install", "warmup-fla", "sweep", "sweep-16k", "sweep-report", "validate-mamba-ssm"]
    steps += ["titans-backends", "titans-backends-report"]
    steps += [f"validate-{m}" for m in _builtin_models()]
    for step in steps:
        assert re.search(rf"START {step} \(limit \d+s\)", log), step
        assert re.search(rf"END   {step}: ok after \d+s", log), step
    assert "Mamba CUDA kernels (mamba_ssm, causal-conv1d): built in" in log

    rows = json.loads(files["gpu-reports/validate/validate.json"])["rows"]
    assert {r["model"] for r in rows} == set(_builtin_models())
    assert all(r["status"] == "ok" for r in rows)
    # the two passes of the sweep in one results file: every model at both toy lengths, and accuracy
    cells = [json.loads(line) for line in files["gpu-reports/sweep/results.jsonl"].decode().splitlines()]
    assert all(c["status"] == "ok" for c in cells)
    timing = {(c["model"], c["mode"], c["seq_len"]) for c in cells if c["mode"] != "accuracy"}
    assert timing == {
        (m, mode, t) for m in _builtin_models() for mode in ("train", "prefill", "decode") for t in (32, 64)
    }
    assert {c["model"] for c in cells if c["mode"] == "accuracy"} == set(_builtin_models())
    summary = files["gpu-reports/SUMMARY.md"].decode()
    assert "## Sweep" in summary and "2 timed repeats" in summary and "| titans-mac |" in summary
    # the Titans memory on both backends side by side, beside Gated DeltaNet and Mamba2
    compared = [json.loads(line) for line in files["gpu-reports/titans-backends/results.jsonl"].splitlines()]
    assert all(c["status"] == "ok" for c in compared)
    ran = {(c["label"], c["backend"].split("+")[0], c["mode"]) for c in compared}
    assert ran == {
        (f"{m}-{b.split('-')[0]}", b, mode)
        for m in ("titans-lmm", "titans-mal")
        for b in ("torch-chunked", "triton")
        for mode in ("prefill", "train")
    }
    section = summary.split("## Titans memory: PyTorch vs Triton", 1)[1]
    for row in ("| titans-lmm | triton |", "| titans-mal | torch-chunked", "| titans-lmm | speed-up |"):
        assert row in section, row
    assert "| gated-deltanet | torch-chunked |" in section and "| mamba2 | torch-chunked |" in section


def test_dry_run_keeps_its_deadline_and_says_what_was_not_built(tmp_path):
    """A 40-second budget and a build that would take an hour: the kit stops the build, skips what no
    longer fits, and still packs an archive, inside the budget."""
    marker = "3600.123"  # the stub build's seconds, to find it among the processes
    proc, took, out = _dry_run(
        tmp_path, 120, KIT_BUDGET_S="40", KIT_STUB_BUILD_S=marker, KIT_WHEELS=str(tmp_path / "none")
    )
    assert took < 40 + 10, f"ran {took:.0f} s on a 40 s budget"
    assert proc.returncode == 1  # steps skipped for lack of time count as failures
    files = _archive(out)
    summary = files["gpu-reports/SUMMARY.md"].decode()
    assert "Mamba CUDA kernels (mamba_ssm, causal-conv1d): not built (time)" in summary
    assert "SKIP" in files["gpu-reports/kit.log"].decode()
    assert "carried wheels: not checked" in summary
    left = [p for p in Path("/proc").glob("[0-9]*") if marker in _cmdline(p)]
    assert not left, "the stub build is still running"


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
