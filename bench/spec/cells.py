"""A cell is one measurement, and the sweep's unit of work, resume and comparison. Two kinds:

- ``TimingCell``: model x seq_len x batch x dtype x mode (train, prefill or decode) on one device;
- ``AccuracyCell``: model x task x learning rate x seed, a model trained from scratch at ``train_len``
  and evaluated at ``eval_lens``.

``Cell`` is their tagged union (the tag is ``mode``), so code dispatches on the type, never on a string.
A cell's ``key`` names everything that changes what is measured; two runs are compared cell by cell on it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from bench.registry import context_argument
from bench.spec.config import (
    ACCURACY_MODE,
    AccuracySettings,
    Calibration,
    ModelEntry,
    SweepSpec,
    TrainSettings,
)
from bench.spec.sizing import size_for_budget, sized
from bench.tasks import make_task

SWA_SUFFIX = "-swa"  # the label of the sliding-window control: "transformer-swa"


class CellBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Identity: what is measured.
    model: str
    label: str
    model_args: dict[str, Any] = Field(default_factory=dict)
    vocab_size: int
    d_model: int
    n_layers: int
    batch_size: int
    dtype: str
    device: str
    # How it is measured: may differ between two runs that are compared.
    threads: int | None = None
    seed: int = 0

    COMMON_IDENTITY: ClassVar[tuple[str, ...]] = (
        "model",
        "label",
        "model_args",
        "vocab_size",
        "d_model",
        "n_layers",
        "batch_size",
        "dtype",
        "mode",
        "device",
    )

    def identity(self) -> tuple[str, ...]:
        """The fields that change what is measured: the cell's key hashes them."""
        return self.COMMON_IDENTITY

    @property
    def length(self) -> int:
        """The sequence length that orders a group's cells (after an OOM the longer ones are skipped)."""
        raise NotImplementedError

    def _key(self, middle: str) -> str:
        """Stable across runs and processes: a readable prefix and a hash of the full identity."""
        identity = {name: getattr(self, name) for name in self.identity()}
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.label}/{middle}T{self.length}/B{self.batch_size}/{self.dtype}/{self.device}/{digest}"

    def build_kwargs(self) -> dict[str, Any]:
        return dict(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, **self.model_args
        )


class TimingCell(CellBase):
    """Throughput and memory of one model at one shape, in one mode."""

    mode: Literal["train", "prefill", "decode"]
    seq_len: int
    repeats: int = 5
    warmup: int = 2
    warmup_max: int = 12
    decode_tokens: int = 32
    compile: bool = False

    def identity(self) -> tuple[str, ...]:
        # The thread count changes what a CPU cell measures, the decoded tokens what a decode cell does;
        # a compiled model is another program. (Uncompiled keys stay what they were before `compile`.)
        return (
            *self.COMMON_IDENTITY,
            "seq_len",
            "threads",
            *(("decode_tokens",) if self.mode == "decode" else ()),
            *(("compile",) if self.compile else ()),
        )

    @property
    def length(self) -> int:
        return self.seq_len

    @property
    def key(self) -> str:
        return self._key(f"{self.mode}/")

    @property
    def group(self) -> tuple:
        """Cells that differ only in seq_len: after an OOM at one length the longer ones are skipped."""
        return (self.label, self.mode, self.batch_size, self.dtype, self.device)

    @property
    def describe(self) -> str:
        return f"{self.label} {self.mode} T={self.seq_len}"


