"""Statistics for the reports, written out so that they can be read and tested:

- the Mann-Whitney U test, two-sided, on raw timing samples: exact for small samples without ties (the
  usual case of 5-20 repeats), the normal approximation with tie correction otherwise;
- a bootstrap interval for the ratio of two medians (new over base), resampling each side's independent
  units (rounds) with replacement, seeded so that the same data always give the same interval;
- confidence intervals for accuracies: Wilson's score interval for a proportion (one run scored on n
  examples) and Student's t interval for a mean (over seeds), with the t quantile from the regularised
  incomplete beta function.
"""

from __future__ import annotations

import math
import random
import statistics
from functools import cache
from statistics import NormalDist


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


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n``: unlike the normal approximation it
    stays inside [0, 1] and is not empty at 0 or n successes. ``successes`` may be fractional (a mean
    per-example score times n)."""
    if n <= 0:
        raise ValueError("a Wilson interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, n={n}]")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    return low, 1.0 if successes == n else min(1.0, centre + half)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval for the mean of ``values`` (at least two)."""
    n = len(values)
    if n < 2:
        raise ValueError("a t interval needs at least two values")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


BOOTSTRAP_RESAMPLES = 4000


def median_ratio_interval(
    base: list[float], new: list[float], alpha: float, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """(low, high): the ``alpha`` and ``1 - alpha`` quantiles of median(new) / median(base) over bootstrap
    resamples of each side, so each bound is one-sided at level ``1 - alpha``. With few units the
    percentile bootstrap is too narrow rather than too wide (the resampled median takes only the values
    seen), which is why a caller that passes on ``high`` also requires several units a side."""
    if not base or not new:
        raise ValueError("a ratio interval needs at least one value on each side")
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        b = statistics.median(rng.choices(base, k=len(base)))
        n = statistics.median(rng.choices(new, k=len(new)))
        ratios.append(n / b if b > 0 else math.inf)
    ratios.sort()
    return _quantile(ratios, alpha), _quantile(ratios, 1 - alpha)


def _quantile(ordered: list[float], q: float) -> float:
    """The smallest value with at least a fraction ``q`` of ``ordered`` at or below it."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
