"""The state-tracking tasks (bench/tasks/state.py): exact running products, every position scored, the
longest-prefix figure, and scores known in closed form through a real accuracy cell."""

import math

import pytest
import torch

from bench.errors import BenchError
from bench.scoring import NO_DISTANCE
from bench.scoring.bins import bin_by_distance, longest_prefix
from bench.scoring.distance import score_items
from bench.tasks import IGNORE, make_task
from bench.tasks.groups import group
from bench.train.cell import run_accuracy_cell
from tests.helpers import accuracy_cell, stored

TASKS = [
    ("parity", {}, "Z2"),
    ("modular", {}, "Z5"),
    ("modular", {"m": 7}, "Z7"),
    ("permutation", {"group": "S3"}, "S3"),
    ("permutation", {"group": "A5"}, "A5"),
    ("permutation", {}, "S5"),
]


def brute_force(name: str, words: list[int]) -> list[int]:
    """Running products by hand, from the group's definition rather than its table: sums mod m for Z_m,
    composition of permutation tuples (s_t = s_{t-1} g_t: apply g_t, then s_{t-1}) for S_n and A_n."""
    g = group(name)
    out = []
    if name.startswith("Z"):
        m, total = int(name[1:]), 0
        for w in words:
            total = (total + g.elements[w]) % m
            out.append(g.elements.index(total))
        return out
    n = int(name[1:])
    state = tuple(range(n))
    for w in words:
        p = g.elements[w]
        state = tuple(state[p[i]] for i in range(n))
        out.append(g.elements.index(state))
    return out


@pytest.mark.parametrize("name, args, group_name", TASKS)
def test_targets_are_the_running_products(name, args, group_name):
    task = make_task(name, args)
    order = group(group_name).order
    assert task.vocab_size == order
    inputs, targets, distances = task.generate(32, 40, seed=1)
    assert inputs.shape == targets.shape == distances.shape == (32, 40)
    assert 0 <= inputs.min() and inputs.max() < order and targets.max() < order
    assert len(inputs.unique()) == order  # every element drawn (seeded: 1,280 draws cover even S5's 120)
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        assert y[1:] == brute_force(group_name, x)[1:]
    # Every position but the first asked (its answer is its input: a copy, not state tracking), its
    # distance the length of the prefix composed.
    assert (targets[:, 0] == IGNORE).all() and (targets[:, 1:] != IGNORE).all()
    assert (distances[:, 0] == NO_DISTANCE).all() and (distances[:, 1:] == torch.arange(2, 41)).all()
    again = task.generate(32, 40, seed=1)
    assert torch.equal(again.inputs, inputs) and not torch.equal(task.generate(32, 40, seed=2).inputs, inputs)
    # No placement: the same distribution beyond the training length.
    assert torch.equal(task.generate(32, 40, seed=1, train_len=10).inputs, inputs)


def test_parity_is_the_running_xor_of_bits():
    inputs, targets, _ = make_task("parity").generate(16, 33, seed=0)
    assert set(inputs.unique().tolist()) == {0, 1}
    assert torch.equal(targets[:, 1:], (inputs.cumsum(1) % 2)[:, 1:])


def test_states_are_uniform_and_independent_of_the_past():
    """What the chance level rests on: s_t is uniform at every t, and s_t given s_{t-1} is uniform too."""
    _, targets, _ = make_task("modular").generate(4000, 6, seed=0)
    for t in (1, 5):
        counts = torch.bincount(targets[:, t], minlength=5).double()
        assert ((counts / 4000 - 0.2).abs() < 0.03).all()
    same = (targets[:, 2:] == targets[:, 1:-1]).double().mean()
    assert abs(same - 0.2) < 0.02


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("modular", {"m": 1}, "argument 'm'"),
        ("permutation", {"group": "Z5"}, "not a permutation group"),
        ("permutation", {"group": "S9"}, "more than 700"),
        ("permutation", {"group": "Q8"}, "not a permutation group"),
        ("parity", {"m": 2}, "unknown argument 'm'"),
    ],
)
def test_bad_configs_are_named(name, args, message):
    with pytest.raises(BenchError, match=message):
        make_task(name, args)


def test_every_position_is_an_item_in_its_position_bucket():
    task = make_task("modular")
    examples = task.generate(8, 16, seed=0)
    predictions = examples.targets.clone()
    predictions[:, 9:] = (predictions[:, 9:] + 1) % 5  # wrong from position 9 (prefix length 10) on
    items = score_items(predictions, examples, task.exact)
    assert len(items.distance) == 8 * 15  # the first position is not asked
    bins = bin_by_distance(items.distance, items.correct, 16)
    assert [(b["max_distance"], b["correct"], b["total"]) for b in bins] == [
        (1, 0, 0),
        (2, 8, 8),
        (4, 16, 16),
        (8, 32, 32),
        (16, 8, 64),  # prefix lengths 9..16: only 9 right
    ]


def test_longest_prefix():
    asked = torch.ones(10, 6, dtype=torch.bool)
    correct = torch.ones(10, 6, dtype=torch.bool)
    assert longest_prefix(correct, asked) == 6  # never falls short: the whole evaluated length
    correct[0, 3] = False  # 90% at position 3: still at least 90%
    assert longest_prefix(correct, asked) == 6
    correct[1, 3] = False  # 80% at position 3: prefixes up to length 3
    assert longest_prefix(correct, asked) == 3
    correct[:, 1] = False
    assert longest_prefix(correct, asked) == 1
    correct[:5, 0] = False
    assert longest_prefix(correct, asked) == 0
    # A later recovery does not extend the prefix; positions nobody was asked are skipped.
    correct = torch.ones(10, 6, dtype=torch.bool)
    correct[:, 2] = False
    asked[:, 2] = False
    assert longest_prefix(correct, asked) == 6
    assert longest_prefix(correct, asked, level=1.0) == 6


