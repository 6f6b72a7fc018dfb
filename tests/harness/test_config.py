import pytest

from bench.errors import BenchError
from bench.spec.config import default_spec, load_spec, parse_spec


def write(tmp_path, text):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_full_spec_round_trip(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """
        name = "mine"
        models = ["transformer", {name = "transformer", label = "swa", args = {window = 64}}]
        seq_lens = [128, 512]
        batch_sizes = [1, 2]
        dtypes = ["float32"]
        modes = ["train", "decode"]
        device = "cpu"
        repeats = 3
    """,
        )
    )
    assert [m.display for m in spec.models] == ["transformer", "swa"]
    assert spec.models[1].args == {"window": 64}
    assert spec.seq_lens == [128, 512] and spec.repeats == 3


@pytest.mark.parametrize(
    "text, field",
    [
        ("seq_len = [1]", "unknown field 'seq_len'"),
        ("seq_lens = [0]", "field 'seq_lens.0'"),
        ("seq_lens = [-4]", "field 'seq_lens.0'"),
        ("seq_lens = []", "field 'seq_lens'"),
        ("seq_lens = [64, 64]", "duplicates"),
        ("modes = ['training']", "field 'modes.0'"),
        ("dtypes = ['fp8']", "field 'dtypes.0'"),
        ("device = 'tpu'", "field 'device'"),
        ("models = [{name = 'transformer', windw = 3}]", "unknown field 'models.0.windw'"),
        ("repeats = 'many'", "field 'repeats'"),
    ],
)
def test_bad_fields_are_named(tmp_path, text, field):
    with pytest.raises(BenchError, match=field.replace(".", r"\.")):
        load_spec(write(tmp_path, text))


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(BenchError, match="not valid TOML"):
        load_spec(write(tmp_path, "seq_lens = [1,"))
    with pytest.raises(BenchError, match="does not exist"):
        load_spec(tmp_path / "absent.toml")


def test_packaged_defaults_validate():
    assert default_spec("cpu").dtypes == ["float32"]
    cuda = default_spec("cuda")
    assert cuda.dtypes == ["bfloat16"] and min(cuda.seq_lens) == 1024 and max(cuda.seq_lens) == 16384


def test_one_line_error():
    with pytest.raises(BenchError) as info:
        parse_spec({"seq_lens": [0, -1], "bogus": 1}, "x.toml")
    assert "\n" not in str(info.value) and "more" in str(info.value)


def test_every_sweep_flag_comes_from_one_schema_declaration():
    """Walk the schema and the parser: every field that declares a flag has exactly that option, with the
    field's description as its help; every other option of `run` is a command option, not a sweep field."""
    import argparse

    from bench.commands import run
    from bench.spec.config import SweepSpec
    from bench.spec.flags import sweep_flags

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    options = {o: a for a in parser._actions for o in a.option_strings}
    from pydantic import BaseModel

    declared = {}

    def walk(model, prefix):  # the sweep's fields and its tables' ([accuracy], [slurm])
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            table = field.annotation if isinstance(field.annotation, type) else None
            if "flag" in extra:
                declared[extra["flag"]] = (prefix + name, field.description)
            elif table is not None and issubclass(table, BaseModel):
                walk(table, f"{prefix}{name}.")

    walk(SweepSpec, "")
    assert len(declared) >= 20 and {f.option for f in sweep_flags()} == set(declared)
    for option, (name, description) in declared.items():
        action = options[option]
        # the help as argparse prints it (a % in a description is escaped as %%)
        assert action.help % {} == description and action.dest == "sweep__" + name.replace(".", "__")
    command_options = {o for o in options if o not in declared}
    assert command_options == {
        "-h", "--help", "--preset", "--resume", "--retry-failed", "--strict", "--no-progress", "--no-report",
    }  # fmt: skip


def test_a_flag_value_is_checked_once_by_the_schema_and_named_as_typed(tmp_path, capsys):
    from bench.cli import main

    for argv, message in (
        (
            ["--train-len", "0", "--modes", "accuracy", "--tasks", "mqar"],
            "--train-len: Input should be greater",
        ),
        (["--seq-lens", "8,0"], "--seq-lens (item 2): Input should be greater than 0"),
        (["--timeout", "-3"], "--timeout: Input should be greater than 0"),
    ):
        assert main(["run", *argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {message}" + err.split(message, 1)[1] and err.count("\n") == 1
