import pytest
import torch

import bench


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Small enough that every family runs the conformance suite in seconds, in float64 so that "equal"
# means equal to rounding, not to a loose tolerance.
TINY = dict(vocab_size=37, d_model=32, n_layers=2)


def tiny_model(name: str, **overrides):
    return bench.build(name, **{**TINY, **overrides}).to(torch.float64)
