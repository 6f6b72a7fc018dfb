"""The groups of the state-tracking tasks are groups: closure, identity, inverses, associativity, order."""

import itertools
import math

import pytest
import torch

from bench.tasks.groups import group


@pytest.mark.parametrize(
    "name, order, abelian",
    [("Z2", 2, True), ("Z5", 5, True), ("S3", 6, False), ("A5", 60, False), ("S5", 120, False)],
)
def test_group_axioms_and_order(name, order, abelian):
    g = group(name)
    table = g.table
    n = g.order
    assert n == order and table.shape == (n, n)
    assert table.min() >= 0 and table.max() < n  # closure
    assert (table[0] == torch.arange(n)).all() and (table[:, 0] == torch.arange(n)).all()  # identity first
    assert all((table[a] == 0).sum() == 1 for a in range(n))  # every element has exactly one inverse
    assert all(sorted(row.tolist()) == list(range(n)) for row in table)  # each row a permutation
    for a, b, c in itertools.islice(itertools.product(range(n), repeat=3), 0, None, max(1, n**3 // 3000)):
        assert table[table[a, b], c] == table[a, table[b, c]]  # associativity (sampled for S5)
    assert (table == table.T).all().item() == abelian


def test_a5_is_the_even_half_of_s5():
    assert group("A5").order * 2 == group("S5").order == math.factorial(5)


def test_running_products_against_a_brute_force_product():
    g = group("S3")
    words = torch.randint(0, 6, (4, 9), generator=torch.Generator().manual_seed(0))
    for row, products in zip(words, g.running_products(words), strict=True):
        state = tuple(range(3))
        for t, element in enumerate(row.tolist()):
            p = g.elements[element]
            state = tuple(state[p[i]] for i in range(3))  # s_t = s_{t-1} g_t: apply g_t, then s_{t-1}
            assert g.elements[products[t]] == state


@pytest.mark.parametrize("name", ["X5", "Z0", "S9", "A1", "S"])
def test_unknown_groups_are_named(name):
    with pytest.raises(ValueError, match=f"group {name!r}"):
        group(name)
