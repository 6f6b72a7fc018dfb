"""A new kind of scoring is one new file: this module alone adds a scorer (the rank of the right token
among the logits, lower is better), a task that declares it, and the report section its records go to,
then runs a real accuracy cell with them, renders the report, and compares two runs by the new column,
with nothing of the harness edited."""

from __future__ import annotations

from typing import Any

import torch

from bench.analysis.compare import compare_runs
from bench.analysis.report import write_report
from bench.analysis.sections import register_section
from bench.registry import register_task
from bench.results import AccuracyRow, append
from bench.scoring import IGNORE, Column, Examples, Inference, Scorer, Validation, register_scorer
from bench.scoring.base import mean_loss
from bench.tasks.base import Task, TaskConfig
from tests.helpers import accuracy_cell


@register_scorer("test-rank")
class RankScorer(Scorer):
    """The mean rank of the target among the logits (0: the model's first choice); lower is better."""

    section = "test-rank"
    metric = "rank"
    higher_is_better = False
    unit = "fraction"
    stops_early = False

    def _ranks(self, model, held: Examples, infer: Inference) -> torch.Tensor:
        ranks = []
        for rows, logits in infer.batches(model, held.inputs):
            targets = held.targets[rows]
            asked = targets != IGNORE
            right = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1))
            ranks.append((logits > right).sum(-1)[asked].float())
        return torch.cat(ranks)

    def validate(self, model, held: Examples, infer: Inference) -> Validation:
        nll, _, finite = infer.run(model, held)
        return Validation(mean_loss(nll, finite, held), float(self._ranks(model, held, infer).mean()))

    def evaluate(self, model, held: Examples, infer: Inference, train_len: int) -> dict[str, Any]:
        return {"rank": float(self._ranks(model, held, infer).mean()), "n_examples": held.n}

    def columns(self, entries: list[dict[str, Any]], train_len: int) -> dict[str, Column]:
        return {f"rank_T{e['eval_len']}": Column(e.get("rank"), False, "fraction") for e in entries}


class CopyConfig(TaskConfig):
    vocab_size: int = 8


@register_task("test-copy")
class Copy(Task):
    """Predict the token just read (distance 1): a model learns it in a few steps."""

    Config = CopyConfig
    scorer = "test-rank"

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def generate(self, n: int, seq_len: int, seed: int, train_len: int | None = None) -> Examples:
        inputs = torch.randint(
            0, self.vocab_size, (n, seq_len), generator=torch.Generator().manual_seed(seed)
        )
        return Examples(inputs, inputs.clone(), torch.ones_like(inputs))


@register_section("test-rank")
def rank_section(rows: list[AccuracyRow], run_dir) -> list[str]:
    lines = [
        "## Rank of the right token",
        "",
        "| model | " + " | ".join(f"T={n}" for n in rows[0].eval_lens) + " |",
    ]
    for row in rows:
        ranks = [e.get("rank") for e in row.accuracy_by_len]
        lines.append(f"| {row.label} | " + " | ".join(f"{r:.2f}" for r in ranks) + " |")
    (run_dir / "rank.txt").write_text("a section may write its own files\n")
    return lines


def test_a_scorer_task_and_section_from_a_test_module_run_end_to_end(tmp_path):
    from bench.train.cell import run_accuracy_cell

    cell = accuracy_cell("transformer", "test-copy", {}, 16, steps=40, warmup_steps=4, eval_every=20,
                         val_samples=16, eval_samples=16, lr=1e-2)  # fmt: skip
    record = run_accuracy_cell(cell)
    assert record["status"] == "ok" and record["scoring"] == "test-rank" and record["section"] == "test-rank"
    assert set(record["score_columns"]) == {"rank_T16", "rank_T32"}
    assert record["score_columns"]["rank_T16"]["higher_is_better"] is False
    assert record["rank"] == record["rank_T16"] < 1.0  # learned to copy: the right token ranks near first
    assert record["val_loss"] is not None and [s for s, _ in record["val_loss_curve"]] == [20, 32, 40]

    for name, rank in (("base", record["rank_T16"]), ("new", record["rank_T16"] + 0.5)):
        (tmp_path / name).mkdir()
        stored = {"key": cell.key, **cell.model_dump(), **record, "rank_T16": rank}
        append(tmp_path / name / "results.jsonl", stored)
    text = write_report(tmp_path / "base").read_text()
    assert "## Rank of the right token" in text and "| transformer |" in text
    assert "## Accuracy: synthetic recall" not in text
    assert (tmp_path / "base" / "rank.txt").exists()
    # compare knows the new column's direction from the record: a higher rank is a regression
    comp = compare_runs(str(tmp_path / "base"), str(tmp_path / "new"))
    assert [(c.metric, c.verdict) for c in comp.regressions] == [("rank_T16", "regression")]