def oracle_cell(task: str, task_args: dict, group_name: str, answer: str, **train):
    cell = accuracy_cell("tests.plugins.state_oracle:build", task, task_args, 16, **train)
    return cell.model_copy(
        update={"model_args": {"group": group_name, "answer": answer}, "eval_lens": [16, 32, 64, 128]}
    )


SETTINGS = dict(steps=3, warmup_steps=1, eval_every=2, val_samples=16, eval_samples=64, threshold=None)


@pytest.mark.parametrize("name, args, group_name", [TASKS[0], TASKS[1], TASKS[4]])
def test_the_true_state_scores_100_percent_at_every_length(name, args, group_name):
    record = run_accuracy_cell(oracle_cell(name, args, group_name, "state", **SETTINGS))
    assert record["status"] == "ok" and record["steps_run"] == 3
    assert record["train_len"] == 16 and [e["eval_len"] for e in record["accuracy_by_len"]] == [
        16,
        32,
        64,
        128,
    ]
    for entry in record["accuracy_by_len"]:
        length = entry["eval_len"]
        assert entry["accuracy"] == 1.0 and entry["n_items"] == 64 * (length - 1)
        assert entry["longest_prefix_90"] == length
        assert entry["beyond_train"] == (None if length == 16 else 1.0)
        assert entry["beyond_train_items"] == 64 * (length - 16)
        assert sum(b["total"] for b in entry["by_distance"]) == 64 * (length - 1)
        assert all(b["correct"] == b["total"] for b in entry["by_distance"])


@pytest.mark.parametrize("name, args, group_name", [TASKS[0], TASKS[1], TASKS[4]])
def test_the_identity_scores_at_chance(name, args, group_name):
    """The identity is right where the running product is the identity: for uniform inputs each position
    independently with p = 1 / order, so over N = 64 x T items the accuracy is Binomial(N, p) / N. The
    bound is 5 standard deviations, 5 sqrt(p (1 - p) / N) (parity: 0.078 at T = 16, 0.028 at T = 128): a
    chance model lands outside it with probability 6e-7 per figure (the data are seeded, so the test is
    deterministic), and a model 5 points off chance at T = 128 lands inside with probability < 1e-4."""
    record = run_accuracy_cell(oracle_cell(name, args, group_name, "identity", **SETTINGS))
    p = 1 / group(group_name).order
    for entry in record["accuracy_by_len"]:
        n = entry["n_items"]
        assert n == 64 * (entry["eval_len"] - 1)
        assert abs(entry["accuracy"] - p) < 5 * math.sqrt(p * (1 - p) / n), entry
        assert entry["longest_prefix_90"] == 1  # the unasked first position, then chance
        if entry["beyond_train"] is not None:
            m = entry["beyond_train_items"]
            assert abs(entry["beyond_train"] - p) < 5 * math.sqrt(p * (1 - p) / m)


def test_the_state_report_section(tmp_path):
    """Real cells of the oracle (100%) and the identity (chance), parity and A5, at two learning rates:
    the section's tables, longest-prefix figures, the theory and measured sentences, and its plots."""
    from bench.analysis.report import accuracy_sections

    rows = []
    for name, args, group_name in (TASKS[0], TASKS[4]):
        for answer in ("state", "identity"):
            for lr in (1e-3, 3e-3):
                cell = oracle_cell(name, args, group_name, answer, **{**SETTINGS, "lr": lr})
                cell = cell.model_copy(update={"label": answer, "task_label": name})
                rows.append(stored(cell, run_accuracy_cell(cell)))
    lines = accuracy_sections(rows, tmp_path)
    text = "\n".join(lines)
    assert "## State tracking: group word problems, trained short, evaluated long" in text
    assert "## Accuracy: synthetic recall" not in text  # no recall task in this run
    assert "**parity** (group Z2, order 2: chance 50.0%; trained at L = 16)" in text
    assert "**permutation** (group A5, order 60: chance 1.7%; trained at L = 16)" in text
    header = "| model | T=16 | T=32 | T=64 | T=128 | positions > 16 at T=128 | args | context | lr |"
    assert text.count(header) == 2
    state_rows = [line for line in lines if line.startswith("| state |") and "90%" in line]
    assert len(state_rows) == 2 and all(
        "100.0 [94–100], 90%: ≥128 | 100.0 [94–100] |" in r for r in state_rows
    )
    identity = [line for line in lines if line.startswith("| identity |") and "90%" in line]
    assert all(", 90%: 1 |" in r for r in identity)
    assert (
        "| answer=state, group=Z2 | – | 1e-3 |" in text and "| answer=identity, group=A5 | – | 1e-3 |" in text
    )
    # Each task: the prediction (A5: NC1-complete) and what was measured, from the numbers.
    assert "A5's word problem is NC¹-complete" in text and "parity is in TC⁰" in text
    assert "1 of 2 models is at least 90% correct on average (state 100.0%)" in text
    assert "the 90% prefix goes past L in every seed for state (≥128)" in text
    for png in ("state_accuracy_by_position.png", "state_training_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # Nobody learns the task: the measured sentence says the run cannot tell the models apart.
    chance_only = [r for r in rows if r.label == "identity"]
    text = "\n".join(accuracy_sections(chance_only, tmp_path))
    assert "no model is 90% correct on average (best identity 50." in text
    assert "so this run cannot tell the models apart on it: none learned the task even at the" in text
    assert "at T = 128 no model's 90% prefix goes past L in every seed" in text
