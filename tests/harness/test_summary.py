"""The summary page: two synthetic runs (timing cells with known samples, recall cells with known seeds)
ranked with the strength of the evidence between neighbours, within-noise cases included."""

from __future__ import annotations

import statistics

import numpy

from bench import results
from bench.cli import main
from bench.commands.summary import MARK


def timing(label, samples, state=1024):
    return {"key": f"{label}/prefill", "status": "ok", "mode": "prefill", "model": label, "label": label,
            "seq_len": 1024, "samples_s": samples, "tokens_per_call": 1024, "state_bytes": state,
            "peak_mem_bytes": 2**20, "median_s": statistics.median(samples),
            "iqr_s": float(numpy.subtract(*numpy.percentile(samples, [75, 25])))}  # fmt: skip


def recall(label, seed, acc_l, acc_beyond):
    entries = [
        {"eval_len": 32, "accuracy": acc_l, "n_examples": 200, "by_distance": []},
        {"eval_len": 128, "accuracy": acc_beyond, "beyond_train": acc_beyond, "n_examples": 200,
         "beyond_train_examples": 200, "by_distance": []},
    ]  # fmt: skip
    return {"key": f"{label}/{seed}", "status": "ok", "mode": "accuracy", "model": label, "label": label,
            "train_len": 32, "task": "mqar", "task_label": "mqar", "seed": seed, "train": {"lr": 1e-3},
            "val_loss": 0.1, "section": "recall", "scoring": "distance",
            "accuracy_by_len": entries}  # fmt: skip


def test_two_runs_ranked_with_their_evidence(tmp_path, capsys):
    speed, acc = tmp_path / "speed", tmp_path / "acc"
    speed.mkdir(), acc.mkdir()
    for record in (
        timing("fast", [0.010, 0.011, 0.010, 0.0105, 0.0102]),
        timing("titans-a", [0.020, 0.021, 0.020, 0.0205, 0.0203], state=4096),
        timing("titans-b", [0.0201, 0.0209, 0.0199, 0.0204, 0.0206], state=4096),
        timing("jumpy", [0.005, 0.03, 0.005, 0.03, 0.005]),  # the fastest median, far too noisy to rank
    ):
        results.append(speed / results.RESULTS, record)
    for seed in range(3):
        results.append(acc / results.RESULTS, recall("titans-a", seed, 0.99, 0.90 + 0.01 * seed))
        results.append(acc / results.RESULTS, recall("other", seed, 0.98, 0.40 + 0.02 * seed))
    (tmp_path / "notes.md").write_text("not a run")
    assert main(["summary", str(speed), str(acc), str(tmp_path / "notes.md")]) == 0
    assert "left out (no results.jsonl)" in capsys.readouterr().out
    page = (tmp_path / "README.md").read_text()
    assert page.startswith(MARK)
    # throughput: fast is twice as fast, beyond its interval; the two Titans models cannot be told apart
    speed_block = page.split("### prefill throughput at T = 1024 (speed)")[1].split("###")[0]
    assert "bootstrap interval over the repeats of its one process" in speed_block  # one round each
    rows = [line for line in speed_block.splitlines() if line.startswith("| 2 | fast |")]
    assert rows and rows[0].endswith("| significant |")
    assert "| 3 | titans-a |" in page or "| 3 | titans-b |" in page
    # the noisy cell is ranked where its median puts it, and marked there and beside its verdict
    jumpy = [line for line in speed_block.splitlines() if line.startswith("| 1 | jumpy |")]
    assert (
        jumpy
        and "(too noisy: drift, spread or warm-up)" in jumpy[0]
        and jumpy[0].endswith("(a noisy cell) |")
    )
    tied = [line for line in page.splitlines() if line.startswith("| 3 | titans-")]
    assert tied[0].endswith("| within noise |")
    # recall past L: titans-a ahead of other beyond their intervals over seeds; at L within noise
    assert (
        "| recall: mqar, past L at T = 128 | [acc](acc/REPORT.md) | titans-a 91 | titans-a 91 (1 of 2) | "
        "it is the best; over other: significant | no calibration model |"
    ) in page
    at_l = page.split("### recall: mqar, at L = 32 (acc)")[1].split("###")[0]
    assert "| 1 | titans-a | 99" in at_l and "| within noise |" in at_l
    # fast and jumpy hold the same state: a tie, not an order
    assert "| inference state at T = 1024 | [speed](speed/REPORT.md) | 2 tied: fast, jumpy " in page
    assert "| exact |" in page
    # a memory figure says what it counts, in the record's words (these synthetic records name nothing)
    assert "MiB at the peak of one call (source not recorded)" in page
    # it never replaces a file it did not write
    (tmp_path / "mine.md").write_text("my notes")
    assert main(["summary", str(speed), "--out", str(tmp_path / "mine.md")]) == 2
    assert (tmp_path / "mine.md").read_text() == "my notes"


