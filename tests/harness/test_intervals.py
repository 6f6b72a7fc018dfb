"""The confidence intervals of the accuracy reports, against published values and scipy."""

import math

import pytest

from bench.analysis.stats import regularized_beta, t_cdf, t_interval, t_quantile, wilson_interval


@pytest.mark.parametrize(
    "successes, n, expected",
    [
        # Wilson (1927) score interval at 95%: standard textbook values (e.g. Newcombe 1998, Table I:
        # 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605; 0/20 -> 0-0.1611; 1/29 -> 0.0061-0.1718).
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        (5, 10, (0.2366, 0.7634)),
        (10, 10, (0.7225, 1.0)),
    ],
)
def test_wilson_interval_matches_published_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=5e-5) and high == pytest.approx(expected[1], abs=5e-5)


def test_wilson_interval_edges_and_errors():
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    low, high = wilson_interval(32.5, 64)  # a fractional count: a mean per-example score times n
    z2 = 1.959964**2  # the interval is centred on (p + z^2 / 2n) / (1 + z^2 / n), not on p
    assert low < 32.5 / 64 < high and (low + high) / 2 == pytest.approx(
        (32.5 / 64 + z2 / 128) / (1 + z2 / 64)
    )
    narrow, wide = wilson_interval(50, 100, 0.8), wilson_interval(50, 100, 0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize(
    "df, q975",  # two-sided 95% critical values of Student's t, from any printed table
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (10, 2.228), (30, 2.042), (120, 1.980)],
)
def test_t_quantile_matches_the_printed_table(df, q975):
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q975, abs=5e-4)


def test_t_distribution_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    for df in (1, 2, 3, 7, 25, 300):
        for p in (0.6, 0.9, 0.975, 0.995, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
        for t in (-4.0, -0.3, 0.0, 1.0, 2.5, 9.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)
    for a, b, x in ((0.5, 0.5, 0.3), (2.0, 5.0, 0.9), (40.0, 0.5, 0.97), (1.5, 3.0, 0.01)):
        assert regularized_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)
    values = [0.91, 0.78, 0.85, 0.99]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert t_interval(values)[1:] == pytest.approx((low, high), rel=1e-9)


def test_t_interval_by_hand():
    mean, low, high = t_interval([0.8, 1.0])  # sd = 0.1414, se = 0.1, t(1) = 12.706
    assert mean == pytest.approx(0.9) and high - mean == pytest.approx(12.7062047 * 0.1, rel=1e-6)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        t_interval([0.5])
    assert math.isclose(t_interval([1, 2, 3, 4], 0.9)[2] - 2.5, 2.353363 * math.sqrt(5 / 3) / 2, rel_tol=1e-6)
