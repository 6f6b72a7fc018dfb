"""The synthetic tasks: what they generate, that seeds reproduce, that held-out data stays held out, and
that scoring counts exactly what it should."""

import pytest
import torch

import bench
from bench.errors import BenchError
from bench.scoring import NO_DISTANCE, Examples
from bench.scoring.bins import bin_by_distance, doubling_bounds
from bench.scoring.distance import score_items, score_predictions
from bench.tasks import IGNORE, list_tasks, make_task
from bench.tasks.base import derive_seed, drop_seen, example_ids
from bench.tasks.niah import DASH, DIGIT0, IS, KEY0, NEEDLE, QUERY

MQAR = dict(vocab_size=64, num_kv_pairs=6)
SMALL = {
    "mqar": MQAR,
    "niah-pk": dict(digits=4),
    "niah-n": dict(digits=4),
    "niah-uuid": dict(groups=[4, 2]),
}


def test_registry_names_and_errors():
    assert {"mqar", "niah-pk", "niah-n", "niah-uuid"} <= set(list_tasks())
    with pytest.raises(BenchError, match="unknown task 'mqr'; known tasks: .*mqar"):
        make_task("mqr")
    with pytest.raises(BenchError, match="task 'mqar': unknown argument 'num_pairs'"):
        make_task("mqar", {"num_pairs": 4})
    with pytest.raises(BenchError, match="task 'niah-pk': argument 'digits'"):
        make_task("niah-pk", {"digits": 0})


@pytest.mark.parametrize(
    "args, seq_len, message",
    [
        (dict(vocab_size=16, num_kv_pairs=8), 64, "num_kv_pairs 8 needs at least 8 distinct keys"),
        (dict(vocab_size=64, num_kv_pairs=8), 30, "needs seq_len >= 32"),
        (dict(vocab_size=64, num_kv_pairs=4), 33, "seq_len 33 must be even"),
    ],
)
def test_mqar_rejects_impossible_combinations(args, seq_len, message):
    with pytest.raises(BenchError, match=message):
        make_task("mqar", args).generate(2, seq_len, 0)


def test_niah_rejects_too_short_sequences():
    with pytest.raises(BenchError, match="too short for a needle of 7 value tokens"):
        make_task("niah-n").generate(1, 20, 0)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("seq_len", [64, 256])
def test_shapes_vocab_and_seeds(name, seq_len):
    task = make_task(name, SMALL[name])
    inputs, targets, _ = task.generate(16, seq_len, seed=3)
    assert inputs.shape == targets.shape == (16, seq_len)
    assert inputs.dtype == targets.dtype == torch.long
    assert 0 <= inputs.min() and inputs.max() < task.vocab_size
    asked = targets != IGNORE
    assert asked.any(1).all() and targets[asked].max() < task.vocab_size
    again = task.generate(16, seq_len, seed=3)
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])
    other = task.generate(16, seq_len, seed=4)
    assert not torch.equal(inputs, other[0])


@pytest.mark.parametrize("seq_len", [32, 64, 512])
def test_mqar_labels_are_the_values_of_the_queried_keys(seq_len):
    task = make_task("mqar", MQAR)
    n, half = MQAR["num_kv_pairs"], MQAR["vocab_size"] // 2
    inputs, targets, _ = task.generate(64, seq_len, seed=0)
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(1 <= k < half for k in keys)
        assert len(set(values)) == n and all(half <= v < 2 * half for v in values)
        pairs = dict(zip(keys, values, strict=True))
        asked = [t for t, label in enumerate(y) if label != IGNORE]
        assert len(asked) == n and all(t >= 2 * n and (t - 2 * n) % 2 == 0 for t in asked)
        assert sorted(x[t] for t in asked) == sorted(keys)  # every key asked exactly once
        assert all(y[t] == pairs[x[t]] for t in asked)


def test_mqar_gaps_follow_the_power_law():
    """a = 0.01 puts most queries right after the pairs; a = 1 spreads them uniformly."""

    def mean_gap(power_a):
        task = make_task("mqar", dict(vocab_size=64, num_kv_pairs=2, power_a=power_a))
        _, targets, _ = task.generate(2000, 256, seed=1)
        return ((targets != IGNORE).nonzero()[:, 1].float() - 4).mean().item() / 2

    short, uniform = mean_gap(0.01), mean_gap(1.0)
    assert short < 40 and 55 < uniform < 72  # 126 slots: uniform mean is about 63


