"""A timing mode can have lengths of its own (``mode_seq_lens``), so that a sweep measures prefill where
the recurrent models' linear cost shows without training at that length too; ``--seq-lens`` typed on the
command line still sets every mode's."""

import pytest

from bench.errors import BenchError
from bench.spec.cells import expand
from bench.spec.config import ModelEntry, parse_spec

BASE = {
    "modes": ["train", "prefill", "decode"],
    "models": ["transformer"],
    "seq_lens": [64, 128],
    "device": "cpu",
}


def lengths(spec):
    found = {}
    for cell in expand(spec, [ModelEntry(name="transformer")], "cpu"):
        found.setdefault(cell.mode, []).append(cell.seq_len)
    return found


def test_a_mode_measures_its_own_lengths_and_the_others_the_common_ones():
    spec = parse_spec({**BASE, "mode_seq_lens": {"prefill": [4096, 64, 1024], "decode": [128]}}, "test")
    assert lengths(spec) == {"train": [64, 128], "prefill": [64, 1024, 4096], "decode": [128]}


def test_the_seq_lens_flag_sets_every_modes_lengths():
    data = {**BASE, "mode_seq_lens": {"prefill": [4096]}, "seq_lens": [32]}
    spec = parse_spec(data, "test", given={"seq_lens": "--seq-lens"})
    assert lengths(spec) == {"train": [32], "prefill": [32], "decode": [32]}


@pytest.mark.parametrize("bad", [{"prefill": []}, {"prefill": [64, 64]}, {"accuracy": [64]}, {"decode": [0]}])
def test_bad_mode_lengths_are_errors(bad):
    with pytest.raises(BenchError, match="mode_seq_lens"):
        parse_spec({**BASE, "mode_seq_lens": bad}, "test")
