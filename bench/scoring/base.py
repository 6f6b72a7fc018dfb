"""What a scorer is, and what it scores: a task's examples, and a model called on them.

A task's examples are an :class:`Examples` triple (inputs, targets, distances), each LongTensor [n, T]:

- ``targets[i, t]`` is the token the model must predict after reading ``inputs[i, : t + 1]``, or
  ``IGNORE`` where nothing is asked: loss and scores only ever look at the asked positions;
- ``distances[i, t]`` is, where something is asked, how far back the evidence for the answer lies (each
  task's docstring states its exact definition; a task without evidence to recall puts the position, so
  that scoring by distance is scoring by position), ``NO_DISTANCE`` where nothing is asked.

A :class:`Scorer` turns a trained model and held-out examples into the figures a record keeps: a
validation loss and score during training (``validate``), one entry per evaluation length
(``evaluate``), and the flat result columns other tools compare cell by cell (``columns``), each with its
direction. It also names the report section that renders its records (``section``). The learning-rate
grid is chosen by the validation *loss* (a continuous figure: two runs never tie on it); the score is
reported beside it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from bench.failures import free_cuda, is_oom

IGNORE = -100  # cross_entropy's ignore_index
TRACE_EXAMPLES = 4  # held-out examples a model's trace reads: its per-token paths are slow
NO_DISTANCE = -1  # in ``distances`` where nothing is asked


class Examples(NamedTuple):
    """``n`` examples of length ``T``, each tensor LongTensor [n, T]."""

    inputs: torch.Tensor
    targets: torch.Tensor  # IGNORE where nothing is asked
    distances: torch.Tensor  # evidence-to-question distance where something is asked, NO_DISTANCE elsewhere

    @property
    def n(self) -> int:
        return len(self.inputs)

    def take(self, index) -> Examples:
        """The examples selected by ``index`` (a mask, indices or a slice)."""
        return Examples(self.inputs[index], self.targets[index], self.distances[index])


class Validation(NamedTuple):
    """A model on the validation examples: ``loss``, the mean cross-entropy of the asked targets in nats
    (what the learning rate is chosen by; inf when any logits were not finite), and ``score``, the
    scorer's own figure (accuracy, bits per byte), which may end training early."""

    loss: float
    score: float | None


class Column(NamedTuple):
    """A flat result column: its value, whether higher is better, and its unit ("fraction": compared
    with ``--acc-threshold``; "bits per byte": ``--bpb-threshold``)."""

    value: float | None
    higher_is_better: bool
    unit: str


