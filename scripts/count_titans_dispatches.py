"""Operator calls per token of one-layer models on the CPU (bench.measure.launches.count_dispatches).

    python scripts/count_titans_dispatches.py [--seq 4096] [--models titans-lmm,transformer,mamba2,deltanet]
                                              [--chunk-size 16] [--compiled]

Each model is built with one layer, d_model 128, vocabulary 512 (backend torch-chunked where it has one),
in float32, batch 1. Two counts per model, each divided by batch x tokens: forward + backward (loss =
mean of squared logits, then .backward()) and an inference forward (torch.inference_mode). Both run once
untimed first, so one-off work (lazy initialisation, compilation) is not counted. ``--compiled`` builds the
Titans memory with its compiled chunk step (its generated kernels are counted; compiling takes a while).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench  # noqa: E402
from bench.measure.launches import count_dispatches  # noqa: E402
from bench.registry import describe_backends  # noqa: E402


def build(name: str, chunk_size: int, compiled: bool):
    kwargs = dict(vocab_size=512, d_model=128, n_layers=1)
    if "torch-chunked" in describe_backends(name):
        kwargs["backend"] = "torch-chunked"
    if name.startswith("titans"):
        kwargs["chunk_size"] = chunk_size
        if compiled:
            kwargs["compile_memory"] = True
    return bench.build(name, **kwargs)


def per_token(name: str, seq: int, chunk_size: int, compiled: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build(name, chunk_size, compiled)
    x = torch.randint(0, 512, (1, seq))

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()

    def inference():
        with torch.inference_mode():
            model(x)

    counts = []
    for fn in (train_step, inference):
        fn()  # warm-up: lazy initialisation and compilation stay out of the count
        counts.append(count_dispatches(fn, "cpu") / x.numel())
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--models", default="titans-lmm,transformer,mamba2,deltanet")
    parser.add_argument("--chunk-size", type=int, default=16, help="the Titans memory's chunk")
    parser.add_argument("--compiled", action="store_true", help="the Titans memory's compiled chunk step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"one layer, d_model 128, T={args.seq}, batch 1, float32; operator calls per token")
    print(f"{'model':24s} {'fwd+bwd':>9s} {'inference':>10s}")
    for name in args.models.split(","):
        train, infer = per_token(name, args.seq, args.chunk_size, args.compiled)
        label = f"{name} (chunk {args.chunk_size})" if name.startswith("titans") else name
        print(f"{label:24s} {train:9.2f} {infer:10.2f}")


if __name__ == "__main__":
    main()
