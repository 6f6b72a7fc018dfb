"""Timing cells: what is in a key (everything that changes the measurement), param-matched sizing."""

import pytest

from bench.errors import BenchError
from bench.spec.cells import TimingCell, expand
from bench.spec.config import ModelEntry, parse_spec
from bench.spec.sizing import non_embedding_params

CELL = dict(
    model="transformer",
    label="transformer",
    vocab_size=512,
    d_model=128,
    n_layers=2,
    seq_len=256,
    batch_size=1,
    dtype="float32",
    mode="train",
    device="cpu",
)


def test_timing_keys_are_stable_and_name_the_cell():
    # pinned: a key that changes between commits would make `compare` see two disjoint runs
    assert TimingCell(**CELL).key == "transformer/train/T256/B1/float32/cpu/986e1426dd"


def test_threads_and_decoded_tokens_are_part_of_the_key():
    base = TimingCell(**CELL)
    assert TimingCell(**CELL, threads=1).key != base.key
    assert TimingCell(**CELL, repeats=50, warmup=7).key == base.key  # how long it is measured is not
    decode = TimingCell(**{**CELL, "mode": "decode"}, decode_tokens=32)
    assert TimingCell(**{**CELL, "mode": "decode"}, decode_tokens=64).key != decode.key
    assert TimingCell(**CELL, decode_tokens=64).key == base.key  # a train cell decodes nothing


def spec(**fields):
    return parse_spec({"modes": ["train"], "seq_lens": [64], "d_model": 64, "n_layers": 2, **fields}, "test")


@pytest.mark.parametrize(
    "text, count", [("300000", 300_000), ("300k", 300_000), ("3e5", 300_000), ("2M", 2_000_000)]
)
def test_budgets_are_read_as_counts(text, count):
    assert spec(param_budget=text).param_budget == count


def test_param_budget_sizes_every_family_within_five_percent():
    budget = 300_000
    names = ["transformer", "mamba", "mamba2", "deltanet", "gated-deltanet", "titans-lmm", "titans-mac"]
    cells = expand(spec(param_budget=budget), [ModelEntry(name=n) for n in names], "cpu")
    counts = {}
    for cell in cells:
        assert set(cell.model_args) == {"mlp_hidden"}  # the knob, recorded in the cell (and its key)
        counts[cell.model] = non_embedding_params(cell.model, cell.build_kwargs())
    assert all(abs(c - 300_000) <= 0.05 * 300_000 for c in counts.values()), counts
    as_built = {n: non_embedding_params(n, dict(vocab_size=512, d_model=64, n_layers=2)) for n in names}
    assert max(as_built.values()) / min(as_built.values()) > 1.5  # without a budget they differ widely


def test_an_impossible_budget_names_the_model():
    budget = "model 'titans-mac' cannot be sized to a param_budget \\(--param-budget\\) of 1,000"
    with pytest.raises(BenchError, match=budget):
        expand(spec(param_budget=1000), [ModelEntry(name="titans-mac")], "cpu")
    with pytest.raises(BenchError, match="param_budget"):
        parse_spec({"param_budget": "lots"}, "test")
