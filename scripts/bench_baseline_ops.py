"""CPU speed of our baseline operators against the upstream pure-PyTorch references.

    python scripts/bench_baseline_ops.py [--repeats 5] [--threads N] [--skip-ref-backward]

Needs the references (scripts/install_cpu_references.sh). The CPU may be shared and noisy, so every
comparison runs in this one process, candidates interleaved round by round after a warm-up call; each
line gives the median time and, for a pair, the median of the per-round ratios.

1. DeltaNet forward, B=4 T=2048 H=8 D=64: ours chunked vs fla's naive ``delta_rule_chunkwise``.
2. Selective scan forward, batch 1, d_inner 256, d_state 16, T=4096: ours vs mamba-ssm's
   ``selective_scan_ref``.
3. Selective scan forward+backward at T = 1024, 2048, 4096 (ours), and the reference's at T=1024 only
   (its backward runs through its Python loop: ~16 s there, minutes at 4096).
4. Mamba2 SSD forward, H=8 P=32 N=64 chunk 64: ours vs ``ssd_minimal_discrete`` (for information).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import upstream  # noqa: E402  (tests/upstream.py)

from baselines.deltanet import delta_rule_chunked  # noqa: E402
from baselines.mamba import selective_scan, ssd_chunked  # noqa: E402


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one call of each per round, after one warm-up call each."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], baseline: str | None = None) -> None:
    for name, ts in times.items():
        line = f"  {name:<40} median {1e3 * statistics.median(ts):9.1f} ms   min {1e3 * min(ts):9.1f} ms"
        if baseline is not None and name != baseline:
            ratio = statistics.median(b / t for b, t in zip(times[baseline], ts, strict=True))
            line += f"   {ratio:5.2f}x faster than {baseline}"
        print(line)


def bench_deltanet(repeats: int) -> None:
    print("DeltaNet forward, B=4 T=2048 H=8 D=64, float32")
    reference = upstream.fla_delta_rule_chunkwise()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 8, 2048, 64, generator=gen) for _ in range(3))
    k = F.normalize(k, dim=-1)
    beta = torch.rand(4, 8, 2048, generator=gen)
    candidates = {
        "ours delta_rule_chunked (C=32, default)": lambda: delta_rule_chunked(q, k, v, beta),
        "ours delta_rule_chunked (C=64)": lambda: delta_rule_chunked(q, k, v, beta, chunk_size=64),
    }
    if reference is not None:
        candidates["fla delta_rule_chunkwise (C=32)"] = lambda: reference(q, k, v, beta)  # its default
        candidates["fla delta_rule_chunkwise (C=64)"] = lambda: reference(q, k, v, beta, chunk_size=64)
    with torch.no_grad():
        times = interleaved(candidates, repeats)
    report(times, "fla delta_rule_chunkwise (C=32)" if reference is not None else None)


def scan_inputs(length: int, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """Mamba-like selective-scan inputs: batch 1, d_inner 256, d_state 16, delta through softplus."""
    gen = torch.Generator().manual_seed(0)
    dim, d_state = 256, 16
    inputs = {
        "u": torch.randn(1, dim, length, generator=gen),
        "delta": torch.randn(1, dim, length, generator=gen) - 2.0,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1),  # Mamba's S4D-real init
        "B": torch.randn(1, d_state, length, generator=gen),
        "C": torch.randn(1, d_state, length, generator=gen),
        "D": torch.ones(dim),
        "z": torch.randn(1, dim, length, generator=gen),
        "delta_bias": torch.randn(dim, generator=gen) * 0.1,
    }
    return {name: x.requires_grad_(requires_grad) for name, x in inputs.items()}


def forward_backward(op: Callable, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        for x in inputs.values():
            x.grad = None
        op(**inputs, delta_softplus=True).sum().backward()

    return run


def bench_selective_scan(repeats: int, ref_backward: bool) -> None:
    reference = upstream.mamba_selective_scan_ref()
    print("Selective scan forward, batch 1, d_inner 256, d_state 16, T=4096, float32")
    inputs = scan_inputs(4096)
    candidates = {"ours selective_scan": lambda: selective_scan(**inputs, delta_softplus=True)}
    if reference is not None:
        candidates["mamba-ssm selective_scan_ref"] = lambda: reference(**inputs, delta_softplus=True)
    with torch.no_grad():
        times = interleaved(candidates, repeats)
    report(times, "mamba-ssm selective_scan_ref" if reference is not None else None)

    print("Selective scan forward+backward (ours), same sizes")
    lengths = (1024, 2048, 4096)
    candidates = {f"ours T={n}": forward_backward(selective_scan, scan_inputs(n, True)) for n in lengths}
    times = interleaved(candidates, repeats)
    report(times)
    per_token = {n: statistics.median(times[f"ours T={n}"]) / n for n in lengths}
    print(
        "  time per token relative to T=1024: "
        + ", ".join(f"T={n} {per_token[n] / per_token[1024]:.2f}" for n in lengths)
    )
    if reference is not None and ref_backward:
        print("Selective scan forward+backward of the reference at T=1024 (one call, no warm-up)")
        run = forward_backward(reference, scan_inputs(1024, True))
        start = time.perf_counter()
        run()
        ref_time = time.perf_counter() - start
        ours = statistics.median(times["ours T=1024"])
        print(f"  mamba-ssm selective_scan_ref T=1024 {1e3 * ref_time:9.1f} ms ({ref_time / ours:.0f}x ours)")


def ssd_inputs(length: int) -> tuple[torch.Tensor, ...]:
    """Mamba2-like SSD inputs, batch 1, H=8 P=32 N=64: X, A already times dt."""
    gen = torch.Generator().manual_seed(0)
    dt = F.softplus(torch.randn(1, length, 8, generator=gen) - 2.0)
    X = torch.randn(1, length, 8, 32, generator=gen) * dt[..., None]
    A = -torch.rand(8, generator=gen) * dt
    B, C = (torch.randn(1, length, 8, 64, generator=gen) for _ in range(2))
    return X, A, B, C


def bench_ssd(repeats: int) -> None:
    reference = upstream.mamba_ssd_minimal_discrete()
    print("Mamba2 SSD forward, batch 1, H=8 P=32 N=64, chunk 64, float32")
    for length in (1024, 4096):
        inputs = ssd_inputs(length)
        candidates = {f"ours ssd_chunked T={length}": lambda x=inputs: ssd_chunked(*x, chunk_size=64)}
        if reference is not None:
            candidates[f"mamba-ssm ssd_minimal T={length}"] = lambda x=inputs: reference(*x, 64)
        with torch.no_grad():
            times = interleaved(candidates, repeats)
        report(times, f"mamba-ssm ssd_minimal T={length}" if reference is not None else None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--skip-ref-backward", action="store_true", help="skip the reference's ~16 s backward"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, load average {load}")
    if upstream.fla_delta_rule_chunkwise() is None or upstream.mamba_selective_scan_ref() is None:
        print("upstream references missing (scripts/install_cpu_references.sh): timing ours only")
    bench_deltanet(args.repeats)
    bench_selective_scan(args.repeats, not args.skip_ref_backward)
    bench_ssd(args.repeats)


if __name__ == "__main__":
    main()
