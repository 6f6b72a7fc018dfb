"""The command line's answers to bad input, before anything runs: one line on stderr, exit code 2."""

import pytest

from bench.cli import main
from bench.commands import COMMANDS


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "nope"], "unknown model 'nope'"),
        (["--seq-lens", "0"], "--seq-lens (item 1): Input should be greater than 0"),
        (["--seq-lens", "ten"], "--seq-lens takes comma-separated integers"),
        (["--modes", "fly"], "--modes (item 1): Input should be 'train'"),
        (["--device", "cuda"], "no CUDA device"),
        (
            ["--models", "transformer", "--d-model", "31"],
            "at the sweep's shape (d_model 31, 2 layers): rotary embedding needs an even head",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message, capsys):
    code = main(["run", *args, "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_sweep_file_names_the_field(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text("models = ['transformer']\nseq_lenz = [4]\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "x")]) == 2
    assert "unknown field 'seq_lenz'" in capsys.readouterr().err


def test_list_shows_backends(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "transformer" in out and "sdpa-flash" in out


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_page_prints(command, capsys):
    """`--help` formats every flag's text (argparse reads a bare % in it as a format directive)."""
    with pytest.raises(SystemExit) as done:
        main([*([command] if command else []), "--help"])
    assert done.value.code == 0
    assert "usage: python -m bench" in capsys.readouterr().out