class AccuracyCell(CellBase):
    """A model trained from scratch on a task at ``train_len``, then scored at each of ``eval_lens``. The
    seed (of the model's initialisation and of the data) and the learning rate (``train.lr``) are part of
    the key: the runs of a grid over seeds and learning rates are all kept, side by side."""

    mode: Literal["accuracy"] = "accuracy"
    train_len: int
    task: str
    task_label: str
    task_args: dict[str, Any] = Field(default_factory=dict)
    eval_lens: list[int] = Field(default_factory=list)
    train: TrainSettings
    # How reports present it; not part of the identity: a smoke test ranks nothing, the attention context
    # the model's arguments give it, in words ("window 8", "full", None for no attention), and whether its
    # learning rate is the sweep's grid or an extension of it (bench/results/lr_choice.py).
    smoke_test: bool = False
    context: str | None = None
    lr_origin: Literal["grid", "extended"] = "grid"
    calibration: Calibration | None = None  # the sweep's calibration model and its bar, for the report

    def identity(self) -> tuple[str, ...]:
        return (
            *self.COMMON_IDENTITY,
            "train_len",
            "task",
            "task_label",
            "task_args",
            "eval_lens",
            "train",
            "seed",
        )

    @property
    def length(self) -> int:
        return self.train_len

    @property
    def key(self) -> str:
        return self._key(f"accuracy/{self.task_label}/")

    @property
    def group(self) -> tuple:
        return (self.label, self.mode, self.task_label, self.batch_size, self.dtype, self.device)

    @property
    def describe(self) -> str:
        return f"{self.label} {self.task_label} T={self.train_len}"


Cell = Annotated[TimingCell | AccuracyCell, Field(discriminator="mode")]
_CELL = TypeAdapter(Cell)


def cell_from_json(text: str) -> TimingCell | AccuracyCell:
    """A cell back from ``cell.model_dump_json()`` (how cells travel to worker processes)."""
    return _CELL.validate_json(text)


def expand(spec: SweepSpec, models: list[ModelEntry], device: str) -> list[TimingCell | AccuracyCell]:
    """Every cell of the sweep, ordered so each model's lengths run in ascending order."""
    dtypes = spec.dtypes or (["bfloat16"] if device == "cuda" else ["float32"])
    cells: list[TimingCell | AccuracyCell] = []
    for entry in models:
        args = entry.args
        if spec.param_budget:
            shape = dict(vocab_size=spec.vocab_size, d_model=spec.d_model, n_layers=spec.n_layers)
            args = {
                **args,
                **size_for_budget(entry.name, entry.display, {**shape, **args}, spec.param_budget),
            }
        for mode in spec.modes:
            if mode == ACCURACY_MODE:
                cells += accuracy_cells(spec, entry, device)
                continue
            for batch in spec.batch_sizes:
                for dtype in dtypes:
                    for seq_len in spec.lengths(mode):
                        cells.append(
                            TimingCell(
                                model=entry.name,
                                label=entry.display,
                                model_args=args,
                                vocab_size=spec.vocab_size,
                                d_model=spec.d_model,
                                n_layers=spec.n_layers,
                                seq_len=seq_len,
                                batch_size=batch,
                                dtype=dtype,
                                mode=mode,
                                device=device,
                                repeats=spec.repeats,
                                warmup=spec.warmup,
                                warmup_max=spec.warmup_max,
                                decode_tokens=spec.decode_tokens,
                                compile=spec.compile,
                                threads=spec.threads,
                                seed=spec.seed,
                            )
                        )
    return cells


def hybrid_args(entry: ModelEntry, context: int | None) -> dict[str, Any]:
    """The model's arguments with its attention context (the argument its family declares, e.g. a
    window or a segment) set to ``context`` where it bounds the context by default (the hybrids; not a
    full-attention model, whose default is None) and the sweep did not set it."""
    args = dict(entry.args)
    declared = context_argument(entry.name)
    if context is None or declared is None:
        return args
    name, default = declared
    if default not in (None, inspect.Parameter.empty) and name not in args:
        args[name] = context
    return args


def context_text(entry: ModelEntry, args: dict[str, Any]) -> str | None:
    """What the model's attention can see with these arguments, in words: "window 8", "full" (its context
    argument is None: the whole sequence), or None for a model that declares no attention context."""
    declared = context_argument(entry.name)
    if declared is None:
        return None
    name, default = declared
    value = args.get(name, default)
    return "full" if value is None else f"{name} {value}"


