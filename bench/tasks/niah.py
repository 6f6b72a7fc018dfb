"""S-NIAH, a single needle in a haystack, after RULER (Hsieh et al. 2024), at the token level.

    h h h h [NEEDLE key IS v1 .. vk END] h h h h ... h [QUERY key IS] v1 .. vk
                                                                  ^ asked: v1 .. vk

RULER's needle is "One of the special magic numbers for {key} is: {value}." and its question asks for the
value of {key}; here each phrase is one token. The needle sits at a random depth; the haystack fills the
rest of the sequence. Three variants:

- ``niah-pk``   (RULER niah_single_1, passkey): a fixed short noise pattern repeated, a number as value;
- ``niah-n``    (niah_single_2): varied filler text, a number as value;
- ``niah-uuid`` (niah_single_3): varied filler text, a uuid-like hex value (groups joined by "-").

The "text" is a fixed essay sampled from a random Markov chain over filler tokens (seeded once, the same
in every run), so the haystack varies like prose while never containing a key, a digit or a marker.

Distance of a needle: the position at which a value token is asked minus the position of the same value
token in the needle; it is the same for every token of the value, and the needle is scored as one item at it.

Placement (``eval_placement``): in training and at the training length the needle sits at a uniformly random
depth. With ``"stretch"`` (the default), examples longer than the training length put their needles at
evenly spaced depths over the whole context, from the first token to the last, as RULER does, so that the
distances cover the whole length evenly (at 2L, about half beyond L); ``"train"`` keeps random depths.

Scoring is exact match of the whole value. Under teacher forcing, the argmax at every value position equals
its target exactly when greedy generation would produce the whole value (each generated token is then the
one fed next), so scoring the forward pass is scoring greedy generation, at the cost of one forward.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from pydantic import Field, PositiveInt

from bench.registry import register_task
from bench.tasks.base import IGNORE, NO_DISTANCE, Examples, Placement, Task, TaskConfig

# Marker tokens, then the 16 hex digits (0-9 are the decimal digits), then keys, then filler.
NEEDLE, IS, END, QUERY, DASH = 1, 2, 3, 4, 5
DIGIT0 = 6
N_DIGITS = 16
KEY0 = DIGIT0 + N_DIGITS

TEXT_SEED = 20240101  # fixes the "language" the varied haystacks are drawn from
PATTERN_SEED = 7  # fixes the passkey noise pattern
ESSAY_SHAPE = (64, 4096)  # paragraphs x tokens of the essay, generated once per process


@functools.cache
def essay(num_filler: int) -> torch.Tensor:
    """A fixed 256K-token "essay" over filler ids [0, num_filler): paragraphs sampled from a fixed
    random Markov chain whose peaked transitions make some words often follow others, as in text.
    Haystacks are windows of it, as RULER's are excerpts of Paul Graham's essays; drawing them from
    one stored text keeps a batch cheap to make at any length."""
    rng = np.random.default_rng(TEXT_SEED)  # numpy: a token-by-token loop is ~10x cheaper than torch's
    logits = 3.0 * rng.standard_normal((num_filler, num_filler))
    transitions = np.exp(logits - logits.max(1, keepdims=True))
    cdf = np.cumsum(transitions / transitions.sum(1, keepdims=True), axis=1)
    paragraphs, length = ESSAY_SHAPE
    u = rng.random((paragraphs, length))
    out = np.empty((paragraphs, length), dtype=np.int64)
    out[:, 0] = rng.integers(0, num_filler, paragraphs)
    for t in range(1, length):
        out[:, t] = (u[:, t, None] > cdf[out[:, t - 1]]).sum(1)
    return torch.from_numpy(np.minimum(out, num_filler - 1).ravel())


class NiahConfig(TaskConfig):
    num_keys: int = Field(default=64, ge=1)  # distinct key tokens (RULER draws a random word)
    num_filler: int = Field(default=64, ge=2)  # distinct haystack tokens
    eval_placement: Placement = "stretch"  # beyond the training length; "train": random depths throughout


class NumberConfig(NiahConfig):
    digits: int = Field(default=7, ge=1)  # RULER's numbers have 7 digits


class PasskeyConfig(NumberConfig):
    pattern_len: int = Field(default=16, ge=1)  # length of the repeated noise pattern


class UUIDConfig(NiahConfig):
    groups: list[PositiveInt] = Field(default=[8, 4, 4, 4, 12], min_length=1)  # hex digits per group


class Niah(Task):
    exact = True
    config: NiahConfig

    @property
    def vocab_size(self) -> int:
        return KEY0 + self.config.num_keys + self.config.num_filler

    @property
    def filler0(self) -> int:
        return KEY0 + self.config.num_keys

    def value_len(self) -> int:
        raise NotImplementedError

    def values(self, n: int, g: torch.Generator) -> torch.Tensor:
        """[n, value_len] value tokens."""
        raise NotImplementedError

    def n_values(self) -> int:
        """How many different values a needle can hold."""
        raise NotImplementedError

    def chance(self) -> str:
        return f"chance {100 / self.n_values():.2g}% guessing the whole {self.value_len()}-token value"

    def min_len(self) -> int:
        k = self.value_len()
        # The needle and query (+ answer) must leave a haystack at least as long as themselves.
        return 2 * ((k + 4) + (3 + k))

    def check_len(self, seq_len: int) -> None:
        if seq_len < self.min_len():
            raise self.fail(
                f"seq_len {seq_len} is too short for a needle of {self.value_len()} value tokens; "
                f"it needs at least {self.min_len()}"
            )

    def make_haystack(self, n: int, length: int, g: torch.Generator) -> torch.Tensor:
        """[n, length] varied filler text: windows at random offsets of one fixed essay."""
        text = essay(self.config.num_filler)
        offsets = torch.randint(0, len(text), (n, 1), generator=g)
        return text[(offsets + torch.arange(length)) % len(text)] + self.filler0

    def generate(self, n: int, seq_len: int, seed: int, train_len: int | None = None) -> Examples:
        self.check_len(seq_len)
        g = torch.Generator().manual_seed(seed)
        k = self.value_len()
        # The full sequence is seq_len + 1 tokens ending with the value; inputs drop the last token.
        hay_len = seq_len + 1 - (k + 4) - (3 + k)
        haystacks = self.make_haystack(n, hay_len, g)
        keys = torch.randint(0, self.config.num_keys, (n,), generator=g) + KEY0
        values = self.values(n, g)
        if self.stretches(seq_len, train_len):  # RULER: evenly spaced depths, 0% to 100%
            depths = torch.linspace(0, hay_len, n, dtype=torch.float64).round().long()
        else:
            depths = torch.randint(0, hay_len + 1, (n,), generator=g)

        full = torch.empty(n, seq_len + 1, dtype=torch.long)
        for i in range(n):
            key, value, d = keys[i : i + 1], values[i], int(depths[i])
            needle = torch.cat([torch.tensor([NEEDLE]), key, torch.tensor([IS]), value, torch.tensor([END])])
            query = torch.cat([torch.tensor([QUERY]), key, torch.tensor([IS]), value])
            full[i] = torch.cat([haystacks[i, :d], needle, haystacks[i, d:], query])
        inputs = full[:, :-1].clone()
        targets = torch.full((n, seq_len), IGNORE, dtype=torch.long)
        targets[:, -k:] = full[:, -k:]
        # Value token i is asked at seq_len - k + i and sits in the needle at depth + 3 + i.
        distances = torch.full((n, seq_len), NO_DISTANCE, dtype=torch.long)
        distances[:, -k:] = (seq_len - k - depths - 3)[:, None]
        return Examples(inputs, targets, distances)


class NumberNiah(Niah):
    config: NumberConfig

    def value_len(self) -> int:
        return self.config.digits

    def n_values(self) -> int:
        return 10**self.config.digits - (10 ** (self.config.digits - 1) if self.config.digits > 1 else 0)

    def values(self, n: int, g: torch.Generator) -> torch.Tensor:
        digits = torch.randint(0, 10, (n, self.config.digits), generator=g)
        if self.config.digits > 1:  # a number has no leading zero, as RULER's randint(10**6, 10**7 - 1)
            digits[:, 0] = torch.randint(1, 10, (n,), generator=g)
        return digits + DIGIT0


@register_task("niah-pk")
class PasskeyNiah(NumberNiah):
    Config = PasskeyConfig
    config: PasskeyConfig

    def make_haystack(self, n: int, length: int, g: torch.Generator) -> torch.Tensor:
        """The same noise pattern, repeated, in every example: only the needle differs."""
        fixed = torch.Generator().manual_seed(PATTERN_SEED)
        pattern = torch.randint(0, self.config.num_filler, (self.config.pattern_len,), generator=fixed)
        repeats = length // self.config.pattern_len + 1
        return pattern.repeat(repeats)[:length].expand(n, length) + self.filler0


@register_task("niah-n")
class TextNumberNiah(NumberNiah):
    Config = NumberConfig


@register_task("niah-uuid")
class UUIDNiah(Niah):
    Config = UUIDConfig
    config: UUIDConfig

    def value_len(self) -> int:
        return sum(self.config.groups) + len(self.config.groups) - 1

    def n_values(self) -> int:
        return N_DIGITS ** sum(self.config.groups)

    def values(self, n: int, g: torch.Generator) -> torch.Tensor:
        parts = []
        for j, size in enumerate(self.config.groups):
            if j:
                parts.append(torch.full((n, 1), DASH))
            parts.append(torch.randint(0, N_DIGITS, (n, size), generator=g) + DIGIT0)
        return torch.cat(parts, dim=1)
