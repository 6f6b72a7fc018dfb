"""Scoring by distance, without training noise: a model that can recall exactly the evidence at most
``reach`` tokens back (tests/plugins/window_recall.py), run through a real accuracy cell."""

import pytest

from bench.analysis.sections.recall import table
from bench.analysis.selection import by_length
from bench.train.cell import run_accuracy_cell
from tests.helpers import accuracy_cell, stored

PLUGIN = "tests.plugins.window_recall:build"
MQAR = {"vocab_size": 64, "num_kv_pairs": 4, "random_non_queries": False}


def recall_cell(task, task_args, train_len, reach, factors=(1, 2, 4)):
    cell = accuracy_cell(PLUGIN, task, task_args, train_len, steps=3, eval_every=1, threshold=None)
    return cell.model_copy(
        update={"model_args": {"reach": reach}, "eval_lens": [train_len * f for f in factors]}
    )


def bins_by_bound(entry):
    return {b["max_distance"]: b for b in entry["by_distance"]}


@pytest.mark.parametrize(
    "task, task_args",
    [("mqar", MQAR), ("niah-pk", {"digits": 1, "num_keys": 8, "num_filler": 16, "pattern_len": 8})],
)
@pytest.mark.parametrize("placement", ["stretch", "train"])
def test_a_model_that_recalls_r_tokens_back_scores_all_within_r_and_nothing_beyond(
    task, task_args, placement
):
    reach = 8
    cell = recall_cell(task, {**task_args, "eval_placement": placement}, 32, reach)
    record = run_accuracy_cell(cell)
    assert record["status"] == "ok" and record["steps_run"] == 3 and record["n_params"] == 1
    for entry in record["accuracy_by_len"]:
        bins = bins_by_bound(entry)
        assert max(bins) >= entry["eval_len"] - 1  # the bins cover every possible distance
        assert sum(b["total"] for b in bins.values()) == entry["n_items"] > 0
        for bound, b in bins.items():
            if b["total"]:
                assert b["correct"] == (b["total"] if bound <= reach else 0), (entry["eval_len"], bins)
        assert entry["beyond_train"] == (None if entry["eval_len"] == 32 else 0.0)
        within = sum(b["correct"] for b in bins.values()) / entry["n_items"]
        if task == "niah-pk":  # exact match: one item per needle, an example's score is its item's
            assert entry["n_items"] == entry["n_examples"] and entry["accuracy"] == pytest.approx(within)


def test_beyond_train_reports_the_failure_that_the_overall_number_hides():
    """The model recalls everything within the training length L and nothing beyond. With Zoology's
    power-law placement at 2L most queries still sit within L of their pair: the overall accuracy looks
    like extrapolation while beyond_train shows there is none. The stretch placement asks beyond L."""
    L = 32
    zoology_cell = recall_cell("mqar", {**MQAR, "eval_placement": "train"}, L, reach=L)
    zoology = run_accuracy_cell(zoology_cell)
    stretch = run_accuracy_cell(recall_cell("mqar", MQAR, L, reach=L))
    at = {
        r: {e["eval_len"]: e for e in rec["accuracy_by_len"]} for r, rec in (("z", zoology), ("s", stretch))
    }
    assert at["z"][L]["accuracy"] == at["s"][L]["accuracy"] == 1.0  # the same examples at L
    assert at["z"][L]["beyond_train"] is None
    for length in (2 * L, 4 * L):
        assert at["z"][length]["accuracy"] >= 0.6  # "extrapolates"...
        assert at["z"][length]["beyond_train"] == 0.0  # ...but answers nothing beyond L
        assert at["z"][length]["beyond_train_items"] > 0
        assert at["s"][length]["beyond_train"] == 0.0 and at["s"][length]["accuracy"] <= 0.25
        assert at["s"][length]["beyond_train_items"] >= 0.75 * at["s"][length]["n_items"]
    # compare sees both numbers as flat columns: the overall one and the one past L.
    assert zoology["acc_T64"] >= 0.6 and zoology["acc_beyond_T64"] == 0.0 and "acc_beyond_T32" not in zoology

    # The report puts the two numbers side by side.
    row = stored(zoology_cell, zoology, label="window-recall")
    text = table(by_length([row]))
    header, _, line = text.splitlines()
    assert header.startswith(
        "| model | mqar T=32 | mqar T=64 | mqar T=64, d>32 | mqar T=128 | mqar T=128, d>32 |"
    )
    fields = [f.strip() for f in line.split("|")[2:7]]
    assert fields[0] == "100.0 [99–100]"  # Wilson over the 256 examples, all right: 256 / (256 + 1.96²)
    assert fields[2].startswith("0.0 [0–") and fields[4].startswith("0.0 [0–")
    assert float(fields[1].split()[0]) >= 60
