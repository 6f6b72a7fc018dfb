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
    rows = [line for line in speed_block.splitlines() if line.startswith("| 1 | fast |")]
    assert rows and rows[0].endswith("| significant |")
    assert "| 2 | titans-a |" in page or "| 2 | titans-b |" in page
    assert "| jumpy |" not in speed_block and "**Caveat: too noisy to rank: jumpy.**" in speed_block
    tied = [line for line in page.splitlines() if line.startswith("| 2 | titans-")]
    assert tied[0].endswith("| within noise |")
    # recall past L: titans-a ahead of other beyond their intervals over seeds; at L within noise
    assert (
        "| recall: mqar, past L at T = 128 | [acc](acc/REPORT.md) | titans-a 91 | titans-a 91 (1 of 2) | "
        "it is the best; over other: significant | no calibration model |"
    ) in page
    at_l = page.split("### recall: mqar, at L = 32 (acc)")[1].split("###")[0]
    assert "| 1 | titans-a | 99" in at_l and "| within noise |" in at_l
    assert "| inference state at T = 1024 | [speed](speed/REPORT.md) | fast " in page and "| exact |" in page
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
