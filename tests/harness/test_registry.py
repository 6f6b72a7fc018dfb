import textwrap

import pytest
import torch

import bench
from bench.errors import BenchError
from bench.registry import Registry, model_parameters


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


def _package(tmp_path, monkeypatch, name: str, files: dict[str, str]) -> None:
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    for file, text in files.items():
        (root / file).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtins_are_discovered_and_a_broken_one_is_named(tmp_path, monkeypatch):
    """Every module of a built-in package registers itself on import: nothing to list by hand, and a
    module that fails to import is an error naming it, never a silently missing entry."""
    _package(
        tmp_path,
        monkeypatch,
        "fake_family",
        {
            "good.py": """
        from bench.registry import MODELS_UNDER_TEST
        MODELS_UNDER_TEST.add("found", "tests.plugins.gru:build", reference="torch")
    """
        },
    )
    registry = Registry("model", builtin_packages=("fake_family",))
    monkeypatch.setattr("bench.registry.MODELS_UNDER_TEST", registry, raising=False)
    assert registry.names() == ["found"] and registry.get("found").get("reference") == "torch"

    (tmp_path / "fake_family" / "broken.py").write_text("import no_such_dependency_xyz\n")
    broken = Registry("model", builtin_packages=("fake_family",))
    with pytest.raises(
        BenchError, match="built-in model module 'fake_family.broken' failed to import: .*xyz"
    ):
        broken.names()


def test_a_plugin_with_a_syntax_error_is_named_with_its_line(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, "broken_plugin", {"model.py": "def build(:\n"})
    with pytest.raises(BenchError, match=r"syntax error: .*model.py:1"):
        bench.build("broken_plugin.model:build")


def test_a_family_config_validates_arguments_and_reports_its_parameters():
    with pytest.raises(
        BenchError, match="model 'mamba' does not accept argument.*num_heads.*it accepts: .*d_state"
    ):
        bench.build("mamba", num_heads=2)
    with pytest.raises(BenchError, match="model 'transformer': argument 'n_heads': Input should be greater"):
        bench.build("transformer", n_heads=0)
    assert model_parameters("titans-mac")["segment"] == 512 and "window" not in model_parameters("titans-mac")
    assert model_parameters("tests.plugins.gru:build") == {
        "vocab_size": 256, "d_model": 256, "n_layers": 2, "backend": "auto"
    }  # fmt: skip


def test_a_factory_returning_none_is_an_error():
    with pytest.raises(BenchError, match="returned None"):
        bench.build("tests.plugins.faulty:returns_none")


def test_the_same_name_twice_is_an_error():
    registry = Registry("task")
    registry.add("x", "a:b")
    with pytest.raises(BenchError, match="task name 'x' is registered twice"):
        registry.add("x", "c:d")
