"""State-passing training: the lm task's stream gives each batch row the text right after the row before it,
the training loop carries the model's state from one batch to the next with the gradient cut at the
boundary, and a model or task that cannot do it is named before anything runs."""

from __future__ import annotations

import pytest
import torch

from bench.cli import main
from bench.errors import BenchError
from bench.spec.config import ModelEntry, parse_spec
from bench.tasks import make_task
from bench.train.cell import run_accuracy_cell
from tests.harness.test_lm import lm_cell, write_corpus


def test_the_stream_continues_each_row(tmp_path):
    task = make_task("lm", {"corpus": write_corpus(tmp_path / "c", n=40)})
    stream = task.data.stream
    batches = task.train_stream(3, 16, seed=0)
    first, second = next(batches), next(batches)
    for row in range(3):
        start = int(torch.nonzero((stream.unfold(0, 16, 1) == first.inputs[row].to(stream.dtype)).all(1))[0])
        assert torch.equal(second.inputs[row], stream[start + 16 : start + 32].long())
        assert torch.equal(first.targets[row, :-1], first.inputs[row, 1:])  # targets are the next tokens
        assert second.inputs[row, 0] == first.targets[row, -1]  # the next batch picks up where it ended


def test_a_model_trains_with_its_state_carried(tmp_path, monkeypatch):
    source = write_corpus(tmp_path / "c")
    cell = lm_cell(source, 16, factors=(1, 2))
    cell = cell.model_copy(
        update={"model": "mamba2", "label": "mamba2", "model_args": {"d_state": 8}, "d_model": 32,
                "n_layers": 1, "train": cell.train.model_copy(update={"state_passing": True, "steps": 4})}
    )  # fmt: skip
    carried = []
    from bench.train import loop

    real = loop.detach_state

    def spy(state):
        carried.append(state)
        return real(state)

    monkeypatch.setattr(loop, "detach_state", spy)
    record = run_accuracy_cell(cell)
    assert record["status"] == "ok" and record["steps_run"] == 4
    assert len(carried) == 4  # one state per batch, passed on detached
    assert all(not t.requires_grad for t in torch.utils._pytree.tree_leaves(real(carried[-1]))
               if isinstance(t, torch.Tensor))  # fmt: skip
    plain = cell.model_copy(update={"train": cell.train.model_copy(update={"state_passing": False})})
    assert plain.key != cell.key  # state passing changes what is measured: it is in the key


def test_what_cannot_pass_a_state_is_named(tmp_path, capsys):
    spec = parse_spec(
        {"modes": ["accuracy"], "tasks": ["mqar"], "models": [{"name": "mamba2", "state_passing": True}]},
        "s.toml",
    )
    from bench.spec.cells import expand

    with pytest.raises(BenchError, match="task 'mqar': has no stream of text to carry a state along"):
        expand(spec, [ModelEntry(name="mamba2", state_passing=True)], "cpu")
    (tmp_path / "s.toml").write_text(
        'modes = ["accuracy"]\ntasks = [{ name = "lm", args = { corpus = "'
        + write_corpus(tmp_path / "c", n=40)
        + '" } }]\nmodels = [{ name = "transformer", state_passing = true }]\n[accuracy]\ntrain_len = 16\n'
    )
    assert main(["run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert (
        "model 'transformer' sets state_passing but cannot continue from a state" in capsys.readouterr().err
    )
