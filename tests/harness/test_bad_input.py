"""Bad input, as a new user types it, against every command: exit code 2, one line on stderr (argparse's
usage block aside), no traceback, and nothing written anywhere."""

import json
import os

import pytest

from bench import results
from bench.cli import main

CORES = os.cpu_count() or 1


def ok_record(key: str) -> dict:
    return {"key": key, "status": "ok", "samples_s": [0.01, 0.011, 0.012], "peak_mem_bytes": 1.0}


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A working directory holding the files the cases point at."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "notoml.toml").write_text("models = [unclosed\n")
    (tmp_path / "unknown.toml").write_text("models = ['transformer']\nseq_lenz = [4]\n")
    (tmp_path / "nomodels.toml").write_text("models = []\n")
    (tmp_path / "longwarmup.toml").write_text(
        "models = ['transformer']\nmodes = ['accuracy']\ntasks = [{ name = 'mqar', steps = 200 }]\n"
    )  # the [accuracy] table's default warm-up of 300 steps is longer than the task's budget
    (tmp_path / "broken_plugin.py").write_text("def build(:\n")
    for name, records in (("base", ["a", "b"]), ("other", ["c"])):
        (tmp_path / name).mkdir()
        for key in records:
            results.append(tmp_path / name / results.RESULTS, ok_record(key))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / results.RESULTS).write_text("")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / results.RESULTS).write_text("hello\n[1, 2]\n{not json\n")
    (tmp_path / "nostatus").mkdir()
    (tmp_path / "nostatus" / results.RESULTS).write_text(json.dumps({"key": "a"}) + "\n")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "spec.json").write_text("{ this is not json")
    (tmp_path / "underpowered").mkdir()
    results.append(tmp_path / "underpowered" / results.RESULTS, ok_record("a"))
    return tmp_path


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