def test_mqar_fills_with_zeros_when_asked():
    task = make_task("mqar", {**MQAR, "random_non_queries": False})
    inputs, targets, _ = task.generate(8, 64, seed=0)
    n = MQAR["num_kv_pairs"]
    rest = inputs[:, 2 * n :].masked_fill(targets[:, 2 * n :] != IGNORE, 0)
    assert (rest == 0).all()


@pytest.mark.parametrize("name", ["niah-pk", "niah-n", "niah-uuid"])
def test_niah_needle_query_and_answer(name):
    task = make_task(name, SMALL[name])
    inputs, targets, _ = task.generate(64, 128, seed=0)
    k = task.value_len()
    depths = []
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        start = x.index(NEEDLE)
        key, value = x[start + 1], x[start + 3 : start + 3 + k]
        assert KEY0 <= key < task.filler0 and x[start + 2] == IS
        # The query asks for that key; the asked positions are exactly the value, token for token.
        q = len(x) - k
        assert x[q - 2 : q + 1] == [QUERY, key, IS] and x[q + 1 :] == value[:-1]
        assert y[q:] == value and all(label == IGNORE for label in y[:q])
        hay = x[:start] + x[start + k + 4 : q - 2]
        assert all(t >= task.filler0 for t in hay)
        depths.append(start)
        if name == "niah-uuid":
            assert value[4] == DASH and all(DIGIT0 <= t < DIGIT0 + 16 for t in value[:4] + value[5:])
        else:
            assert all(DIGIT0 <= t < DIGIT0 + 10 for t in value) and value[0] != DIGIT0
    assert len(set(depths)) > 20  # needles at many depths


def test_passkey_haystack_is_a_repeated_pattern_and_text_varies():
    pk = make_task("niah-pk", dict(digits=4, pattern_len=8))
    x, _, _ = pk.generate(4, 200, seed=0)
    haystacks = []
    for row in x.tolist():
        start = row.index(NEEDLE)
        without_needle = row[:start] + row[start + 4 + 4 :]  # marker, key, IS, 4 digits, END
        haystacks.append(without_needle[: -(3 + 4 - 1)])  # then the query and the answer so far
    hay = haystacks[0]
    assert all(h == hay for h in haystacks)  # the same noise in every example: only the needle moves
    assert all(hay[i] == hay[i + 8] for i in range(len(hay) - 8)) and len(set(hay[:8])) > 1
    text = make_task("niah-n", dict(digits=4))
    y, _, _ = text.generate(4, 200, seed=0)
    assert len(set(y[0, :40].tolist())) > 8 and not torch.equal(y[0, :40], y[1, :40])


def test_streams_are_disjoint_and_repeats_are_dropped():
    task = make_task("mqar", MQAR)
    test = task.generate(256, 64, derive_seed(0, "test", 64))
    seen = set(example_ids(test))
    for step in range(50):
        batch = drop_seen(task.generate(64, 64, derive_seed(0, "train", step)), seen)
        assert not seen & set(example_ids(batch))
    assert derive_seed(0, "train", 1) != derive_seed(0, "test", 1) != derive_seed(1, "train", 1)

    # A task this small repeats itself: the filter is what keeps the test set out of training.
    tiny = make_task("mqar", dict(vocab_size=6, num_kv_pairs=1, random_non_queries=False))
    held = tiny.generate(8, 8, seed=1)
    seen = set(example_ids(held))
    batch = tiny.generate(200, 8, seed=2)
    assert seen & set(example_ids(batch))
    kept = drop_seen(batch, seen)
    assert 0 < len(kept[0]) < 200 and not seen & set(example_ids(kept))


