"""MQAR, multi-query associative recall, as the Zoology paper defines it (Arora et al. 2023).

    k1 v1 k2 v2 ... kN vN | . . k3 . . . k1 . k4 . . . k2 . . .
                                   ^v3        ^v1 ^v4      ^v2     (asked at each key's query position)

Keys come from [1, V/2) and values from [V/2, V), drawn without replacement within an example. After the
N pairs the rest of the sequence is (L - 2N) // 2 slots of two tokens; every key is asked once, at a slot
drawn without replacement with p(i) ∝ a·i^(a-1) (i = 1, 2, ..., a = ``power_a``; a < 1 favours short gaps),
and the model must answer its value at that position. The other positions hold random tokens
(``random_non_queries``, Zoology's default) or 0.

Zoology also asserts V > L. That is not needed for an example to be well defined: the keys fit when
N < V/2. We require only that, so the model trained at length L is evaluated at 2L, 4L, ... with the same
vocabulary and the same N.

Distance of a query: the position at which it is asked minus the position of its pair's value token,
d = q - (2j + 1) for key j asked at q (so d >= 1; the value is d tokens back, its key d + 1).

Placement beyond the training length (``eval_placement``): the power-law gaps put most queries right after
the pairs, so evaluating at 2L, 4L, 8L with them mostly re-scores distances seen in training (61-83% of
queries sit before position L, which a causal model answers without the added tokens). With ``"stretch"``
(the default), examples longer than the training length L ask every key at a slot drawn uniformly, without
replacement, from the slots at positions >= L: every query is asked where training never asked one, at
distances from L - 2N + 1 to T - 2 (at T = 2L with L >= 4N at least 3/4 of them beyond L). At the training
length, and at every length with ``"train"``, the placement is Zoology's.
"""

from __future__ import annotations

import torch
from pydantic import Field

from bench.registry import register_task
from bench.tasks.base import IGNORE, NO_DISTANCE, Examples, Placement, Task, TaskConfig


class MQARConfig(TaskConfig):
    vocab_size: int = Field(default=8192, ge=4)
    num_kv_pairs: int = Field(default=8, ge=1)
    power_a: float = Field(default=0.01, gt=0)
    random_non_queries: bool = True
    eval_placement: Placement = "stretch"  # beyond the training length; "train": Zoology's gaps throughout


@register_task("mqar")
class MQAR(Task):
    Config = MQARConfig
    config: MQARConfig

    def __init__(self, config: MQARConfig):
        super().__init__(config)
        n, v = config.num_kv_pairs, config.vocab_size
        if n > v // 2 - 1:
            raise self.fail(
                f"num_kv_pairs {n} needs at least {n} distinct keys in [1, vocab_size/2), "
                f"but vocab_size {v} has {v // 2 - 1}; raise vocab_size to at least {2 * n + 2}"
            )

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def chance(self) -> str:
        values, pairs = self.config.vocab_size - self.config.vocab_size // 2, self.config.num_kv_pairs
        return (
            f"chance {100 / values:.2g}% guessing a value ({values} of them), {100 / pairs:.3g}% guessing "
            f"one of the {pairs} values in the context"
        )

    def check_len(self, seq_len: int) -> None:
        n = self.config.num_kv_pairs
        if seq_len % 2:
            raise self.fail(f"seq_len {seq_len} must be even (queries sit in slots of two tokens)")
        if 4 * n > seq_len:
            raise self.fail(
                f"num_kv_pairs {n} needs seq_len >= {4 * n} (the pairs, then a query slot for each key); "
                f"got {seq_len}"
            )

    def generate(self, n: int, seq_len: int, seed: int, train_len: int | None = None) -> Examples:
        self.check_len(seq_len)
        g = torch.Generator().manual_seed(seed)
        pairs, vocab = self.config.num_kv_pairs, self.config.vocab_size
        half = vocab // 2

        # Without replacement within a row: the first `pairs` of a random permutation of the choices.
        keys = torch.rand(n, half - 1, generator=g).argsort(1)[:, :pairs] + 1
        values = torch.rand(n, vocab - half, generator=g).argsort(1)[:, :pairs] + half

        slots = (seq_len - 2 * pairs) // 2
        if self.stretches(seq_len, train_len):
            # The slots at positions >= train_len (the last `pairs` slots if fewer lie there).
            first = min(max(0, (train_len - 2 * pairs + 1) // 2), slots - pairs)
            gaps = first + torch.rand(n, slots - first, generator=g).argsort(1)[:, :pairs]
        else:
            a = self.config.power_a
            i = torch.arange(1, slots + 1, dtype=torch.float64)
            p = a * i ** (a - 1)
            gaps = torch.multinomial(p.expand(n, slots), pairs, replacement=False, generator=g)
        query_pos = 2 * pairs + 2 * gaps  # [n, pairs]: where key j is asked

        if self.config.random_non_queries:
            inputs = torch.randint(0, vocab, (n, seq_len), generator=g)
        else:
            inputs = torch.zeros(n, seq_len, dtype=torch.long)
        inputs[:, 0 : 2 * pairs : 2] = keys
        inputs[:, 1 : 2 * pairs : 2] = values
        inputs.scatter_(1, query_pos, keys)
        targets = torch.full((n, seq_len), IGNORE, dtype=torch.long)
        targets.scatter_(1, query_pos, values)
        distances = torch.full((n, seq_len), NO_DISTANCE, dtype=torch.long)
        distances.scatter_(1, query_pos, query_pos - (2 * torch.arange(pairs) + 1))
        return Examples(inputs, targets, distances)