ACC = ["--models", "transformer", "--modes", "accuracy", "--tasks", "mqar"]
TINY = ["--d-model", "16", "--n-layers", "1", "--vocab-size", "32", "--device", "cpu", "--no-progress"]
RUN = [
    (["--models", ""], "--models '' lists nothing"),
    (["--models", ","], "--models ',' lists nothing"),
    (["--models", "nope"], "unknown model 'nope'"),
    (["--models", "no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
    (["--models", "tests.plugins.gru:missing"], "has no attribute 'missing'"),
    (["--models", "tests.plugins.gru:"], "must look like"),
    (["--models", "broken_plugin.py:build"], "syntax error: "),
    (["--models", "tests/plugins/nothere.py:build"], "does not exist"),
    (["--models", "tests/plugins/gru:build"], "a file path must end in .py"),
    (["--models", "transformer,transformer"], "used twice"),
    (["--models", "tests.plugins.faulty:returns_none"], "returned None"),
    (["--models", "transformer", "--seq-lens", "0"], "--seq-lens (item 1): Input should be greater than 0"),
    (["--models", "transformer", "--seq-lens", "ten"], "--seq-lens takes comma-separated integers"),
    (["--models", "transformer", "--seq-lens", "-5"], "--seq-lens (item 1): Input should be greater than 0"),
    (["--models", "transformer", "--seq-lens", "16,16"], "contains duplicates"),
    (["--models", "transformer", "--batch-sizes", "0"], "--batch-sizes (item 1)"),
    (["--models", "transformer", "--dtypes", "float8"], "--dtypes (item 1): Input should be 'float32'"),
    (["--models", "transformer", "--dtypes", ""], "--dtypes '' lists nothing"),
    (["--models", "transformer", "--modes", "fly"], "--modes (item 1): Input should be 'train'"),
    (["--models", "transformer", "--modes", ""], "--modes '' lists nothing"),
    (["--models", "transformer", "--device", "cuda"], "no CUDA device"),
    (["--models", "transformer", "--d-model", "31"], "rotary embedding needs an even head"),
    (["--models", "transformer", "--d-model", "0"], "--d-model: Input should be greater than 0"),
    (["--models", "transformer", "--n-layers", "0"], "--n-layers:"),
    (["--models", "transformer", "--vocab-size", "0"], "--vocab-size:"),
    (["--models", "transformer", "--repeats", "0"], "--repeats:"),
    (["--models", "transformer", "--warmup", "0"], "--warmup:"),
    (["--models", "transformer", "--threads", "0"], "--threads:"),
    (["--models", "transformer", "--threads", str(CORES + 1)], f"more than the {CORES} CPU cores"),
    (["--models", "transformer", "--timeout", "0"], "--timeout:"),
    (["--models", "transformer", "--timeout", "-1"], "--timeout:"),
    (["--models", "transformer", "--rounds", "0"], "--rounds:"),
    (["--models", "transformer", "--param-budget", "lots"], "is not a count"),
    (["--models", "titans-mac", "--param-budget", "1000"], "cannot be sized to a param_budget"),
    (["--models", "transformer", "--modes", "train", "--tasks", "mqar"], "--tasks needs 'accuracy'"),
    (["--models", "transformer", "--modes", "accuracy", "--tasks", "nope"], "unknown task 'nope'"),
    (["--models", "transformer", "--modes", "accuracy", "--tasks", ","], "--tasks ',' lists nothing"),
    (
        ["--models", "transformer", "--modes", "accuracy", "--tasks", "mqar", "--seq-lens", "64"],
        "--train-len",
    ),
    (["--models", "transformer", "--modes", "train", "--train-len", "64"], "the modes have no 'accuracy'"),
    (
        ["--models", "transformer", "--modes", "accuracy", "--tasks", "mqar", "--train-len", "0"],
        "--train-len",
    ),
    (["--models", "transformer", "--modes", "accuracy", "--tasks", "mqar", "--train-len", "7"], "even"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["unknown.toml", "--preset", "paper"], "not both"),
    (["missing.toml"], "does not exist"),
    (["notoml.toml"], "not valid TOML"),
    (["unknown.toml"], "unknown field 'seq_lenz'"),
    (["nomodels.toml"], "field 'models'"),
    (["longwarmup.toml"], "warmup_steps = 300 is not below the step budget of task 'mqar' (steps = 200)"),
    (["--models", "transformer", "--out", "afile"], "is a file, not a directory"),
    (["--models", "transformer", "--out", "afile/run"], "--out: cannot write the folder"),
    (["--models", "transformer", "--out", "/proc/bench-run"], "--out: cannot write the folder"),
    (["--models", "transformer", "--out", "base"], "is not a folder this harness wrote"),
    (["--models", "transformer", "--resume", "nowhere"], "is not a run directory"),
    (["--resume", "corrupt"], "cannot be read"),
    (["--models", "transformer", "--retry-failed"], "--retry-failed re-runs failed cells"),
    (["--models", "transformer", "--name", "bad name!"], "--name: String should match pattern"),
    (["--models", "transformer", "--ray-cpus-per-cell", "0"], "--ray-cpus-per-cell: Input should be greater"),
    (["--models", "transformer", "--ray-cpus-per-cell", "2"], "applies to --executor ray only"),
    (["--models", "transformer", "--repeats", "x"], "--repeats takes an integer, got 'x'"),
    (["--models", "transformer", "--timeout", "soon"], "--timeout takes a number, got 'soon'"),
]
REPORT = [
    (["nowhere"], "no results file"),
    (["empty"], "holds no finished cell"),
    (["garbage"], "holds no finished cell"),
    (["nostatus"], "holds no finished cell"),
    (["afile"], "holds no finished cell"),
]
COMPARE = [
    (["base", "nowhere"], "no results file"),
    (["nowhere", "base"], "no results file"),
    (["base", "empty"], "holds no result records"),
    (["base", "garbage"], "holds no result records"),
    (["base", "other"], "share 0 cell(s)"),
    (["base", "base", "--alpha", "2"], "--alpha must be in (0, 1)"),
    (["base", "base", "--alpha", "0"], "--alpha must be in (0, 1)"),
    (["base", "base", "--threshold", "-1"], "--threshold must be a finite number >= 0"),
    (["base", "base", "--mem-threshold", "-0.5"], "--mem-threshold must be a finite number >= 0"),
    (["base", "base", "--acc-threshold", "-1"], "--acc-threshold must be a finite number >= 0"),
    (["base", "base", "--min-common", "0"], "--min-common must be >= 1"),
    (["base", "base", "--min-common", "3"], "fewer than --min-common 3"),
    (["underpowered", "underpowered"], "cannot reach p < 0.01"),
    (["base", "base", "--markdown", "afile/cmp.md"], "'afile' is a file, not a folder"),
]
VALIDATE = [
    (["--seq-len", "-5"], "--seq-len must be >= 2"),
    (["--seq-len", "0"], "--seq-len must be >= 2"),
    (["--seq-len", "1"], "--seq-len must be >= 2"),
    (["--models", "nope"], "unknown model 'nope'"),
    (["--models", ""], "lists nothing"),
    (["--models", "transformer", "--out", "afile"], "is a file, not a directory"),
    (["--models", "transformer", "--device", "cuda"], "no CUDA device"),
]


def tiny(args: list[str]) -> list[str]:
    """The case's flags with TINY's for what the case does not set itself (a flag given twice is an
    error of its own)."""
    extra = []
    for i, token in enumerate(TINY):
        if token.startswith("--") and token not in args:
            has_value = i + 1 < len(TINY) and not TINY[i + 1].startswith("--")
            extra += TINY[i : i + 2] if has_value else [token]
    return [*extra, *args]


CASES = (
    [(["run", *tiny(args)], m) for args, m in RUN]
    + [(["report", *a], m) for a, m in REPORT]
    + [(["compare", *a], m) for a, m in COMPARE]
    + [(["validate", *a], m) for a, m in VALIDATE]
)


def test_there_are_at_least_sixty_cases_across_all_commands():
    assert len(CASES) >= 60 and {c[0][0] for c in CASES} == {"run", "report", "compare", "validate"}


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:4]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, capsys, argv, message):
    before = snapshot(world)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert snapshot(world) == before  # nothing written, no empty run directory left behind


@pytest.mark.parametrize(
    "argv",
    [["run", "--device", "tpu"], ["compare", "base"], ["nosuchcommand"]],
)
def test_argparse_mistakes_exit_2_with_its_usage(world, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err
