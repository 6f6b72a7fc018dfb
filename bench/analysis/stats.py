"""The Mann-Whitney U test, two-sided, on raw timing samples: exact for small samples without ties (the
usual case of 5-20 repeats), the normal approximation with tie correction otherwise."""

from __future__ import annotations

import math
from functools import cache


def _ranks(values: list[float]) -> tuple[list[float], list[int]]:
    """Mid-ranks (1-based) and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@cache
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """How many of the C(n1+n2, n1) orderings give each value of U (0 .. n1*n2)."""
    if n1 == 0 or n2 == 0:
        return (1,)
    # The largest value belongs to sample 1 (adding n2 to U) or to sample 2 (adding nothing).
    with_first = _u_counts(n1 - 1, n2)
    with_second = _u_counts(n1, n2 - 1)
    counts = [0] * (n1 * n2 + 1)
    for u, c in enumerate(with_first):
        counts[u + n2] += c
    for u, c in enumerate(with_second):
        counts[u] += c
    return tuple(counts)


def mann_whitney_u(x: list[float], y: list[float]) -> tuple[float, float]:
    """(U of x, two-sided p-value) for H0: x and y come from the same distribution."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann-Whitney U needs at least one sample on each side")
    ranks, ties = _ranks(list(x) + list(y))
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    if all(t == 1 for t in ties) and n1 * n2 <= 400:
        counts = _u_counts(n1, n2)
        total = math.comb(n1 + n2, n1)
        extreme = min(u1, n1 * n2 - u1)
        tail = sum(counts[: int(math.floor(extreme)) + 1]) / total
        return u1, min(1.0, 2 * tail)
    n = n1 + n2
    tie_term = sum(t**3 - t for t in ties) / (n * (n - 1))
    var = n1 * n2 / 12 * ((n + 1) - tie_term)
    if var <= 0:
        return u1, 1.0
    z = (abs(u1 - mean) - 0.5) / math.sqrt(var)  # continuity correction
    return u1, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))
