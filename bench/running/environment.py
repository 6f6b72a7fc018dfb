"""What a result depends on besides the code: versions, hardware, numerics flags, the git commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from bench.errors import BenchError

PACKAGES = (
    "torch",
    "triton",
    "mamba-ssm",
    "causal-conv1d",
    "flash-linear-attention",
    "fla-core",
    "titans-pytorch",
    "numpy",
    "pandas",
    "pydantic",
    "ray",
    "submitit",
)

ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "CUDA_VISIBLE_DEVICES", "PYTORCH_", "TORCH_")

# Dense peak FLOP/s by GPU name fragment, from the vendors' data sheets, for MFU: bf16/fp16 tensor cores;
# float32 on TF32 tensor cores ("tf32") when TF32 is enabled, else plain FP32 ("float32").
PEAK_FLOPS = {
    "H200": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "H100 SXM": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "H100 80GB HBM3": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 66.9e12},
    "H100 PCIe": {"bfloat16": 756.0e12, "float16": 756.0e12, "tf32": 378.0e12, "float32": 51.2e12},
    "A100": {"bfloat16": 312.0e12, "float16": 312.0e12, "tf32": 156.0e12, "float32": 19.5e12},
}


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" where a CUDA device is, else "cpu"; an unavailable "cuda" is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("device 'cuda' was asked for but no CUDA device is available here")
    return device


def peak_flops(gpu_name: str | None, dtype: str, tf32: bool = False) -> float | None:
    """Peak dense FLOP/s of what really runs, for MFU: float32 counts the TF32 peak only when TF32 is on.
    None when the GPU (or the CPU) is not in the table."""
    if not gpu_name:
        return None
    key = "tf32" if dtype == "float32" and tf32 else dtype
    for fragment, table in PEAK_FLOPS.items():
        if fragment in gpu_name:
            return table.get(key)
    return None


def _package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _git(args: list[str]) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[2],
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> dict:
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu_name": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_bytes": props.total_memory,
        "gpu_capability": f"{props.major}.{props.minor}",
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        info["driver_version"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["driver_version"] = None
    return info


def numerics_flags() -> dict:
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def collect(seed: int | None = None) -> dict:
    """The run's manifest: enough to know what produced a number and to reproduce it."""
    commit = _git(["rev-parse", "HEAD"])
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": _package_versions(),
        "torch_cuda_available": torch.cuda.is_available(),
        **_gpu(),
        **numerics_flags(),
        # Thread and allocator settings change CPU and GPU timings (busy-waiting OpenMP threads, say).
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
    }
