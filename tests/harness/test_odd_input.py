"""Odd input in the six groups of harm a new user ran into, as one table: files the user wrote that a
command must not overwrite; commands that checked nothing and must not pass; a plug-in's own errors,
named as its; ordinary bad input that must not end as an internal error; wrong input that must not be
accepted silently; and messages that must name what the user wrote.

Each case asserts its exit code, the stderr line that names the flag or file the user gave (the only
line, for an error), and, where nothing should be written, that the folder is byte for byte as before.
"""

import hashlib
import json

import pytest

from bench.cli import main
from bench.results.outputs import MARKER
from bench.spec.config import SweepSpec

TINY = ["--d-model", "16", "--n-layers", "1", "--vocab-size", "32", "--device", "cpu", "--no-progress"]
M = "tests.plugins.misbehaving:"


def timing(key: str, status: str = "ok", samples=(0.010, 0.011, 0.012, 0.010, 0.011, 0.012), **extra) -> dict:
    """A timing record as a sweep stores it (every field a report reads)."""
    record = {"key": key, "label": "m", "model": "m", "mode": "prefill", "seq_len": 16, "batch_size": 1,
              "dtype": "float32", "device": "cpu", "d_model": 16, "n_layers": 1, "vocab_size": 32,
              "status": status, "wall_s": 1.0}  # fmt: skip
    if status == "ok":
        record.update(samples_s=list(samples), median_s=0.011, iqr_s=0.001, tokens_per_s=1500.0,
                      peak_mem_bytes=2**20, state_bytes=64, backend="torch")  # fmt: skip
    else:
        record["error"] = "simulated"
    return {**record, **extra}


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


SPEC = SweepSpec(
    models=[{"name": "transformer"}], d_model=16, n_layers=1, vocab_size=32, seq_lens=[16], modes=["prefill"],
    device="cpu",
).model_dump_json(indent=2)  # fmt: skip


def own_run(folder, *foreign: str) -> None:
    """A run folder as this harness leaves it, plus ``foreign`` files the user put in it later."""
    folder.mkdir()
    (folder / "spec.json").write_text(SPEC)
    manifest = {"created_at": "2026-01-01T00:00:00+00:00", "command": "python -m bench run", "packages": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    write_jsonl(folder / "results.jsonl", [timing("m/prefill/T16")])
    files = ["manifest.json", "results.jsonl", "spec.json"]
    (folder / MARKER).write_text(json.dumps({"written_by": "python -m bench", "files": files}))
    for name in foreign:
        (folder / name).write_text("the user's own\n")


def users_folder(folder) -> None:
    """A folder of the user's own files, named as this harness names its outputs."""
    folder.mkdir()
    (folder / "REPORT.md").write_text("# my notes\n")
    (folder / "manifest.json").write_text(json.dumps({"author": "me"}))
    (folder / "memory.png").write_bytes(b"\x89PNG my plot")
    (folder / "validate.json").write_text(json.dumps({"mine": True}))
    (folder / "VALIDATE.md").write_text("my validation\n")
    (folder / "notes.md").write_text("keep me\n")
    (folder / "spec.json").write_text(SPEC)
    write_jsonl(folder / "results.jsonl", [timing("m/prefill/T16")])


FILES = {
    "bin.toml": b"\xff\xfe\x00binary",
    "bom.toml": b'\xef\xbb\xbfname = "x"\n',
    "empty.toml": b"",
    "comment.toml": b"# only a comment\n",
    "inf.toml": b"timeout_s = inf\n",
    "nanlr.toml": b"[accuracy]\nlr = nan\n",
    "infcap.toml": b"[accuracy]\nmax_seconds = inf\n",
    "infctx.toml": b"[accuracy]\nhybrid_context = inf\n",
    "nanlrs.toml": b"[accuracy]\nlrs = [nan]\n",
    "infbudget.toml": b"param_budget = inf\n",
    "nanwd.toml": b"[accuracy]\nweight_decay = nan\n",
    "dupdtypes.toml": b'dtypes = ["float32", "float32"]\n',
    "boolseq.toml": b"seq_lens = [true]\n",
    "booldm.toml": b"d_model = true\n",
    "halfdm.toml": b"d_model = 64.5\n",
    "strlen.toml": b'seq_lens = ["16"]\n',
    "ticklabel.toml": b'models = [{name = "transformer", label = "a`b"}]\n',
    "pipetask.toml": b'modes = ["accuracy"]\nmodels = ["transformer"]\n'
    b'tasks = [{name = "mqar", label = "x|y"}]\n',
    "notes.md": b"my own notes\n",
    "afile": b"not a directory\n",
}


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.py").mkdir()
    (tmp_path / "emptydir").mkdir()
    users_folder(tmp_path / "mine")
    own_run(tmp_path / "own")
    own_run(tmp_path / "own_foreign", "REPORT.md")
    own_run(tmp_path / "own_binspec")
    (tmp_path / "own_binspec" / "spec.json").write_bytes(b"\xff\xfe{")
    own_run(tmp_path / "own_listspec")
    (tmp_path / "own_listspec" / "spec.json").write_text("[1, 2]")
    write_jsonl(tmp_path / "A.jsonl", [timing("k1"), timing("k2")])
    write_jsonl(tmp_path / "B.jsonl", [timing("k1"), timing("k2")])
    for name, status in (("failed_a", "crashed"), ("failed_b", "oom")):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "results.jsonl", [timing("k1", status), timing("k2", "timeout")])
    write_jsonl(tmp_path / "sampled.jsonl", [timing("k1")])
    write_jsonl(tmp_path / "unsampled.jsonl", [timing("k1", samples_s=None)])
    write_jsonl(tmp_path / "oldver.jsonl", [{k: v for k, v in timing("k1").items() if k != "seq_len"}])
    write_jsonl(tmp_path / "wrongtype.jsonl", [timing("k1", seq_len="long")])
    write_jsonl(tmp_path / "strsamples.jsonl", [timing("k1", samples_s=["fast", "slow"])])
    write_jsonl(tmp_path / "listkey.jsonl", [{**timing("k1"), "key": ["k", 1]}])
    write_jsonl(tmp_path / "badcolumns.jsonl", [timing("k1", score_columns=[1, 2])])
    return tmp_path