def test_the_page_says_where_each_run_comes_from(tmp_path):
    """A run of a preset whose definition has changed since is marked so, with the fields that differ; a
    run on a dirty tree is marked dirty; a run of no preset says that."""
    import json

    from bench.spec.config import preset_spec

    old, own = tmp_path / "cpu-recall", tmp_path / "mine"
    for run, name, dirty in ((old, "cpu-recall", True), (own, "my-sweep", False)):
        run.mkdir()
        results.append(run / results.RESULTS, timing("fast", [0.01, 0.011, 0.012]))
        (run / results.MANIFEST).write_text(
            json.dumps({"name": name, "git_commit": "abc1234def99", "git_dirty": dirty})
        )
    spec = json.loads(preset_spec("cpu-recall").model_dump_json())
    # a setting the stored sweep predates (absent there) and one changed since: named by their paths
    accuracy = {k: v for k, v in spec["accuracy"].items() if k != "stop_rule"}
    (old / "spec.json").write_text(json.dumps({**spec, "timeout_s": 1, "accuracy": accuracy}))
    assert main(["summary", str(old), str(own)]) == 0
    page = (tmp_path / "README.md").read_text()
    assert (
        "| [cpu-recall](cpu-recall/REPORT.md) | abc1234def | **dirty** | ? | **changed since**: "
        "`accuracy.stop_rule`, `timeout_s` (`accuracy.stop_rule` acts only with `accuracy.threshold`, which "
        "no cell of this run had) |" in page
    )  # its one cell is a timing cell: no early stop ran
    (old / "spec.json").write_text(json.dumps({**spec, "accuracy": accuracy}))
    results.append(
        old / results.RESULTS, {**recall("m", 0, 1.0, 0.5), "train": {"lr": 1e-3, "threshold": 0.99}}
    )
    assert main(["summary", str(old), str(own)]) == 0
    assert "**changed since**: `accuracy.stop_rule` |" in (tmp_path / "README.md").read_text()
    assert "| [mine](mine/REPORT.md) | abc1234def | clean | ? | no preset of that name |" in page
    # a cell another run measured, copied in: the commit named is not its commit
    (own / results.MANIFEST).write_text(
        json.dumps({"name": "my-sweep", "git_commit": "abc1234def99", "run_id": "me"})
    )
    results.append(own / results.RESULTS, {**timing("slow", [0.02, 0.021, 0.022]), "run_id": "other"})
    assert main(["summary", str(old), str(own)]) == 0
    assert (
        "| abc1234def (1 of 2 cells copied from another run: see its report) | clean |"
        in (tmp_path / "README.md").read_text()
    )


def test_a_smoke_test_is_not_a_ranking(tmp_path):
    """Cells trained as a smoke test (the default run's few steps) are listed with that caveat."""
    run = tmp_path / "default"
    run.mkdir()
    for seed in range(2):
        for label, acc in (("titans-a", 0.2), ("other", 0.1)):
            results.append(run / results.RESULTS, {**recall(label, seed, acc, acc), "smoke_test": True})
    assert main(["summary", str(run)]) == 0
    page = (tmp_path / "README.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| recall: mqar, at L = 32 |")]
    assert rows and rows[0].endswith("| smoke test: not a ranking |")
    assert "**Caveat: smoke test: not a ranking.**" in page


def test_a_question_carries_its_own_tasks_caveats():
    """The caveat of a task's question comes from that task's runs: a calibration that failed on another
    task, or a rate left at the grid's edge there, does not mark it."""
    from bench.analysis.summary import caveat
    from tests.harness.test_report_accuracy import record

    calibration = {"model": "best", "min_score": 0.9, "converged": True}

    def run(task, lr, seed, loss, acc, improving=False):
        return record("m", lr, seed, acc, (acc, acc), val_loss=loss, task=task, lr_origin="grid",
                      still_improving=improving, calibration=calibration)  # fmt: skip

    good = [
        run("a", lr, s, loss, 0.99) for lr, loss in ((1e-3, 0.2), (3e-3, 0.1), (1e-2, 0.3)) for s in range(3)
    ]
    # on "b" the largest rate wins (an edge) and the model is still improving below the bar
    bad = [
        run("b", lr, s, loss, 0.5, True)
        for lr, loss in ((1e-3, 0.9), (3e-3, 0.8), (1e-2, 0.7))
        for s in range(3)
    ]
    assert caveat(good, "accuracy", True) == ""
    assert (
        caveat(bad, "accuracy", True)
        == "calibration FAIL: ranks learning speed; rate at a grid edge: 1 model(s)"
    )
    assert caveat(good + bad, "accuracy", True).startswith("calibration FAIL")  # the run as a whole
    # a calibration that passes on the best model leaves the others' unfinished training to be said
    slow = [run("a", lr, s, loss + 0.5, 0.6, True) for lr, loss in ((1e-3, 0.2), (3e-3, 0.1), (1e-2, 0.3))
            for s in range(3)]  # fmt: skip
    slow = [r.model_copy(update={"label": "n"}) for r in slow]
    assert caveat(good + slow, "accuracy", True) == (
        "3 of 6 runs at the chosen rates still improving (1 model(s)): their places rank learning speed"
    )