def test_scoring_a_hand_made_prediction():
    targets = torch.full((2, 6), IGNORE)
    targets[0, [1, 3, 4, 5]] = torch.tensor([7, 8, 9, 10])
    targets[1, [4, 5]] = torch.tensor([3, 4])
    predictions = torch.zeros(2, 6, dtype=torch.long)
    predictions[0, [1, 3, 4]] = torch.tensor([7, 8, 9])  # 3 of 4 queries right; position 5 wrong
    predictions[1, [4, 5]] = torch.tensor([3, 4])  # all right; unasked positions do not count
    mqar, niah = make_task("mqar", MQAR), make_task("niah-n")
    assert score_predictions(predictions, targets, mqar.exact).tolist() == [0.75, 1.0]
    # exact: the whole value or nothing
    assert score_predictions(predictions, targets, niah.exact).tolist() == [0.0, 1.0]
    assert score_predictions(predictions, targets, niah.exact).tolist() == [0.0, 1.0]


def test_forward_scoring_equals_greedy_generation_through_step():
    """The S-NIAH score reads the argmax of one forward pass; it must equal generating the value
    greedily token by token with ``prefill``/``step``. Make the model's own greedy continuation the
    answer: forward scoring must then give 1 for every example, and a changed digit 0."""
    task = make_task("niah-n", dict(digits=3))
    model = bench.build("transformer", vocab_size=task.vocab_size, d_model=32, n_layers=2).double().eval()
    inputs, targets, _ = task.generate(4, 48, seed=0)
    k = task.value_len()
    prompt = inputs[:, : -(k - 1)]
    logits, state = model.prefill(prompt)
    token = logits.argmax(-1)
    generated = [token]
    for _ in range(k - 1):
        logits, state = model.step(token, state)
        token = logits.argmax(-1)
        generated.append(token)
    answer = torch.stack(generated, 1)
    inputs = torch.cat([prompt, answer[:, :-1]], 1)
    targets[:, -k:] = answer
    with torch.no_grad():
        predictions = model(inputs).argmax(-1)
    assert score_predictions(predictions, targets, task.exact).tolist() == [1.0] * 4
    targets[0, -1] = (targets[0, -1] + 1) % task.vocab_size
    assert score_predictions(predictions, targets, task.exact).tolist() == [0.0, 1.0, 1.0, 1.0]


# Scoring by distance: every asked item knows how far back its evidence lies.


def brute_force_mqar_distances(inputs, targets, pairs):
    """For every asked position: the distance back to its pair's value token, found by searching."""
    out = torch.full_like(targets, NO_DISTANCE)
    for i, (x, y) in enumerate(zip(inputs.tolist(), targets.tolist(), strict=True)):
        for t, label in enumerate(y):
            if label != IGNORE:
                p = x[: 2 * pairs : 2].index(x[t]) * 2  # where the key sits among the pairs
                assert x[p + 1] == label and p + 1 < t
                out[i, t] = t - (p + 1)
    return out


@pytest.mark.parametrize("placement", ["stretch", "train"])
@pytest.mark.parametrize("seq_len", [32, 64, 256])
def test_mqar_distances_are_exact(placement, seq_len):
    task = make_task("mqar", {**MQAR, "eval_placement": placement})
    examples = task.generate(64, seq_len, seed=5, train_len=32)
    expected = brute_force_mqar_distances(examples.inputs, examples.targets, MQAR["num_kv_pairs"])
    assert torch.equal(examples.distances, expected)
    assert ((examples.distances == NO_DISTANCE) == (examples.targets == IGNORE)).all()


@pytest.mark.parametrize("name", ["niah-pk", "niah-n", "niah-uuid"])
@pytest.mark.parametrize("seq_len", [64, 256])
def test_niah_distances_are_exact(name, seq_len):
    task = make_task(name, SMALL[name])
    examples = task.generate(32, seq_len, seed=5, train_len=64)
    k = task.value_len()
    for x, y, d in zip(*(e.tolist() for e in examples), strict=True):
        start = x.index(NEEDLE)
        asked = [t for t, label in enumerate(y) if label != IGNORE]
        # value token i is asked at asked[i] and sits in the needle at start + 3 + i
        assert all(x[start + 3 + i] == y[t] for i, t in enumerate(asked)) and len(asked) == k
        assert [d[t] for t in asked] == [t - (start + 3 + i) for i, t in enumerate(asked)]
        assert len(set(d[t] for t in asked)) == 1  # one distance per needle
        assert all(d[t] == NO_DISTANCE for t in range(seq_len) if t not in asked)


