import pytest
import torch

# Tiny tensors gain nothing from intra-op threads, and on a loaded machine spinning OpenMP workers
# make every small op slow; the harness's own measurements set their thread count explicitly.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
