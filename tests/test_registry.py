import textwrap

import pytest
import torch

import bench
from bench.errors import BenchError


def test_list_models_is_sorted_and_has_builtins():
    names = bench.list_models()
    assert names == sorted(names)
    assert "transformer" in names


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(BenchError, match="unknown model 'nope'.*transformer"):
        bench.build("nope")


def test_module_factory_string_builds_a_plugin():
    model = bench.build("tests.plugins.gru:build", vocab_size=11, d_model=8, n_layers=1)
    assert model(torch.randint(0, 11, (2, 5))).shape == (2, 5, 11)
    assert model.backend == "torch"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:build", "cannot import module"),
        ("tests.plugins.gru:missing", "has no attribute 'missing'"),
        ("tests.plugins.gru:", "must look like"),
    ],
)
def test_bad_factory_strings_are_named(spec, message):
    with pytest.raises(BenchError, match=message):
        bench.build(spec)


def test_register_decorator():
    @bench.register("test-only-gru")
    def factory(vocab_size=8, d_model=8, n_layers=1, backend="auto"):
        from tests.plugins.gru import build

        return build(vocab_size, d_model, n_layers, backend)

    assert "test-only-gru" in bench.list_models()
    assert bench.build("test-only-gru").vocab_size == 8


def test_entry_point_plugin(tmp_path, monkeypatch):
    dist = tmp_path / "gru_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gru-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("""
        [titans_bench.models]
        my-gru = tests.plugins.gru:build
        broken = no_such_module_xyz:build
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"my-gru", "broken"} <= set(bench.list_models())
    assert bench.build("my-gru", vocab_size=5, d_model=4, n_layers=1).vocab_size == 5
    with pytest.raises(BenchError, match="plug-in model 'broken'.*failed to load"):
        bench.build("broken")
