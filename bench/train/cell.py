"""Accuracy cells: a fresh model trained from scratch on a task at its training length, then scored on
held-out examples at that length and beyond it by the task's scorer (bench/scoring).

Validation and test examples come from their own seed streams (or, for a corpus, their own documents),
and any training example identical to one of them is dropped, so a model is never scored on what it saw.
At each evaluation length the held-out examples are generated with the training length known, so a task
can stretch its distances beyond it (bench/tasks/base.py). The record holds the training run
(bench/train/loop.py) and the scorer's figures (``Scorer.score_lengths``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.registry import build, model_config
from bench.scoring import Examples, Inference, Scorer
from bench.spec.cells import AccuracyCell
from bench.tasks import Task, make_task
from bench.tasks.base import derive_seed, drop_seen, example_ids
from bench.train.amp import precision
from bench.train.loop import train
from bench.train.optim import non_embedding

MAX_EMPTY_DRAWS = 100


def training_batches(task: Task, cell: AccuracyCell, seen: set[bytes]):
    """() -> the next training batch: fresh seeded examples, none identical to a held-out one; with state
    passing, the task's stream, each row continuing the batch before."""
    if cell.train.state_passing:
        stream = task.train_stream(cell.batch_size, cell.train_len, derive_seed(cell.seed, "train", "stream"))
        return lambda: next(stream)
    draws = 0

    def next_batch() -> Examples:
        nonlocal draws
        for _ in range(MAX_EMPTY_DRAWS):
            seed = derive_seed(cell.seed, "train", draws)
            draws += 1
            batch = drop_seen(task.examples("train", cell.batch_size, cell.train_len, seed), seen)
            if len(batch.inputs):
                return batch
        # a tiny task whose every batch repeated held-out examples
        raise ValueError(f"task {cell.task_label!r} keeps repeating its held-out examples")

    return next_batch


def run_accuracy_cell(cell: AccuracyCell) -> dict[str, Any]:
    """Train and score one (model, task, learning rate, seed) cell; a flat record for the results store."""
    device = torch.device(cell.device)
    if cell.threads:
        torch.set_num_threads(cell.threads)
    task = make_task(cell.task, cell.task_args)
    scorer: Scorer = task.make_scorer()
    torch.manual_seed(cell.seed)
    model = build(cell.model, **cell.build_kwargs())
    infer = Inference(cell.batch_size * cell.train_len, precision(cell.dtype, model, device))
    L, s = cell.train_len, cell.train

    def held_out(split: str, length: int) -> Any:
        n = s.val_samples if split == "validation" else s.eval_samples
        return scorer.held_out(
            split, n, length, derive_seed(cell.seed, split, length), None if length == L else L
        )

    val = held_out("validation", L)
    tests = {L: held_out("test", L)}
    seen = set(example_ids(scorer.examples_of(val))) | set(example_ids(scorer.examples_of(tests[L])))
    record = train(
        model,
        training_batches(task, cell, seen),
        lambda: scorer.validate(model, val, infer),
        s,
        infer.autocast,
        stops_early=scorer.stops_early,
        score_name=scorer.metric,
        higher_is_better=scorer.higher_is_better,
    )

    def test_at(length: int) -> Any:
        if length not in tests:
            tests[length] = held_out("test", length)
        return tests[length]

    start, cpu_start = time.perf_counter(), time.process_time()
    record.update(scorer.score_lengths(model, infer, cell.eval_lens, L, test_at, record["status"] == "ok"))
    record.update(
        train_len=L,
        eval_seconds=time.perf_counter() - start,
        eval_cpu_seconds=time.process_time() - cpu_start,
        state_bytes=model.state_bytes(1, L),
        n_params=model.n_params(),
        n_params_non_embedding=non_embedding(model),
        backend=model.backend,
        model_settings=model_config(cell.model, cell.build_kwargs()),
        torch_threads=torch.get_num_threads(),
    )
    return record
