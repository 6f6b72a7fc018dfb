"""The titans-pytorch peer loads through the plug-in path a user would use, and runs in our shell."""

import torch

import bench
from models.modules import tensor_bytes


def test_peer_is_a_plugin_by_path():
    assert "baselines.titans_pytorch:build" not in bench.list_models()  # not a built-in
    model = bench.build("baselines.titans_pytorch:build", vocab_size=32, d_model=32, n_layers=1, chunk_size=4)
    x = torch.randint(0, 32, (2, 12))
    logits = model(x)
    assert logits.shape == (2, 12, 32) and model.backend == "titans-pytorch"
    _, state = model.prefill(x[:, :8])
    step_logits = []
    for t in range(8, 12):
        out, state = model.step(x[:, t], state)
        step_logits.append(out)
    torch.testing.assert_close(torch.stack(step_logits, 1), logits[:, 8:], rtol=1e-4, atol=1e-4)
    assert model.state_bytes(2, 8) == tensor_bytes(state) > 0
