"""The write policy (bench/results/outputs.py) at work: the list of files a command wrote, a run of an
earlier version known by its manifest, outputs checked before the work, a report moved in whole or not at
all, and --resume keeping the first invocation's manifest."""

import json

import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.results.outputs import MARKER, claim_folder
from tests.harness.test_odd_input import timing, write_jsonl

TINY = ["--d-model", "16", "--n-layers", "1", "--vocab-size", "32", "--device", "cpu", "--no-progress"]
CELL = ["--models", "tests.plugins.gru:build", "--modes", "prefill", "--seq-lens", "8", "--repeats", "1",
        "--warmup", "1", "--isolation", "none", "--no-report"]  # fmt: skip


def test_a_folder_lists_what_was_written_and_refuses_to_replace_anything_else(tmp_path):
    folder = claim_folder(tmp_path / "out", "--out")
    folder.create()
    folder.write_text("REPORT.md", "ours\n")
    assert json.loads((tmp_path / "out" / MARKER).read_text())["files"] == ["REPORT.md"]
    folder.write_text("REPORT.md", "ours, again\n")  # its own file: replaced
    (tmp_path / "out" / "plot.png").write_text("the user's")
    with pytest.raises(BenchError, match="plot.png' was not written by this harness.*give --out another"):
        folder.check_replaceable(["*.png"])
    assert claim_folder(tmp_path / "out", "--out").owns("REPORT.md")  # recognised by its list


def test_a_run_of_an_earlier_version_is_known_by_its_manifest_and_owns_its_files_by_name(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    manifest = {"created_at": "2025-01-01T00:00:00+00:00", "command": "python -m bench run", "packages": {}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "REPORT.md").write_text("an old report")
    (run / "notes.txt").write_text("the user's")
    folder = claim_folder(run, "report", own_only=True)
    assert folder.owns("REPORT.md") and folder.owns("manifest.json") and not folder.owns("notes.txt")


def test_an_empty_folder_may_be_used_and_a_made_folder_is_removed_again(tmp_path):
    claim_folder(tmp_path, "--out")  # empty: nothing to lose
    with pytest.raises(BenchError, match="is not a folder this harness wrote"):
        claim_folder(tmp_path, "--resume", own_only=True)
    folder = claim_folder(tmp_path / "a" / "b", "--out")
    folder.create()
    folder.discard()
    assert not (tmp_path / "a").exists()


def test_outputs_are_checked_before_any_validation_or_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the work started before its output was checked")

    monkeypatch.setattr("bench.measure.backend_check.check_backends", never)
    monkeypatch.setattr("bench.running.sweep.run_local", never)
    assert main(["validate", "--models", "transformer", "--out", "/proc/bench-v"]) == 2
    assert main(["run", *TINY, *CELL, "--out", "/proc/bench-r"]) == 2
    err = capsys.readouterr().err
    assert "--out: cannot write the folder '/proc/bench-v'" in err
    assert "--out: cannot write the folder '/proc/bench-r'" in err


def test_a_report_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "base.jsonl", [timing("k1")])

    def half(rows, manifest, name, source, stage):
        (stage / "REPORT.md").write_text("half a report")
        raise RuntimeError("a section failed")

    monkeypatch.setattr("bench.analysis.report._render", half)
    assert main(["report", "base.jsonl"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.jsonl"]


def test_a_report_of_a_results_file_goes_beside_it_and_is_rewritten_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "base.jsonl", [timing("k1")])
    for _ in range(2):  # the second time over its own files
        assert main(["report", "base.jsonl"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "base-report/REPORT.md"
    assert "Generated from `base.jsonl` (1 cells)" in (tmp_path / "base-report" / "REPORT.md").read_text()


def test_resume_keeps_the_first_invocations_manifest_and_appends_its_own(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *TINY, *CELL, "--out", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert main(["run", "--resume", str(out), "--retry-failed", "--no-progress", "--no-report"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "resumed"} == first
    (resumed,) = manifest["resumed"]
    assert "--resume" in resumed["command"] and resumed["run_id"] != first["run_id"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["run_id"] for r in records} == {first["run_id"]}  # every cell was measured by the first


def test_a_run_folder_has_one_driver_at_a_time(tmp_path, capsys):
    """A second invocation on a run's folder while the first still runs it (a --resume started too early,
    two default folders named in the same second) is refused, before it measures or writes anything; the
    lock goes with its holder."""
    from bench.running.driver_lock import sole_driver

    out = tmp_path / "run"
    assert main(["run", *TINY, *CELL, "--out", str(out)]) == 0
    before = (out / "results.jsonl").read_text()
    with sole_driver(out):  # the first driver, still running
        assert main(["run", "--resume", str(out), "--retry-failed", "--no-progress", "--no-report"]) == 2
        assert "is being run by another invocation" in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == before
    assert main(["run", "--resume", str(out), "--no-progress", "--no-report"]) == 0  # released


def test_strict_counts_every_round(tmp_path, monkeypatch, capsys):
    """A cell ok in its first round and crashed in its second fails --strict: the report (its latest
    record) and compare both call it failed, so the exit code does too."""
    from bench.commands.run import EXIT_CELLS_FAILED
    from bench.running import sweep

    def execute(spec, cells, ledger, bar, round_index, run_dir):
        for cell in cells:
            status = "ok" if round_index == 0 else "crashed"
            ledger.record(cell, {"status": status, "wall_s": 0.0, "samples_s": [0.01]}, round_index)

    monkeypatch.setattr(sweep, "execute", execute)
    out = tmp_path / "run"
    assert main(["run", *TINY, *CELL, "--rounds", "2", "--strict", "--out", str(out)]) == EXIT_CELLS_FAILED
    assert "--strict: not every cell finished ok (1 crashed, 1 ok)" in capsys.readouterr().err


def test_a_damaged_record_stops_a_resume_with_the_file_named(tmp_path, capsys):
    """A record whose key is not a string (a damaged line, another tool's) is bad input, exit 2, not an
    internal error."""
    out = tmp_path / "run"
    assert main(["run", *TINY, *CELL, "--out", str(out)]) == 0
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps({"key": ["not", "a", "string"], "status": "ok"}) + "\n")
    assert main(["run", "--resume", str(out), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "results.jsonl" in err and "damaged" in err


def test_a_lock_file_the_harness_did_not_write_is_never_rewritten(tmp_path):
    """The run's lock file is written into the run folder; one of that name that the user put in an
    otherwise empty folder is refused like any other file, before the work."""
    from bench.running.driver_lock import LOCK

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text("mine")
    assert main(["run", *TINY, *CELL, "--out", str(out)]) == 2
    assert (out / LOCK).read_text() == "mine" and not (out / "results.jsonl").exists()
