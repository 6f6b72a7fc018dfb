"""Titans decoding speed on the CPU: the token-by-token memory op against the chunked op, in one model.

    python scripts/bench_titans_decode.py [--model titans-lmm] [--repeats 7] [--tokens 100] [--threads 1]

Builds the model at the default CPU sweep's shape (d_model 128, 2 layers, vocabulary 512), prefills a
64-token prompt, then times `model.step` with each memory op in turn: `fused_recurrent_titans_memory` (what
the `torch-chunked` backend decodes with) and `chunk_titans_memory` called on one token (what it decoded with
before). Rounds alternate between the two, after a warm-up, so a shared CPU's drift hits both alike;
it prints the median tokens/s of each and the median per-round ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench  # noqa: E402
from models.titans import chunk_titans_memory, fused_recurrent_titans_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="titans-lmm")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = bench.build(args.model, d_model=128, n_layers=2, vocab_size=512, backend="torch-chunked").eval()
    mixers = [m for m in model.modules() if hasattr(m, "memory_step_op")]
    prompt = torch.randint(0, 512, (1, 64))
    ops = {"fused_recurrent": fused_recurrent_titans_memory, "chunked": chunk_titans_memory}
    rates: dict[str, list[float]] = {name: [] for name in ops}
    with torch.no_grad():
        _, start = model.prefill(prompt)
        token = prompt[:, -1]
        for round_ in range(args.repeats + 1):
            for name, op in ops.items():
                for mixer in mixers:
                    mixer.memory_step_op = op
                state = copy.deepcopy(start)  # step may update a state in place (KV caches do)
                t0 = time.perf_counter()
                for _ in range(args.tokens):
                    _, state = model.step(token, state)
                if round_:  # the first round warms up
                    rates[name].append(args.tokens / (time.perf_counter() - t0))
    ratios = [a / b for a, b in zip(rates["fused_recurrent"], rates["chunked"], strict=True)]
    print(f"{args.model}, batch 1, {args.tokens} steps x {args.repeats} rounds, {args.threads} thread(s)")
    for name, values in rates.items():
        print(f"  {name:16s} {statistics.median(values):7.0f} tok/s  (rounds: {[round(v) for v in values]})")
    print(f"  median per-round ratio fused_recurrent / chunked: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