def swa_control(spec: SweepSpec, entry: ModelEntry) -> ModelEntry | None:
    """The bounded-attention control of a full-attention entry (its family's context argument defaults to
    None: the plain Transformer, whose control is sliding-window attention), when the sweep asks for one
    (``swa_control``; by default when the sweep lists no models) and the hybrids have a context to match
    (``hybrid_context`` not None). Its context is resolved per task, like the hybrids'."""
    acc = spec.accuracy
    wanted = spec.models is None if acc.swa_control is None else acc.swa_control
    declared = context_argument(entry.name)
    if not wanted or acc.hybrid_context is None or declared is None:
        return None
    name, default = declared
    if default is not None or name in entry.args:
        return None
    label = entry.display + SWA_SUFFIX
    if label in {m.display for m in spec.models or []}:  # listed by hand already
        return None
    return ModelEntry(name=entry.name, label=label, args=entry.args)


def accuracy_cells(spec: SweepSpec, entry: ModelEntry, device: str) -> list[AccuracyCell]:
    """One cell per task, learning rate and seed for this model (and its bounded-attention control, see
    :func:`swa_control`). The model is built with the task's vocabulary (a task defines its tokens),
    and the sweep's width and depth unless the [accuracy] table sets its own; the hybrids' attention
    context is ``hybrid_context`` of each task's training length. A task's pinned arguments (a corpus's
    fingerprint) join its ``task_args``; a task whose scorer never stops early (a loss) trains without a
    threshold."""
    acc = spec.accuracy
    dtype = acc.dtype or ("bfloat16" if device == "cuda" else "float32")
    control = swa_control(spec, entry)
    cells = []
    for model in [entry] if control is None else [entry, control]:
        for job in spec.tasks:
            task = make_task(job.name, job.args)
            task_args = {**job.args, **task.pinned_args()}  # e.g. a corpus's fingerprint: in the key
            train_len = job.train_len or acc.train_len
            eval_lens = sorted(train_len * f for f in acc.eval_factors)
            for length in (train_len, *eval_lens):
                task.check_len(length)
            context = acc.context_tokens(train_len)
            args = hybrid_args(model, context)
            if model is control:
                args[context_argument(model.name)[0]] = context
            d_model, n_layers = acc.d_model or spec.d_model, acc.n_layers or spec.n_layers
            if acc.param_budget:  # parameter-matched: each model's width knob sized at this shape
                shape = dict(vocab_size=task.vocab_size, d_model=d_model, n_layers=n_layers)
                args = {**args, **sized(model.name, model.display, {**shape, **args}, acc.param_budget)}
            scorer = task.make_scorer()
            if model.state_passing:
                task.train_stream(1, train_len, 0)  # a task without a stream says so here
            for lr in acc.lrs or [acc.lr]:
                train = train_settings(acc, lr).model_copy(update={"state_passing": model.state_passing})
                if job.steps is not None:
                    train = train.model_copy(update={"steps": job.steps})
                if not scorer.stops_early:  # a score threshold means nothing for a loss: the whole budget
                    train = train.model_copy(update={"threshold": None})
                for seed in acc.seeds or [spec.seed]:
                    cells.append(
                        AccuracyCell(
                            model=model.name,
                            label=model.display,
                            model_args=args,
                            vocab_size=task.vocab_size,
                            d_model=d_model,
                            n_layers=n_layers,
                            train_len=train_len,
                            batch_size=acc.batch_size,
                            dtype=dtype,
                            device=device,
                            threads=acc.threads or spec.threads,
                            seed=seed,
                            task=job.name,
                            task_label=job.display,
                            task_args=task_args,
                            eval_lens=eval_lens,
                            train=train,
                            smoke_test=acc.smoke_test,
                            context=context_text(model, args),
                            calibration=acc.calibration,
                        )
                    )
    return cells


def train_settings(acc: AccuracySettings, lr: float) -> TrainSettings:
    return TrainSettings(**{**acc.model_dump(include=set(TrainSettings.model_fields)), "lr": lr})