@dataclass
class Inference:
    """How a scorer calls a model on held-out examples: in batches of at most ``batch_tokens`` tokens,
    under the cell's precision (``autocast``), without gradients (``no_grad``, not ``inference_mode``: a
    memory that learns at test time may run autograd inside), in evaluation mode, logits in float32."""

    batch_tokens: int
    autocast: Callable[[], Any] = contextlib.nullcontext

    @contextlib.contextmanager
    def _eval(self, model) -> Iterator[torch.device]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield next(model.parameters()).device
        finally:
            model.train(was_training)

    def batches(self, model, inputs: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, logits [rows, T, vocab] in float32) for consecutive batches of ``inputs`` [n, T]."""
        size = max(1, self.batch_tokens // max(1, inputs.shape[1]))
        with self._eval(model) as device:
            for start in range(0, len(inputs), size):
                rows = slice(start, start + size)
                with self.autocast():
                    logits = model(inputs[rows].to(device))
                yield rows, logits.float()

    def predict(self, model, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy predictions [n, T] and, per example, whether its logits were all finite (the argmax of
        non-finite logits is meaningless)."""
        predictions, finite = [], []
        for _, logits in self.batches(model, inputs):
            finite.append(torch.isfinite(logits).flatten(1).all(1).cpu())
            predictions.append(logits.argmax(-1).cpu())
        return torch.cat(predictions), torch.cat(finite)

    def run(self, model, examples: Examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass over the examples: the negative log-likelihood of every asked target [n, T] in nats
        (float64; 0 where nothing is asked), the greedy predictions [n, T], and per example whether its
        logits were all finite."""
        nll, predictions, finite = [], [], []
        for rows, logits in self.batches(model, examples.inputs):
            targets = examples.targets[rows].to(logits.device)
            finite.append(torch.isfinite(logits).flatten(1).all(1).cpu())
            loss = F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), reduction="none", ignore_index=IGNORE
            )
            nll.append(loss.view(targets.shape).double().cpu())
            predictions.append(logits.argmax(-1).cpu())
        return torch.cat(nll), torch.cat(predictions), torch.cat(finite)

    def nll(self, model, examples: Examples) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`run` without the predictions: (nll [n, T], finite [n])."""
        nll, _, finite = self.run(model, examples)
        return nll, finite


def mean_loss(nll: torch.Tensor, finite: torch.Tensor, examples: Examples) -> float:
    """Mean nll of the asked targets in nats; inf where any logits were not finite (such a run must never
    win a learning-rate choice)."""
    asked = examples.targets != IGNORE
    if not bool(finite.all()) or not bool(asked.any()):
        return math.inf
    value = float(nll[asked].mean())
    return value if math.isfinite(value) else math.inf


class Scorer:
    """How one kind of task is scored. Subclasses set the class attributes and implement ``validate``,
    ``evaluate`` and ``columns``; one instance serves one cell (``task``: the cell's task)."""

    name: ClassVar[str] = ""  # set by @register_scorer
    section: ClassVar[str] = ""  # the report section that renders its records (bench.analysis.sections)
    metric: ClassVar[str] = "accuracy"  # the headline figure of each evaluation entry and of the record
    higher_is_better: ClassVar[bool] = True  # of ``metric`` and of every column
    unit: ClassVar[str] = "fraction"  # of every column, see Column
    stops_early: ClassVar[bool] = True  # whether a score threshold may end training (a loss has none)

    def __init__(self, task: Any):
        self.task = task

    def held_out(self, split: str, n: int, length: int, seed: int, train_len: int | None) -> Any:
        """Held-out data of one split at one length, as ``validate`` and ``evaluate`` take it."""
        return self.task.examples(split, n, length, seed, train_len)

    def examples_of(self, held: Any) -> Examples:
        """The examples inside what ``held_out`` returned (training batches must never repeat them)."""
        return held

    def validate(self, model, held: Any, infer: Inference) -> Validation:
        raise NotImplementedError

    def evaluate(self, model, held: Any, infer: Inference, train_len: int) -> dict[str, Any]:
        """One ``accuracy_by_len`` entry's figures at the held-out data's length; ``self.metric`` among
        them (None where it cannot be had)."""
        raise NotImplementedError

    def columns(self, entries: list[dict[str, Any]], train_len: int) -> dict[str, Column]:
        """The flat result columns of a record from its ``accuracy_by_len`` entries."""
        raise NotImplementedError

    def diagnostics(self, model, held: Any, infer: Inference, train_len: int) -> dict[str, Any]:
        """Why a model does what it does at this length, where it can say: its mixers' traces by position
        (``trace``: name -> mean per doubling position bucket over a few examples and every block, with
        ``bounds``; see ``Mixer.trace``), and, for a model that learns at test time, the figures with that
        learning switched off (``writes_off``: this scorer's entry with the writes off, e.g. Titans' theta
        forced to 0), which say how much test-time learning contributes."""
        out: dict[str, Any] = {}
        examples = self.examples_of(held)
        trace = getattr(model, "trace", None)
        if callable(trace):
            with infer._eval(model) as device:
                series = trace(examples.inputs[:TRACE_EXAMPLES].to(device))
            if series:
                out["trace"] = bucket_means(series, examples.inputs.shape[1])
        if getattr(model, "has_test_time_writes", False):
            with model.test_time_writes_off():
                entry = self.evaluate(model, held, infer, train_len)
            out["writes_off"] = {k: v for k, v in entry.items() if k not in ("by_document",)}
        return out

    def score_lengths(
        self,
        model,
        infer: Inference,
        eval_lens: list[int],
        train_len: int,
        held_out: Callable[[int], Any],
        trained: bool,
    ) -> dict[str, Any]:
        """Everything a record keeps of the evaluation: an entry per length (``accuracy_by_len``), the
        headline figure at the training length (``self.metric``), the flat columns and what they mean
        (``score_columns``), and how the record is scored and rendered (``scoring``, ``section``). A model
        that did not train is not evaluated; an out-of-memory at one length ends the evaluation there,
        keeping the shorter lengths."""
        entries: list[dict[str, Any]] = []
        for length in eval_lens:
            entry: dict[str, Any] = {"eval_len": length, "state_bytes": model.state_bytes(1, length)}
            if not trained:
                entry[self.metric] = None
            elif any("error" in e for e in entries):
                entry.update(
                    {self.metric: None, "error": "skipped after an out-of-memory at a shorter length"}
                )
            else:
                try:
                    entry.update(self.evaluate(model, held_out(length), infer, train_len))
                except Exception as err:  # noqa: BLE001 - a longer length may not fit; the shorter ones stand
                    if not is_oom(err):
                        raise
                    entry.update({self.metric: None, "error": f"out of memory at eval_len {length}"})
                    free_cuda()
            entries.append(entry)
        if trained and entries and "error" not in entries[-1]:  # the longest length: where failure shows
            try:
                diagnosed = self.diagnostics(model, held_out(entries[-1]["eval_len"]), infer, train_len)
            except Exception as err:  # noqa: BLE001 - a diagnostic must never cost the cell its scores
                if not is_oom(err):
                    raise
                diagnosed = {
                    "error": f"out of memory in the diagnostics at eval_len {entries[-1]['eval_len']}"
                }
                free_cuda()
            entries[-1]["diagnostics"] = diagnosed
        columns = self.columns(entries, train_len)
        at_train = next((e.get(self.metric) for e in entries if e["eval_len"] == train_len), None)
        return {
            "scoring": self.name,
            "section": self.section,
            self.metric: at_train,
            "accuracy_by_len": entries,
            **{name: column.value for name, column in columns.items()},
            "score_columns": {
                name: {"higher_is_better": column.higher_is_better, "unit": column.unit}
                for name, column in columns.items()
            },
        }


def bucket_means(series: dict[str, torch.Tensor], length: int) -> dict[str, Any]:
    """Per-position traces ("block{i}.{name}" -> [B, T]) as one mean per doubling position bucket (bucket
    d holds positions (d/2, d], 1-based) over the examples and every block, NaN positions skipped."""
    from bench.scoring.bins import doubling_bounds

    bounds = doubling_bounds(length + 1)
    bounds = [b for b in bounds if b <= length] + ([length] if bounds[-1] > length else [])
    position = torch.arange(1, length + 1)
    by_name: dict[str, list[torch.Tensor]] = {}
    for key, values in series.items():
        by_name.setdefault(key.split(".", 1)[-1], []).append(values.detach().float().cpu())
    out: dict[str, Any] = {"bounds": bounds}
    for name, blocks in by_name.items():
        stacked = torch.stack(blocks)  # [blocks, B, T]
        means, low = [], 0
        for bound in bounds:
            inside = stacked[..., (position > low) & (position <= bound)]
            finite = inside[torch.isfinite(inside)]
            means.append(float(finite.mean()) if finite.numel() else None)
            low = bound
        out[name] = means
    return out