def tree(root) -> dict[str, str]:
    """Every file and folder under ``root``: its content's hash, or "dir"."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def run_(*args):
    return ["run", *TINY, *args]


def case(argv: list[str], text: str, code: int = 2, unchanged: bool = True) -> tuple:
    """``argv`` exits with ``code``, a line of stderr (of stdout, for a success) holds ``text``, and,
    where ``unchanged``, nothing is written."""
    return argv, code, text, unchanged


OVERWRITE = [
    case(run_("--models", "transformer", "--out", "mine"), "--out 'mine' is not a folder this harness wrote"),
    case(run_("--models", "transformer", "--out", "adir/../mine"), "is not a folder this harness wrote"),
    case(run_("--models", "transformer", "--out", "own"), "own already holds results; use --resume own"),
    case(run_("--models", "transformer", "--out", "own_foreign"), "'own_foreign/REPORT.md' was not written"),
    case(["run", "--resume", "mine", "--no-progress"], "--resume 'mine' is not a folder this harness wrote"),
    case(["run", "--resume", "own", "--out", "elsewhere"], "--out 'elsewhere' is not the run being resumed"),
    case(["run", "--resume", "own_foreign", "--no-progress"], "'own_foreign/REPORT.md' was not written"),
    case(["report", "mine"], "report 'mine' is not a folder this harness wrote"),
    case(["report", "mine", "--out", "mine"], "--out 'mine' is not a folder this harness wrote"),
    case(["report", "own", "--out", "mine"], "--out 'mine' is not a folder this harness wrote"),
    case(["report", "own_foreign"], "'own_foreign/REPORT.md' was not written by this harness"),
    case(["report", "A.jsonl", "--out", "afile"], "--out 'afile' is a file, not a directory"),
    case(["compare", "A.jsonl", "B.jsonl", "--markdown", "A.jsonl"], "--markdown 'A.jsonl' is BASE"),
    case(["compare", "A.jsonl", "B.jsonl", "--markdown", "./B.jsonl"], "--markdown './B.jsonl' is NEW"),
    case(["compare", "own", "own", "--markdown", "own/results.jsonl"], "is BASE's results file"),
    case(
        ["compare", "A.jsonl", "B.jsonl", "--markdown", "notes.md"],
        "--markdown 'notes.md' exists and was not",
    ),
    case(["compare", "A.jsonl", "B.jsonl", "--markdown", "adir"], "--markdown 'adir' is a directory"),
    case(
        ["validate", "--models", "transformer", "--out", "mine"], "--out 'mine' is not a folder this harness"
    ),
    case(["validate", "--models", "transformer", "--out", "afile"], "--out 'afile' is a file"),
]
NOTHING_CHECKED = [
    case(["compare", "failed_a", "failed_b"], "nothing was compared: none of the 2 cell(s)"),
    case(
        ["compare", "sampled.jsonl", "unsampled.jsonl"], "no timing samples to compare, e.g. k1 (none in NEW)"
    ),
    case(["compare", "unsampled.jsonl", "sampled.jsonl"], "k1 (none in BASE)"),
    case(["compare", "unsampled.jsonl", "unsampled.jsonl"], "k1 (none in BASE and NEW)"),
    case(["compare", "A.jsonl", "B.jsonl", "--threshold", "nan"], "--threshold must be a finite number"),
    case(["compare", "A.jsonl", "B.jsonl", "--threshold", "inf"], "--threshold must be a finite number"),
    case(["compare", "A.jsonl", "B.jsonl", "--mem-threshold", "nan"], "--mem-threshold must be a finite"),
    case(["compare", "A.jsonl", "B.jsonl", "--mem-floor", "nan"], "--mem-floor must be a finite number"),
    case(["compare", "A.jsonl", "B.jsonl", "--mem-floor=-inf"], "--mem-floor must be a finite number"),
    case(["compare", "A.jsonl", "B.jsonl", "--acc-threshold", "nan"], "--acc-threshold must be a finite"),
    case(["compare", "A.jsonl", "B.jsonl", "--bpb-threshold", "nan"], "--bpb-threshold must be a finite"),
    case(["compare", "A.jsonl", "B.jsonl", "--bpb-threshold", "-1"], "--bpb-threshold must be a finite"),
    case(["compare", "A.jsonl", "B.jsonl", "--alpha", "nan"], "--alpha must be in (0, 1)"),
    case(["validate", "--models", M + "no_reference"], f"--models '{M}no_reference' declares no reference"),
    case(["validate", "--models", M + "no_backends"], f"--models '{M}no_backends' declares no backends"),
    case(run_("--models", "transformer", "--timeout", "nan"), "--timeout: Input should be a finite number"),
    case(run_("--models", "transformer", "--timeout", "inf"), "--timeout: Input should be a finite number"),
    case(run_("--models", "transformer", "--param-budget", "inf"), "--param-budget: 'inf' is not a finite"),
    case(run_("--models", "transformer", "--param-budget", "nan"), "--param-budget: 'nan' is not a finite"),
    case(["run", "inf.toml"], "inf.toml: field 'timeout_s': Input should be a finite number"),
    case(["run", "nanlr.toml"], "nanlr.toml: field 'accuracy.lr': Input should be a finite number"),
    case(["run", "infcap.toml"], "infcap.toml: field 'accuracy.max_seconds'"),
    case(["run", "infctx.toml"], "infctx.toml: field 'accuracy.hybrid_context"),
    case(["run", "nanlrs.toml"], "nanlrs.toml: field 'accuracy.lrs.0'"),
    case(["run", "infbudget.toml"], "infbudget.toml: field 'param_budget'"),
    case(["run", "nanwd.toml"], "nanwd.toml: field 'accuracy.weight_decay'"),
]
PLUGIN = [
    case(run_("--models", M + "factory_raises"), "its factory raised RuntimeError: the plug-in's own bug"),
    case(run_("--models", "mine=" + M + "factory_raises"), f"model 'mine ({M}factory_raises)' cannot be"),
    case(
        run_("--models", M + "forward_raises", "--modes", "train", "--seq-lens", "8"),
        f"model '{M}forward_raises': forward raised KeyError",
    ),
    case(
        run_("--models", M + "prefill_raises", "--modes", "prefill", "--seq-lens", "8"),
        "prefill raised ZeroDivisionError: division by zero",
    ),
    case(
        run_("--models", M + "step_raises", "--modes", "decode", "--seq-lens", "8"),
        "step raised IndexError: state index out of range",
    ),
    case(
        run_("--models", M + "wrong_forward", "--modes", "train", "--seq-lens", "8"),
        "forward returned logits of shape [2, 7, 32]; expected [2, 8, 32]",
    ),
    case(
        run_("--models", M + "wrong_prefill", "--modes", "prefill", "--seq-lens", "8"),
        "prefill returned logits of shape [2, 8, 32]; expected [2, 32]",
    ),
    case(
        run_("--models", M + "wrong_step", "--modes", "decode", "--seq-lens", "8"),
        "step returned logits of shape [2, 1]; expected [2, 32]",
    ),
    case(
        run_(
            "--models",
            M + "wrong_step",
            "--modes",
            "prefill",
            "--seq-lens",
            "8",
            "--out",
            "ok-prefill",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--no-report",
        ),
        "results: ok-prefill",
        code=0,
        unchanged=False,
    ),
    case(
        ["validate", "--models", M + "forward_raises", "--seq-len", "8"],
        "forward raised KeyError: 'no such weight' (reference backend 'torch')",
    ),
    case(
        ["validate", "--models", M + "reference_factory_raises", "--seq-len", "8"],
        f"model '{M}reference_factory_raises': its factory raised RuntimeError",
    ),
    case(
        run_(
            "--models",
            M + "reads_a_value",
            "--modes",
            "prefill",
            "--seq-lens",
            "8",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--out",
            "meta-run",
            "--no-report",
        ),
        f"note: model '{M}reads_a_value' cannot be built on the meta device",
        code=0,
        unchanged=False,
    ),
    case(
        run_(
            "--models",
            "tests.plugins.faulty:fail",
            "--modes",
            "prefill",
            "--seq-lens",
            "64",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--out",
            "crash-run",
            "--no-report",
        ),
        "cell tests.plugins.faulty:fail prefill T=64: crashed: model 'tests.plugins.faulty:fail': "
        "prefill raised RuntimeError: simulated kernel failure",
        code=1,
        unchanged=False,
    ),
]
INTERNAL = [
    case(["run", "bin.toml"], "bin.toml: not UTF-8 text (byte 0xff at offset 0)"),
    case(["run", "--resume", "own_binspec"], "--resume: 'own_binspec/spec.json' cannot be read"),
    case(["run", "--resume", "own_listspec"], "own_listspec/spec.json: Input should be a valid dictionary"),
    case(["report", "oldver.jsonl"], "'oldver.jsonl': cell 'k1': field 'seq_len': Field required"),
    case(["report", "wrongtype.jsonl"], "'wrongtype.jsonl': cell 'k1': field 'seq_len'"),
    case(["report", "strsamples.jsonl"], "'strsamples.jsonl': cell 'k1': field 'samples_s'"),
    case(["report", "listkey.jsonl"], "'listkey.jsonl': a record's field 'key' is list"),
    case(["compare", "strsamples.jsonl", "A.jsonl"], "'strsamples.jsonl': cell 'k1': field 'samples_s'"),
    case(["compare", "A.jsonl", "listkey.jsonl"], "'listkey.jsonl': a record's field 'key' is list"),
    case(["compare", "badcolumns.jsonl", "A.jsonl"], "cell 'k1': field 'score_columns'"),
    case(
        ["validate", "--models", "transformer", "--out", "/proc/bench-validate"],
        "--out: cannot write the folder '/proc/bench-validate'",
    ),
    case(
        ["validate", "--models", "transformer", "--out", "afile/v"],
        "--out: cannot write the folder 'afile/v'",
    ),
    case(
        ["report", "own", "--out", "/proc/bench-report"],
        "--out: cannot write the folder '/proc/bench-report'",
    ),
    case(
        ["compare", "A.jsonl", "B.jsonl", "--markdown", "nowhere/cmp.md"],
        "the folder 'nowhere' does not exist",
    ),
]
ACCEPTED = [
    case(["run", "empty.toml"], "empty.toml sets nothing"),
    case(["run", "comment.toml"], "comment.toml sets nothing"),
    case(["run", "dupdtypes.toml"], "dupdtypes.toml: field 'dtypes': contains duplicates"),
    case(run_("--models", "transformer", "--dtypes", "float32,float32"), "--dtypes: contains duplicates"),
    case(
        run_("--models", "transformer", "--seq-lens", "16", "--seq-lens", "32"),
        "--seq-lens given twice ('16', then '32')",
    ),
    case(run_("--models", "transformer", "--warmup", "20", "--warmup", "1"), "--warmup given twice"),
    case(
        run_("--models", "transformer", "--models", "mamba"),
        "--models given twice ('transformer', then 'mamba')",
    ),
    case(
        ["compare", "A.jsonl", "B.jsonl", "--threshold", "0.1", "--threshold", "0.5"],
        "--threshold given twice",
    ),
    case(["validate", "--seq-len", "8", "--seq-len", "9"], "--seq-len given twice"),
    case(["run", "boolseq.toml"], "boolseq.toml: field 'seq_lens.0': Input should be a valid integer"),
    case(["run", "booldm.toml"], "booldm.toml: field 'd_model': Input should be a valid integer"),
    case(["run", "halfdm.toml"], "halfdm.toml: field 'd_model'"),
    case(["run", "strlen.toml"], "strlen.toml: field 'seq_lens.0'"),
    case(run_("--models", "a|b=transformer"), "--models (item 1): label 'a|b' contains '|'"),
    case(["run", "ticklabel.toml"], "ticklabel.toml: field 'models.0.label': label 'a`b' contains '`'"),
    case(["run", "pipetask.toml"], "pipetask.toml: field 'tasks.0.label'"),
]
MESSAGES = [
    case(run_("--models", "transformer", "--warmup", "20"), "--warmup 20 is above 8, the most warm-up calls"),
    case(run_("--models", "transformer", "--threads", "4096"), "--threads 4096 is more than the"),
    case(["run", "--resume", "own", "--timeout", "5", "--no-progress"], "--timeout was 900.0, now 5.0"),
    case(["run", "--resume", "own", "--repeats", "3", "--no-progress"], "--repeats was 5, now 3"),
    case(["run", "bom.toml"], "bom.toml: starts with a UTF-8 byte-order mark (BOM)"),
    case(["run", "adir"], "sweep file 'adir' is a directory, not a file"),
    case(run_("--models", "adir.py:build"), "plug-in file 'adir.py' is a directory"),
    case(["report", "emptydir"], "no results file at 'emptydir/results.jsonl'"),
    case(["report", "A.jsonl"], "A-report/REPORT.md", code=0, unchanged=False),
]
GROUPS = {
    "overwrite": OVERWRITE,
    "nothing-checked": NOTHING_CHECKED,
    "plugin": PLUGIN,
    "internal": INTERNAL,
    "accepted": ACCEPTED,
    "messages": MESSAGES,
}
CASES = [(group, *case) for group, cases in GROUPS.items() for case in cases]


def test_the_table_has_sixty_cases_beyond_the_first_table_across_six_groups():
    assert len(CASES) >= 60 and all(len(cases) >= 5 for cases in GROUPS.values())


def case_id(group: str, argv: list[str]) -> str:
    shown = [argv[0], *argv[1 + len(TINY) :]] if argv[1 : 1 + len(TINY)] == TINY else argv
    return f"{group}: {' '.join(shown)}"


@pytest.mark.parametrize(
    "group, argv, code, text, unchanged", CASES, ids=[case_id(c[0], c[1]) for c in CASES]
)
def test_odd_input(world, capsys, group, argv, code, text, unchanged):
    before = tree(world)
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == code, err
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err
    lines = (err if code != 0 or text.startswith("note:") else out).splitlines()
    assert any(text in line for line in lines), (text, err)
    if unchanged:
        assert tree(world) == before
