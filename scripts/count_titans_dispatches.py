"""Operator calls per token of one-layer models on the CPU (bench.measure.launches.count_dispatches).

    python scripts/count_titans_dispatches.py [--seq 4096] [--models titans-lmm,transformer,mamba2,deltanet]
                                              [--chunk-size 16] [--compiled] [--titans-backend triton]
                                              [--inference-only]

Each model is built with one layer, d_model 128, vocabulary 512 (backend torch-chunked where it has one),
in float32, batch 1. Two counts per model, each divided by batch x tokens: forward + backward (loss =
mean of squared logits, then .backward()) and an inference forward (torch.inference_mode). Both run once
untimed first, so one-off work (lazy initialisation, compilation) is not counted. ``--compiled`` builds the
Titans memory with its compiled chunk step (its generated kernels are counted; compiling takes a while).
``--titans-backend triton`` gives the Titans models the Triton kernels, on a machine without CUDA through
Triton's interpreter (TRITON_INTERPRET=1, set here): each launch counts once, the interpreter's work inside
it not at all (minutes at 4096 tokens, the backward's the longest: ``--inference-only`` skips it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench  # noqa: E402
from bench.measure.launches import count_dispatches  # noqa: E402
from bench.registry import describe_backends  # noqa: E402


def build(name: str, chunk_size: int, compiled: bool, titans_backend: str):
    kwargs = dict(vocab_size=512, d_model=128, n_layers=1)
    if "torch-chunked" in describe_backends(name):
        kwargs["backend"] = "torch-chunked"
    if name.startswith("titans"):
        kwargs["backend"] = titans_backend
        kwargs["chunk_size"] = chunk_size
        if compiled:
            kwargs["compile_memory"] = True
    return bench.build(name, **kwargs)


def per_token(name: str, seq: int, chunk_size: int, compiled: bool, titans_backend: str,
              inference_only: bool) -> tuple[float, float]:  # fmt: skip
    torch.manual_seed(0)
    model = build(name, chunk_size, compiled, titans_backend)
    x = torch.randint(0, 512, (1, seq))

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()

    def inference():
        with torch.inference_mode():
            model(x)

    counts = []
    for fn in (train_step, inference):
        if fn is train_step and inference_only:
            counts.append(float("nan"))
            continue
        fn()  # warm-up: lazy initialisation and compilation stay out of the count
        counts.append(count_dispatches(fn, "cpu") / x.numel())
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--models", default="titans-lmm,transformer,mamba2,deltanet")
    parser.add_argument("--chunk-size", type=int, default=16, help="the Titans memory's chunk")
    parser.add_argument("--compiled", action="store_true", help="the Titans memory's compiled chunk step")
    parser.add_argument("--titans-backend", default="torch-chunked", help="torch-chunked or triton")
    parser.add_argument("--inference-only", action="store_true", help="skip the forward + backward count")
    args = parser.parse_args()
    if args.titans_backend == "triton" and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are first imported, at their first call
    torch.set_num_threads(1)
    print(f"one layer, d_model 128, T={args.seq}, batch 1, float32; operator calls per token")
    print(f"{'model':32s} {'fwd+bwd':>9s} {'inference':>10s}")
    for name in args.models.split(","):
        train, infer = per_token(
            name, args.seq, args.chunk_size, args.compiled, args.titans_backend, args.inference_only
        )
        label = name
        if name.startswith("titans"):
            label = f"{name} ({args.titans_backend}, chunk {args.chunk_size})"
        print(f"{label:32s} {train:9.3f} {infer:10.3f}")


if __name__ == "__main__":
    main()