def test_mqar_stretch_puts_most_queries_beyond_the_training_length():
    """Zoology's power-law gaps at 2L leave most queries within L of their pair (the old "extrapolation");
    the stretch placement asks every key beyond position L, so that most distances exceed L."""
    args = dict(vocab_size=16, num_kv_pairs=4, random_non_queries=False)
    stretch, zoology = make_task("mqar", args), make_task("mqar", {**args, "eval_placement": "train"})
    for factor, at_least in [(2, 0.75), (4, 0.9), (8, 0.95)]:
        T = 32 * factor
        examples = stretch.generate(500, T, seed=1, train_len=32)
        asked = examples.targets != IGNORE
        assert (asked.nonzero()[:, 1] >= 32).all()  # every query where training never asked one
        assert (examples.distances[asked] > 32).float().mean() >= at_least
        old = zoology.generate(500, T, seed=1, train_len=32)
        assert (old.distances[old.targets != IGNORE] > 32).float().mean() < 0.5
    # At the training length (and without a training length) nothing changes: the training distribution.
    same = zip(stretch.generate(8, 32, 3, 32), zoology.generate(8, 32, 3), strict=True)
    assert all(torch.equal(a, b) for a, b in same)
    gaps = stretch.generate(2000, 64, seed=2, train_len=32).targets != IGNORE
    per_slot = gaps[:, 32::2].float().mean(0)  # uniform over the slots beyond L: each about 4/16
    assert per_slot.min() > 0.2 and per_slot.max() < 0.3


def test_niah_stretch_spaces_needles_evenly_over_the_whole_context():
    task = make_task("niah-n", dict(digits=4))
    examples = task.generate(11, 256, seed=0, train_len=64)
    starts = [row.index(NEEDLE) for row in examples.inputs.tolist()]
    hay_len = 256 + 1 - 2 * 4 - 7
    assert starts == [round(i * hay_len / 10) for i in range(11)]  # 0%, 10%, ..., 100% depth
    random_depths = make_task("niah-n", dict(digits=4, eval_placement="train"))
    assert torch.equal(random_depths.generate(8, 256, 3, 64).inputs, random_depths.generate(8, 256, 3).inputs)


def test_items_and_distance_bins():
    targets = torch.full((2, 8), IGNORE)
    targets[0, [3, 5, 7]] = torch.tensor([9, 9, 9])
    targets[1, [6, 7]] = torch.tensor([4, 5])
    distances = torch.full((2, 8), NO_DISTANCE)
    distances[0, [3, 5, 7]] = torch.tensor([1, 3, 6])
    distances[1, [6, 7]] = torch.tensor([5, 5])
    examples = Examples(torch.zeros(2, 8, dtype=torch.long), targets, distances)
    predictions = torch.zeros(2, 8, dtype=torch.long)
    predictions[0, [3, 7]] = 9  # the queries at distance 1 and 6 right, at 3 wrong
    predictions[1, [6, 7]] = torch.tensor([4, 5])
    items = score_items(predictions, examples, make_task("mqar", MQAR).exact)
    assert items.distance.tolist() == [1, 3, 6, 5, 5] and items.correct.tolist() == [1, 0, 1, 1, 1]
    assert items.example.tolist() == [0, 0, 0, 1, 1]
    needles = score_items(predictions, examples, make_task("niah-n").exact)  # exact: one item per example
    assert needles.distance.tolist() == [6, 5] and needles.correct.tolist() == [False, True]
    assert (
        doubling_bounds(8) == [1, 2, 4, 8]
        and doubling_bounds(9) == [1, 2, 4, 8]
        and doubling_bounds(1) == [1]
    )
    assert doubling_bounds(10) == [1, 2, 4, 8, 16]
    bins = bin_by_distance(items.distance, items.correct, 8)
    assert bins == [
        {"max_distance": 1, "correct": 1, "total": 1},
        {"max_distance": 2, "correct": 0, "total": 0},
        {"max_distance": 4, "correct": 0, "total": 1},
        {"max_distance": 8, "correct": 3, "total": 3},
    ]
