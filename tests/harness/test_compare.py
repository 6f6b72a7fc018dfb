"""Regression checks: the ratio AND the significance rule for a regression, a bootstrap bound of the ratio
for a pass, "inconclusive" in between, deterministic metrics, unmatched cells, exit codes."""

import math
import random
import statistics

import pytest
from scipy.stats import mannwhitneyu

from bench import results
from bench.analysis.compare import compare_runs, compare_timing
from bench.analysis.stats import mann_whitney_u, median_ratio_interval
from bench.cli import main


def samples(center, n, seed, spread=0.02):
    rng = random.Random(seed)
    return [center * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


@pytest.mark.parametrize("n1, n2, shift", [(5, 5, 1.3), (2, 2, 1.0), (12, 9, 1.05), (40, 35, 1.01)])
def test_mann_whitney_matches_scipy(n1, n2, shift):
    x, y = samples(1.0, n1, 1, 0.1), samples(shift, n2, 2, 0.1)
    method = "exact" if n1 * n2 <= 400 else "asymptotic"  # ours is exact wherever that is cheap
    expected = mannwhitneyu(x, y, alternative="two-sided", method=method).pvalue
    assert mann_whitney_u(x, y)[1] == pytest.approx(expected, rel=1e-9)


def test_ties_use_the_corrected_normal_approximation():
    x, y = [1, 1, 2, 2, 3], [2, 3, 3, 4, 4]
    assert mann_whitney_u(x, y)[1] == pytest.approx(mannwhitneyu(x, y, alternative="two-sided").pvalue)


def test_known_30_percent_slowdown_is_flagged():
    change = compare_timing("k", samples(1.0, 10, 1), samples(1.3, 10, 2), threshold=0.1, alpha=0.01)
    assert change.verdict == "regression" and change.ratio == pytest.approx(1.3, rel=0.05)


def test_speedup_is_an_improvement():
    assert compare_timing("k", samples(1.3, 10, 1), samples(1.0, 10, 2), 0.1, 0.01).verdict == "improvement"


def test_equal_distributions_are_not_flagged():
    change = compare_timing("k", samples(1.0, 10, 1, 0.2), samples(1.0, 10, 2, 0.2), 0.1, 0.01)
    assert change.verdict in ("unchanged", "inconclusive")


def test_thirty_percent_shift_with_two_samples_is_inconclusive_not_a_pass():
    change = compare_timing("k", samples(1.0, 2, 1), samples(1.3, 2, 2), 0.1, 0.01)
    assert change.verdict == "inconclusive" and change.p_value > 0.3


def test_a_pass_is_shown_by_rounds_whose_interval_rules_the_slowdown_out():
    tight_base, tight_new = samples(1.0, 6, 1, 0.02), samples(1.0, 6, 2, 0.02)
    change = compare_timing("k", tight_base, tight_new, 0.1, 0.01)
    assert change.verdict == "unchanged" and change.interval[1] < 1.1
    # the same numbers as repeats of one process show nothing about the next process
    assert compare_timing("k", tight_base, tight_new, 0.1, 0.01, units="repeats").verdict == "inconclusive"
    # three rounds a side are too few for the bootstrap to be trusted
    assert compare_timing("k", tight_base[:3], tight_new[:3], 0.1, 0.01).verdict == "inconclusive"
    # a ratio near 1 whose interval still reaches past the threshold rules nothing out
    wide = compare_timing("k", samples(1.0, 6, 3, 0.4), samples(1.0, 6, 4, 0.4), 0.1, 0.01)
    assert wide.verdict == "inconclusive" and wide.interval[1] > 1.1


def test_the_busy_machine_case_of_issue_24_is_inconclusive_not_a_pass():
    """Round medians of a 20 ms model on a 2-core machine with one core busy (two slow rounds), and the
    same model 30% slower: the test cannot tell them apart, and that must not read as a pass."""
    base = [0.027, 0.027, 0.085, 0.056, 0.024, 0.025]
    new = [1.3 * x for x in (0.025, 0.060, 0.026, 0.024, 0.090, 0.027)]
    change = compare_timing("k", base, new, 0.1, 0.01)
    assert change.p_value > 0.01 and change.verdict == "inconclusive"


def test_the_ratio_interval_is_seeded_and_brackets_the_ratio():
    base, new = samples(1.0, 6, 1, 0.1), samples(1.2, 6, 2, 0.1)
    low, high = median_ratio_interval(base, new, 0.01)
    assert (low, high) == median_ratio_interval(base, new, 0.01)
    assert low < statistics.median(new) / statistics.median(base) < high


def test_a_real_fifteen_percent_slowdown_rarely_passes():
    """Calibration of the pass rule: 6 rounds a side, 5% lognormal noise per round. A 15% slowdown (beyond
    the 10% threshold) passes in at most 2 of 100 draws; identical runs pass in most."""
    rng = random.Random(7)

    def rounds(scale):
        return [scale * math.exp(rng.gauss(0, 0.05)) for _ in range(6)]

    slow = [compare_timing("k", rounds(1.0), rounds(1.15), 0.1, 0.01).verdict for _ in range(100)]
    same = [compare_timing("k", rounds(1.0), rounds(1.0), 0.1, 0.01).verdict for _ in range(100)]
    assert slow.count("unchanged") <= 2
    assert same.count("unchanged") >= 50 and same.count("regression") <= 1


def test_significant_but_small_change_is_unchanged():
    change = compare_timing("k", samples(1.0, 20, 1, 0.001), samples(1.03, 20, 2, 0.001), 0.1, 0.01)
    assert change.p_value < 0.01 and change.verdict == "unchanged"


MIB = 2**20


def write_run(path, records):
    for r in records:
        results.append(path / results.RESULTS, r)


def cell(key, time_s, mem=100 * MIB, state=10.0, status="ok", n=8, seed=0, **extra):
    rec = {"key": key, "status": status, **extra}
    if status == "ok":
        rec.update(samples_s=samples(time_s, n, seed), peak_mem_bytes=mem, state_bytes=state)
    return rec


def rounds(key, time_s, k=6, seed=0, **fields):
    """A cell measured in k rounds of one run: one record per round, as `bench run --rounds k` writes."""
    return [cell(key, time_s, seed=seed + r, round=r, run_id=f"run-{seed}", n=5, **fields) for r in range(k)]


@pytest.fixture
def runs(tmp_path):
    base, new = tmp_path / "base", tmp_path / "new"
    base.mkdir(), new.mkdir()
    write_run(
        base,
        [
            *rounds("same", 1.0, seed=10),
            *rounds("mem", 1.0, mem=100 * MIB, seed=20),
            *rounds("gone", 1.0, seed=50),
            *rounds("breaks", 1.0, seed=60),
        ],
    )
    write_run(
        new,
        [
            *rounds("same", 1.0, seed=30),
            *rounds("mem", 1.0, mem=150 * MIB, seed=40),
            cell("added", 1.0),
            cell("breaks", 1.0, status="oom"),
        ],
    )
    return base, new


def test_memory_growth_failures_and_unmatched_cells(runs):
    comp = compare_runs(*map(str, runs))
    flagged = {(c.key, c.metric) for c in comp.regressions}
    assert flagged == {("mem", "peak_mem_bytes"), ("breaks", "status ok -> oom")}
    assert comp.only_base == ["gone"] and comp.only_new == ["added"]


def test_a_page_more_on_a_tiny_model_is_not_a_memory_regression(tmp_path):
    """The CPU high-water mark moves in 4 KiB pages: 20 -> 24 KiB is +20%, no regression; 20 -> 24 MiB is."""
    base, new = tmp_path / "base", tmp_path / "new"
    base.mkdir(), new.mkdir()
    write_run(base, [cell("tiny", 1.0, mem=20 * 1024, seed=1), cell("big", 1.0, mem=20 * MIB, seed=2)])
    write_run(new, [cell("tiny", 1.0, mem=24 * 1024, seed=3), cell("big", 1.0, mem=24 * MIB, seed=4)])
    comp = compare_runs(str(base), str(new))
    assert {(c.key, c.metric) for c in comp.regressions} == {("big", "peak_mem_bytes")}
    assert {(c.key, c.metric) for c in compare_runs(str(base), str(new), mem_floor=0).regressions} == {
        ("tiny", "peak_mem_bytes"),
        ("big", "peak_mem_bytes"),
    }
    # A state is counted exactly, in bytes: no floor, so 10 -> 20 bytes is a regression.
    write_run(base, [cell("state", 1.0, state=10.0, seed=5)])
    write_run(new, [cell("state", 1.0, state=20.0, seed=6)])
    assert ("state", "state_bytes") in {
        (c.key, c.metric) for c in compare_runs(str(base), str(new)).regressions
    }


ACC = {"higher_is_better": True, "unit": "fraction"}
BPB = {"higher_is_better": False, "unit": "bits per byte"}


def test_accuracy_past_the_training_length_is_compared_too(tmp_path):
    """The overall accuracy at 4L holds while the part past L collapses: a regression, named by its column."""
    base, new = tmp_path / "base", tmp_path / "new"
    base.mkdir(), new.mkdir()
    columns = {"score_columns": {c: ACC for c in ("acc_T128", "acc_beyond_T128")}}
    write_run(base, [{"key": "acc", "status": "ok", "acc_T128": 0.90, "acc_beyond_T128": 0.80, **columns}])
    write_run(new, [{"key": "acc", "status": "ok", "acc_T128": 0.88, "acc_beyond_T128": 0.40, **columns}])
    comp = compare_runs(str(base), str(new))
    assert [(c.metric, c.verdict) for c in comp.changes] == [
        ("acc_T128", "unchanged"),
        ("acc_beyond_T128", "regression"),
    ]


def test_an_inconclusive_timing_exits_4_with_the_advice(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    base.mkdir(), new.mkdir()
    write_run(base, [cell("k", 1.0, n=8, seed=1)])  # one round a side: a pass cannot be shown
    write_run(new, [cell("k", 1.0, n=8, seed=2)])
    assert main(["compare", str(base), str(new), "--markdown", str(tmp_path / "cmp.md")]) == 4
    assert "measure more rounds" in capsys.readouterr().err
    assert "**inconclusive**" in (tmp_path / "cmp.md").read_text()


def test_cli_exit_codes_and_markdown(runs, tmp_path, capsys):
    base, new = map(str, runs)
    md = tmp_path / "cmp.md"
    assert main(["compare", base, new, "--markdown", str(md)]) == 1
    text = md.read_text()
    assert "**regression**" in text and "Only in BASE" in text and "`gone`" in text
    assert main(["compare", base, base]) == 0
    assert main(["compare", base, str(tmp_path / "nowhere")]) == 2
    assert main(["compare", base, new, "--alpha", "2"]) == 2
    assert "error:" in capsys.readouterr().err


def test_rounds_concatenated_into_one_file_pool_their_samples(tmp_path):
    path = tmp_path / "both.jsonl"
    results.append(path, cell("k", 1.0, n=3, seed=1))
    results.append(path, cell("k", 1.0, n=4, seed=2))
    comp = compare_runs(str(path), str(path))
    assert [c.verdict for c in comp.changes if c.metric == "time"] == ["inconclusive"]  # one process a side
    from bench.analysis.compare import _load

    side = _load(str(path))["k"]
    assert (
        len(side.samples) == 7 and len(side.round_medians) == 1
    )  # one round: no round field told them apart


def test_the_power_floor_of_the_exact_test():
    from bench.analysis.compare import smallest_p

    assert [round(smallest_p(n, n), 4) for n in (3, 4, 5, 6)] == [0.1, 0.0286, 0.0079, 0.0022]


def test_too_few_samples_to_decide_is_an_error_not_a_pass(tmp_path, capsys):
    """Three repeats a side can never reach p < 0.01: a 50% slowdown must not pass as "not significant"."""
    base, new = tmp_path / "base", tmp_path / "new"
    base.mkdir(), new.mkdir()
    write_run(base, [cell("k", 1.0, n=3, seed=1)])
    write_run(new, [cell("k", 1.5, n=3, seed=2)])
    assert main(["compare", str(base), str(new)]) == 2
    err = capsys.readouterr().err
    assert "cannot reach p < 0.01" in err and "3 vs 3 repeats" in err and err.count("\n") == 1
    assert main(["compare", str(base), str(new), "--alpha", "0.2"]) == 1  # a looser alpha can decide


def test_rounds_are_the_units_when_both_sides_have_them(tmp_path):
    """Six rounds of five repeats: the test sees six medians a side, not thirty correlated repeats."""
    path_b, path_n = tmp_path / "b.jsonl", tmp_path / "n.jsonl"
    for r in range(6):
        results.append(path_b, cell("k", 1.0, n=5, seed=r, round=r, run_id="b"))
        results.append(path_n, cell("k", 1.3, n=5, seed=10 + r, round=r, run_id="n"))
    comp = compare_runs(str(path_b), str(path_n))
    (change,) = [c for c in comp.changes if c.metric == "time"]
    assert change.units == "6 vs 6 rounds" and change.verdict == "regression"
    assert change.p_value == pytest.approx(2 / 924)  # the exact test's floor for 6 vs 6: no overlap at all


def test_runs_with_nothing_in_common_cannot_pass_the_gate(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    base.mkdir(), new.mkdir()
    write_run(base, rounds("old-config", 1.0, seed=1))
    write_run(new, rounds("new-config", 1.0, seed=2))
    assert main(["compare", str(base), str(new)]) == 2
    captured = capsys.readouterr()
    assert "share 0 cell(s), fewer than --min-common 1" in captured.err and "`old-config`" in captured.out
    write_run(new, rounds("old-config", 1.0, seed=5))
    assert main(["compare", str(base), str(new)]) == 0
    assert main(["compare", str(base), str(new), "--min-common", "2"]) == 2


LM = {"score_columns": {c: BPB for c in ("bpb_T64", "bpb_T128")}}


@pytest.mark.parametrize("stored", [True, False])
def test_bits_per_byte_are_lower_is_better(tmp_path, stored):
    """Language-modelling cells carry bpb_T{n} columns: a rise beyond bpb_threshold (0.05 bits per byte by
    default) is a regression, a fall an improvement, the opposite of the accuracy columns. The direction
    comes from the record's scorer: stored with the record, or for older records asked of the scorer it
    names."""
    base, new = tmp_path / "base", tmp_path / "new"
    base.mkdir(), new.mkdir()
    lm = LM if stored else {"mode": "accuracy", "scoring": "loss"}
    acc = {"score_columns": {"acc_T64": ACC}} if stored else {"mode": "accuracy", "scoring": "distance"}
    write_run(
        base,
        [
            {"key": "lm-a", "status": "ok", "bpb_T64": 2.0, "bpb_T128": 2.10, **lm},
            {"key": "lm-b", "status": "ok", "bpb_T64": 2.0, "bpb_T128": None, **lm},  # not evaluated: skipped
            {"key": "acc", "status": "ok", "acc_T64": 0.9, **acc},
        ],
    )
    write_run(
        new,
        [
            {"key": "lm-a", "status": "ok", "bpb_T64": 2.04, "bpb_T128": 2.20, **lm},
            {"key": "lm-b", "status": "ok", "bpb_T64": 1.90, "bpb_T128": 3.0, **lm},
            {"key": "acc", "status": "ok", "acc_T64": 0.99, **acc},
        ],
    )
    verdicts = {(c.key, c.metric): c.verdict for c in compare_runs(str(base), str(new)).changes}
    assert verdicts == {
        ("lm-a", "bpb_T64"): "unchanged",  # +0.04, within the threshold
        ("lm-a", "bpb_T128"): "regression",  # +0.10
        ("lm-b", "bpb_T64"): "improvement",  # -0.10
        ("acc", "acc_T64"): "improvement",  # accuracy: higher is better
    }
    assert [c.metric for c in compare_runs(str(base), str(new), bpb_threshold=0.2).regressions] == []
    assert main(["compare", str(base), str(new)]) == 1
    assert main(["compare", str(new), str(new)]) == 0
