"""Finite groups for the state-tracking tasks, generated in code: their elements and multiplication table.

A word problem reads a sequence of group elements g_1, g_2, ... and asks, at every position t, for the
running product s_t = g_1 g_2 ... g_t (s_0 the identity, s_t = s_{t-1} g_t). For the cyclic group Z_m the
product is the sum mod m (parity is Z_2); for permutation groups it is composition, with permutations as
tuples p (p[i] is where i goes) and (p q)[i] = p[q[i]] (apply q, then p).

Solvable groups (Z_m, S_3) are within reach of some linear recurrences; A_5 and S_5 are the smallest
non-solvable groups, the hard case named in the work on the limits of state-space models and of
constant-depth circuits (TC^0).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Group:
    name: str
    elements: tuple  # element i of the table is elements[i]; elements[0] is the identity
    table: torch.Tensor  # [n, n] long: table[a, b] = index of elements[a] * elements[b]

    @property
    def order(self) -> int:
        return len(self.elements)

    def running_products(self, words: torch.Tensor) -> torch.Tensor:
        """words [n, T] of element indices -> [n, T]: the product of each prefix, left to right."""
        out = torch.empty_like(words)
        state = torch.zeros(words.shape[0], dtype=torch.long)  # the identity
        for t in range(words.shape[1]):
            state = self.table[state, words[:, t]]
            out[:, t] = state
        return out


def _from_elements(name: str, elements: list, multiply) -> Group:
    index = {e: i for i, e in enumerate(elements)}
    table = torch.tensor([[index[multiply(a, b)] for b in elements] for a in elements], dtype=torch.long)
    return Group(name, tuple(elements), table)


def cyclic(m: int) -> Group:
    """Z_m: the integers mod m under addition (Z_2 is parity)."""
    return _from_elements(f"Z{m}", list(range(m)), lambda a, b: (a + b) % m)


def _compose(p: tuple, q: tuple) -> tuple:
    return tuple(p[i] for i in q)


def _is_even(p: tuple) -> bool:
    inversions = sum(1 for i, j in itertools.combinations(range(len(p)), 2) if p[i] > p[j])
    return inversions % 2 == 0


def symmetric(n: int) -> Group:
    """S_n: every permutation of n points, the identity first."""
    return _from_elements(f"S{n}", list(itertools.permutations(range(n))), _compose)


def alternating(n: int) -> Group:
    """A_n: the even permutations of n points."""
    return _from_elements(f"A{n}", [p for p in itertools.permutations(range(n)) if _is_even(p)], _compose)


@functools.cache
def group(name: str) -> Group:
    """A group by name: "Z5", "S3", "A5", "S5", ..."""
    kind, size = name[:1], name[1:]
    if not size.isdigit() or int(size) < 1:
        raise ValueError(f"unknown group {name!r}: give Z<m>, S<n> or A<n>, e.g. Z5, S3, A5")
    n = int(size)
    if kind == "Z":
        return cyclic(n)
    if kind in "SA" and n > 6:
        raise ValueError(f"group {name!r} has {'more than 700' if kind == 'S' else 'too many'} elements")
    if kind == "S":
        return symmetric(n)
    if kind == "A" and n >= 2:
        return alternating(n)
    raise ValueError(f"unknown group {name!r}: give Z<m>, S<n> or A<n>, e.g. Z5, S3, A5")
