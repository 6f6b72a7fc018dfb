"""pytest-benchmark micro-benchmarks: a small CPU cell of every registered model in each timing mode,
timed through the harness's own cell callables (bench.measure.cell.step_callable).

Not part of the default test run. Run with ``tox -e perf`` or
``pytest tests/perf --benchmark-only --benchmark-autosave`` and compare commits with
``pytest tests/perf --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%``.
"""

import pytest
import torch

import bench
from bench.measure.cell import make_model, step_callable
from bench.spec.cells import TimingCell

SHAPE = dict(vocab_size=256, d_model=64, n_layers=2)


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
@pytest.mark.parametrize("name", bench.list_models())
def test_cell(benchmark, name, mode):
    torch.set_num_threads(1)  # one thread: stabler numbers on shared CI machines
    cell = TimingCell(
        model=name,
        label=name,
        seq_len=256,
        batch_size=1,
        dtype="float32",
        mode=mode,
        device="cpu",
        decode_tokens=8,
        **SHAPE,
    )
    model, autocast = make_model(cell, torch.device("cpu"))
    fn, tokens, setup = step_callable(cell, model, torch.device("cpu"), autocast)
    benchmark.extra_info.update(tokens_per_call=tokens, backend=model.backend)
    benchmark.pedantic(fn, setup=setup, rounds=5, warmup_rounds=1, iterations=1)
