"""A folder full of the user's own files, named as this harness names its outputs, given to every command
as its output: every command refuses, names the folder or file and the flag to use instead, and every
file is byte for byte as it was."""

import hashlib
import json

from bench.cli import main
from tests.harness.test_odd_input import SPEC, timing, write_jsonl

TINY = ["--d-model", "16", "--n-layers", "1", "--vocab-size", "32", "--device", "cpu", "--no-progress"]


def fill(folder) -> None:
    folder.mkdir()
    (folder / "REPORT.md").write_text("# what I found\n")
    (folder / "manifest.json").write_text(json.dumps({"project": "mine", "packages": ["numpy"]}))
    (folder / "spec.json").write_text(SPEC)  # a valid sweep spec: --resume reads it before refusing
    write_jsonl(folder / "results.jsonl", [timing("m/prefill/T16"), timing("m/prefill/T32", seq_len=32)])
    (folder / "validate.json").write_text(json.dumps({"rows": []}))
    (folder / "VALIDATE.md").write_text("checked by hand\n")
    (folder / "notes.md").write_text("keep this\n")
    for png in ("throughput.png", "memory.png", "state_size.png"):
        (folder / png).write_bytes(b"\x89PNG\r\n\x1a\n" + png.encode())
    (folder / "sub").mkdir()
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")


def hashes(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


COMMANDS = [
    (["run", *TINY, "--models", "transformer", "--out", "mine"], "--out 'mine'"),
    (["run", *TINY, "--models", "transformer", "--out", "mine", "--no-report"], "--out 'mine'"),
    (["run", "--resume", "mine", "--no-progress"], "--resume 'mine'"),
    (["run", "--resume", "mine", "--retry-failed", "--no-report", "--no-progress"], "--resume 'mine'"),
    (["report", "mine"], "report 'mine'"),
    (["report", "mine", "--out", "mine"], "--out 'mine'"),
    (["report", "mine/results.jsonl", "--out", "mine"], "--out 'mine'"),
    (["compare", "mine", "mine", "--markdown", "mine/REPORT.md"], "--markdown 'mine/REPORT.md'"),
    (["compare", "mine", "mine", "--markdown", "mine/notes.md"], "--markdown 'mine/notes.md'"),
    (["compare", "mine", "mine", "--markdown", "mine/results.jsonl"], "--markdown 'mine/results.jsonl'"),
    (["compare", "mine", "mine", "--markdown", "mine/sub"], "--markdown 'mine/sub'"),
    (["validate", "--models", "transformer", "--out", "mine"], "--out 'mine'"),
    (["validate", "--models", "transformer", "--out", "mine/sub"], "--out 'mine/sub'"),
]


def test_every_command_given_the_users_folder_as_output_leaves_every_file_unchanged(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    fill(tmp_path / "mine")
    before = hashes(tmp_path)
    assert len(before) == 13
    for argv, named in COMMANDS:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and named in err, (argv, err)
        assert "--out" in err or "--markdown" in err, err  # the flag to use instead
        assert hashes(tmp_path) == before, argv
    assert main(["list"]) == 0  # the one command without an output
    assert hashes(tmp_path) == before
