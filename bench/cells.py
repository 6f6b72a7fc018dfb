"""A cell is one measurement: model x seq_len x batch x dtype x mode on one device. An accuracy cell is
model x task: a model trained from scratch at seq_len (the training length), evaluated at eval_lens."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bench.config import ModelEntry, SweepSpec, TrainSettings


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Identity: what is measured.
    model: str
    label: str
    model_args: dict[str, Any] = Field(default_factory=dict)
    vocab_size: int
    d_model: int
    n_layers: int
    seq_len: int
    batch_size: int
    dtype: str
    mode: str
    device: str
    # How it is measured: may differ between two runs that are compared.
    repeats: int = 5
    warmup: int = 2
    decode_tokens: int = 32
    threads: int | None = None
    seed: int = 0
    # Accuracy cells only (mode "accuracy"): the task, how the model is trained, where it is evaluated.
    task: str | None = None
    task_label: str | None = None
    task_args: dict[str, Any] = Field(default_factory=dict)
    eval_lens: list[int] = Field(default_factory=list)
    train: TrainSettings | None = None

    IDENTITY: ClassVar[tuple[str, ...]] = (
        "model",
        "label",
        "model_args",
        "vocab_size",
        "d_model",
        "n_layers",
        "seq_len",
        "batch_size",
        "dtype",
        "mode",
        "device",
    )
    # Added only for accuracy cells, so the keys of timing cells stay what they were.
    ACCURACY_IDENTITY: ClassVar[tuple[str, ...]] = ("task", "task_label", "task_args", "eval_lens", "train")

    @property
    def key(self) -> str:
        """Stable across runs and processes: a readable prefix and a hash of the full identity."""
        names = self.IDENTITY + (self.ACCURACY_IDENTITY if self.mode == "accuracy" else ())
        identity = {name: getattr(self, name) for name in names}
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        task = f"{self.task_label}/" if self.mode == "accuracy" else ""
        return (
            f"{self.label}/{self.mode}/{task}T{self.seq_len}/B{self.batch_size}/{self.dtype}/{self.device}/"
            f"{digest}"
        )

    @property
    def group(self) -> tuple:
        """Cells that differ only in seq_len: after an OOM at one length the longer ones are skipped."""
        if self.mode == "accuracy":
            return (self.label, self.mode, self.task_label, self.batch_size, self.dtype, self.device)
        return (self.label, self.mode, self.batch_size, self.dtype, self.device)

    def build_kwargs(self) -> dict[str, Any]:
        return dict(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, **self.model_args
        )


def expand(spec: SweepSpec, models: list, device: str) -> list[Cell]:
    """Every cell of the sweep, ordered so each model's lengths run in ascending order."""
    dtypes = spec.dtypes or (["bfloat16"] if device == "cuda" else ["float32"])
    cells = []
    for entry in models:
        for mode in spec.modes:
            if mode == "accuracy":
                cells += accuracy_cells(spec, entry, device)
                continue
            for batch in spec.batch_sizes:
                for dtype in dtypes:
                    for seq_len in sorted(spec.seq_lens):
                        cells.append(
                            Cell(
                                model=entry.name,
                                label=entry.display,
                                model_args=entry.args,
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
                                decode_tokens=spec.decode_tokens,
                                threads=spec.threads,
                                seed=spec.seed,
                            )
                        )
    return cells


def accuracy_cells(spec: SweepSpec, entry: ModelEntry, device: str) -> list[Cell]:
    """One cell per task for this model. The model is built with the task's vocabulary (a task defines
    its tokens), and the sweep's width and depth unless the [accuracy] table sets its own."""
    from bench.tasks import make_task  # here, so that reading cells does not import torch

    acc = spec.accuracy
    settings = TrainSettings(**acc.model_dump(include=set(TrainSettings.model_fields)))
    dtype = acc.dtype or ("bfloat16" if device == "cuda" else "float32")
    cells = []
    for job in spec.tasks:
        task = make_task(job.name, job.args)
        train_len = job.train_len or acc.train_len
        eval_lens = sorted(train_len * f for f in acc.eval_factors)
        for length in (train_len, *eval_lens):
            task.check_len(length)
        cells.append(
            Cell(
                model=entry.name,
                label=entry.display,
                model_args=entry.args,
                vocab_size=task.vocab_size,
                d_model=acc.d_model or spec.d_model,
                n_layers=acc.n_layers or spec.n_layers,
                seq_len=train_len,
                batch_size=acc.batch_size,
                dtype=dtype,
                mode="accuracy",
                device=device,
                threads=acc.threads or spec.threads,
                seed=spec.seed,
                task=job.name,
                task_label=job.display,
                task_args=job.args,
                eval_lens=eval_lens,
                train=settings,
            )
        )
    return cells
