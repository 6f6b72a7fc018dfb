"""State tracking: word problems of finite groups, the tests of Theorem 4.1 of the Titans paper.

    inputs   g_1  g_2  g_3  ...  g_T          (group elements, drawn uniformly and independently)
    targets  s_1  s_2  s_3  ...  s_T          s_t = g_1 g_2 ... g_t, the running product (the state)

A model reads the elements one by one and must output, at every position, the product of the prefix read
so far. Three tasks, each over one group (bench/tasks/groups.py builds its elements and table in code):

- ``parity``: Z_2, bits in, the running parity out;
- ``modular``: Z_m (``m``, default 5), the running sum mod m;
- ``permutation``: a permutation group (``group``: "S3", "A5", "S5", ...), the running composition.

Tokens are the group's own element indices (0 is the identity), so the vocabulary is the group's order and
inputs and targets share it. Every position but the first is asked: s_1 = g_1 is a copy of the input, which
every model learns at once (it held A5's scores at a floor of 1/16 for every model at L = 16), so it is
not scored. Since each g_t is uniform and independent, each s_t is uniform over the group and independent
of s_1 .. s_{t-1}: a model that ignores the input is right with probability 1/order at every scored
position, independently across positions (the chance level).

Distance (see bench/tasks/base.py): there is no single piece of evidence to recall, so the distance of
position t (0-based) is t + 1, the length of the prefix whose product is asked. Scoring by distance is then
scoring by position: the doubling distance bins are position buckets, and ``beyond_train`` is the accuracy
at the positions past the training length. Its scorer, ``position`` (bench/scoring/position.py), records
besides the longest prefix at which the model is still at least 90% correct.

Solvable groups (Z_m, S_3) have word problems in TC^0; A_5 and S_5 are the smallest non-solvable groups,
whose word problems are NC^1-complete (Barrington 1989): the case a model limited to TC^0 cannot solve at
every length unless TC^0 = NC^1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, field_validator

from bench.registry import register_task
from bench.tasks.base import IGNORE, NO_DISTANCE, Examples, Task, TaskConfig
from bench.tasks.groups import Group, group


class ParityConfig(TaskConfig):
    pass


class ModularConfig(TaskConfig):
    m: int = Field(default=5, ge=2, le=1024)


class PermutationConfig(TaskConfig):
    group: str = "S5"

    @field_validator("group")
    @classmethod
    def _a_permutation_group(cls, value: str) -> str:
        if value[:1] not in ("S", "A"):
            raise ValueError(f"{value!r} is not a permutation group: give S<n> or A<n>, e.g. S3, A5, S5")
        group(value)  # a ValueError naming the problem
        return value


class WordProblem(Task):
    """A group's word problem: uniform elements in, the running product at every position out."""

    scorer: ClassVar[str] = "position"

    @property
    def group(self) -> Group:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.group.order

    def check_len(self, seq_len: int) -> None:
        if seq_len < 1:
            raise self.fail(f"seq_len must be at least 1, got {seq_len}")

    def generate(self, n: int, seq_len: int, seed: int, train_len: int | None = None) -> Examples:
        """The same distribution at every length: ``train_len`` changes nothing (no evidence to place)."""
        self.check_len(seq_len)
        g = torch.Generator().manual_seed(seed)
        inputs = torch.randint(0, self.group.order, (n, seq_len), generator=g)
        targets = self.group.running_products(inputs)
        distances = torch.arange(1, seq_len + 1).expand(n, seq_len).clone()
        targets[:, 0], distances[:, 0] = IGNORE, NO_DISTANCE  # s_1 = g_1: a copy, not state tracking
        return Examples(inputs, targets, distances)

    def chance(self) -> str:
        order = self.group.order
        return f"chance {100 / order:.1f}% (1/{order}) at every scored position"


@register_task("parity")
class Parity(WordProblem):
    Config = ParityConfig

    @property
    def group(self) -> Group:
        return group("Z2")


@register_task("modular")
class Modular(WordProblem):
    Config = ModularConfig
    config: ModularConfig

    @property
    def group(self) -> Group:
        return group(f"Z{self.config.m}")


@register_task("permutation")
class Permutation(WordProblem):
    Config = PermutationConfig
    config: PermutationConfig

    @property
    def group(self) -> Group:
        return group(self.config.group)
