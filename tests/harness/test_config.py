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