def test_rounds_are_the_unit_of_a_speed_interval_and_no_round_hides_its_trouble(tmp_path):
    """A cell measured in three rounds gets a t interval over its rounds' rates (each round a fresh
    process), not a bootstrap over its pooled repeats; a drift or an unsettled warm-up in any round marks
    the pooled cell, whichever round ran last."""
    import math

    from bench.analysis.stats import t_interval

    run = tmp_path / "speed"
    run.mkdir()
    medians = [0.010, 0.013, 0.011]
    for i, m in enumerate(medians):
        record = {**timing("steady", [m, m * 1.01, m * 0.99]), "round": i}
        results.append(run / results.RESULTS, record)
        flags = {"drifting": i == 0, "drift": 0.3 if i == 0 else 0.01, "warmup_settled": i != 1}
        results.append(
            run / results.RESULTS, {**timing("other", [0.02, 0.0201, 0.0199]), "round": i, **flags}
        )
    pooled = {r.label: r for r in results.load_rows(run)}
    assert pooled["steady"].round_medians_s == medians and pooled["steady"].rounds == 3
    assert pooled["other"].drifting is True and pooled["other"].warmup_settled is False
    assert pooled["other"].drift == 0.3
    assert main(["summary", str(run)]) == 0
    page = (tmp_path / "README.md").read_text()
    _, low, high = t_interval([math.log(1024 / m) for m in medians])
    steady = next(line for line in page.splitlines() if line.startswith("| 1 | steady |"))
    assert f"[{math.exp(low) / 1000:.3g}k, {math.exp(high) / 1000:.3g}k]" in steady
    assert "95% t interval over its rounds, each a fresh process" in page
    assert "| 2 | other |" in page and "(too noisy: drift, spread or warm-up)" in page


def test_ties_share_a_rank_and_pairs_and_negligible_gains_are_judged_as_such():
    """Equal values share the better rank and read as ties; per-document differences decide where both
    figures have them (intervals that overlap can still be told apart pairwise); two gains both under the
    negligible size are never ranked against each other."""
    from bench.analysis.summary import Figure, Question, evidence, glance_lines

    values = (("a", 100.0), ("titans-b", 100.0), ("c", 90.0))
    figures = [Figure(n, v, v - 1, v + 1, "run") for n, v in values]
    tied = Question("q", "what", True, figures, "run/REPORT.md")
    assert tied.ranks() == [1, 1, 3]
    line = glance_lines([tied])[2]
    assert (
        "| 2 tied: a, titans-b 100 |" in line
        and "titans-b 100 (1 of 3) | tied best with 1 other(s) |" in line
    )
    base = [3.0 + 0.5 * (i % 7) for i in range(40)]
    better = Figure("x", 2.9, 2.5, 3.3, "run", paired=[v - 0.1 + 0.01 * (i % 3) for i, v in enumerate(base)])
    worse = Figure("y", 3.0, 2.6, 3.4, "run", paired=base)
    assert evidence(better, worse) == "significant (paired)"
    assert evidence(Figure("x", 2.9, 2.5, 3.3, "run"), Figure("y", 3.0, 2.6, 3.4, "run")) == "within noise"
    small = [Figure("u", 0.004, 0.003, 0.005, "run"), Figure("v", -0.002, -0.0025, -0.0015, "run")]
    assert evidence(*small, negligible=0.01) == "both under 0.01: negligible"
    assert evidence(*small) == "significant"


def test_training_memory_is_answered_at_its_own_longest_length(tmp_path):
    """Training timed only at a shorter length than prefill still answers the memory question."""
    run = tmp_path / "speed"
    run.mkdir()
    results.append(run / results.RESULTS, timing("titans-a", [0.01, 0.011, 0.012]))  # prefill at 1024
    short = {
        **timing("titans-a", [0.02, 0.021, 0.022]),
        "key": "titans-a/train",
        "mode": "train",
        "seq_len": 256,
    }
    results.append(run / results.RESULTS, short)
    assert main(["summary", str(run)]) == 0
    page = (tmp_path / "README.md").read_text()
    assert "### peak memory, train at T = 256 (speed)" in page
    assert "### peak memory, prefill at T = 1024 (speed)" in page
