"""titans-lmm training and prefill tokens/s on the CPU, two checkouts against each other.

    python scripts/bench_titans_chunk_speed.py --old /path/to/old/checkout [--new .] [--pairs 5]
                                               [--repeats 5] [--seq 1024] [--compiled]

The default CPU sweep's shape (vocabulary 512, d_model 128, 2 layers, float32, batch 1, 1 thread) at
--seq tokens, timed as the harness times it (bench/measure.py): train = zero_grad, forward, cross-entropy,
backward; prefill = a forward under torch.inference_mode. Every measurement runs in a fresh process that
imports the model code from the checkout it is given; old and new alternate (the order flips every pair)
so that a shared CPU's drift hits both alike. Each process warms up twice, then reports the median of
--repeats calls, by wall-clock time (what the harness reports) and by the process's CPU time (less
sensitive to other processes on a shared machine: "train cpu", "prefill cpu"). Printed: the median
tokens/s of each side and the median of the per-pair ratios.
``--compiled`` adds a third side: the new checkout with the memory's compiled chunk step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, statistics, sys, time
sys.path.insert(0, {path!r})
import torch
import torch.nn.functional as F
import bench
torch.set_num_threads(1)
torch.manual_seed(0)
kwargs = dict(vocab_size=512, d_model=128, n_layers=2, backend="torch-chunked")
if {compiled!r}:
    kwargs["compile_memory"] = True
model = bench.build("titans-lmm", **kwargs)
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, 512, (1, {seq}), generator=g)
targets = torch.randint(0, 512, (1, {seq}), generator=g)

def train():
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(ids).float().view(-1, 512), targets.view(-1)).backward()

def prefill():
    with torch.inference_mode():
        model(ids)

out = {{"bench": bench.__file__}}
for name, fn in (("train", train), ("prefill", prefill)):
    model.train(name == "train")
    for _ in range(2):
        fn()
    wall, cpu = [], []
    for _ in range({repeats}):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out[name] = {seq} / statistics.median(wall)
    out[name + " cpu"] = {seq} / statistics.median(cpu)
print(json.dumps(out))
"""


def run(path: Path, seq: int, repeats: int, compiled: bool) -> dict:
    code = WORKER.format(path=str(path.resolve()), seq=seq, repeats=repeats, compiled=compiled)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if not Path(out["bench"]).resolve().is_relative_to(path.resolve()):
        raise RuntimeError(f"the worker imported {out['bench']}, not the checkout {path}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the code before the change")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--compiled", action="store_true", help="also the new code's compiled memory step")
    args = parser.parse_args()

    sides = {"old": (args.old, False), "new": (args.new, False)}
    if args.compiled:
        sides["new compiled"] = (args.new, True)
    rates: dict[str, list[dict]] = {name: [] for name in sides}
    t0 = time.time()
    for pair in range(args.pairs):
        order = list(sides) if pair % 2 == 0 else list(sides)[::-1]
        for name in order:
            path, compiled = sides[name]
            rates[name].append(run(path, args.seq, args.repeats, compiled))
        print(f"pair {pair + 1}: " + ", ".join(
            f"{n} train {rates[n][-1]['train']:.0f} prefill {rates[n][-1]['prefill']:.0f}" for n in sides
        ), flush=True)  # fmt: skip
    elapsed = time.time() - t0
    print(f"\ntitans-lmm, T={args.seq}, batch 1, float32, 1 thread; {args.pairs} pairs ({elapsed:.0f} s)")
    for mode in ("train", "prefill", "train cpu", "prefill cpu"):
        old = [r[mode] for r in rates["old"]]
        print(f"{mode}: old median {statistics.median(old):.0f} tok/s (runs {[round(x) for x in old]})")
        for name in list(sides)[1:]:
            new = [r[mode] for r in rates[name]]
            ratio = statistics.median(n / o for n, o in zip(new, old, strict=True))
            print(f"  {name}: median {statistics.median(new):.0f} tok/s (runs {[round(x) for x in new]}), "
                  f"median per-pair ratio {ratio:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
