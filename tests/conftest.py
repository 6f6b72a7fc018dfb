import pytest
import torch

import bench
from bench.registry import describe_backends

# Tiny tensors gain nothing from intra-op threads, and on a loaded machine spinning OpenMP workers
# make every small op slow; the harness's own measurements set their thread count explicitly.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Small enough that every family runs the conformance suite in seconds, in float64 so that "equal"
# means equal to rounding, not to a loose tolerance.
TINY = dict(vocab_size=37, d_model=32, n_layers=2)


# A sweep through the command line that runs in seconds: the smallest model, few repeats, on the CPU.
TINY_SWEEP = (
    "--d-model 16 --n-layers 1 --vocab-size 32 --repeats 2 --warmup 1 --device cpu --no-progress"
).split()


def tiny_model(name: str, **overrides):
    # These tests hold the pure-PyTorch fast path to the contract in float64 on the CPU. On a CUDA machine
    # "auto" would pick the upstream kernels, which `python -m bench validate` checks against this path.
    if "backend" not in overrides and "torch-chunked" in describe_backends(name):
        overrides["backend"] = "torch-chunked"
    return bench.build(name, **{**TINY, **overrides}).to(torch.float64)
