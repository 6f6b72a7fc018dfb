"""Typed rows: a run's stored records as the reports read them.

A record in ``results.jsonl`` is a flat dict written by whichever version of the harness measured it. A
row is that record validated once, here: every field a report reads has its type and a default, nested
entries are typed too, and what older records lack is filled in from what they have (an accuracy
record's ``seq_len`` was its training length before ``train_len``). Fields a report does not know are
kept (``extra="allow"``), so nothing of a record is lost on the way. Reports then read ``row.field``
instead of guarding every access against a missing key, a NaN or a wrong type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import BenchError
from bench.results.store import finished_records, results_path


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=False)

    def get(self, name: str, default: Any = None) -> Any:
        """A field, or an extra key of the record, or ``default``."""
        value = getattr(self, name, None)
        if value is None and self.model_extra:
            value = self.model_extra.get(name)
        return default if value is None else value


class Row(Lenient):
    """What every finished cell records: what was measured, how it ended, and when."""

    key: str
    status: str
    mode: str
    model: str
    label: str
    model_args: dict[str, Any] = Field(default_factory=dict)
    vocab_size: int | None = None
    d_model: int | None = None
    n_layers: int | None = None
    batch_size: int | None = None
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    seed: int = 0
    error: str | None = None
    wall_s: float | None = None
    round: int = 0
    run_id: str | None = None
    backend: str | None = None
    model_settings: dict[str, Any] | None = None
    n_params: int | None = None
    n_params_non_embedding: int | None = None
    state_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class TimingRow(Row):
    """A timing cell (train, prefill, decode): bench/measure/cell.py writes it."""

    seq_len: int
    repeats: int | None = None
    decode_tokens: int | None = None
    compile: bool = False
    samples_s: list[float] = Field(default_factory=list)
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    iqr_s: float | None = None
    tokens_per_s: float | None = None
    tokens_per_call: float | None = None
    drift: float | None = None
    drifting: bool = False
    warmup_calls: int | None = None
    warmup_settled: bool | None = None
    rounds: int = 1
    round_medians_s: list[float] = Field(default_factory=list)  # one per round pooled (a fresh process each)
    peak_mem_bytes: int | None = None
    peak_mem_gross_bytes: int | None = None
    prompt_peak_mem_bytes: int | None = None
    mem_baseline_bytes: int | None = None
    dispatches_per_token: float | None = None
    forward_flops_per_token: float | None = None
    flops_per_token: float | None = None
    achieved_flops: float | None = None
    peak_flops: float | None = None
    mfu: float | None = None
    compile_s: float | None = None

    @property
    def spread(self) -> float | None:
        """The inter-quartile range over the median of the per-call times."""
        if self.iqr_s is None or not self.median_s:
            return None
        return self.iqr_s / self.median_s


class DistanceBin(Lenient):
    max_distance: int
    correct: int = 0
    total: int = 0


class PositionBin(Lenient):
    max_distance: int
    nll: float = 0.0
    nll_truncated: float = 0.0
    tokens: int = 0
    bytes: int = 0


class Documents(Lenient):
    """Per-document sums of an lm evaluation: [n][buckets] by position, and [n] past the training length."""

    nll: list[list[float]] = Field(default_factory=list)
    nll_truncated: list[list[float]] = Field(default_factory=list)
    bytes: list[list[float]] = Field(default_factory=list)
    nll_beyond: list[float] = Field(default_factory=list)
    nll_truncated_beyond: list[float] = Field(default_factory=list)
    bytes_beyond: list[float] = Field(default_factory=list)


class EvalEntry(Lenient):
    """One evaluation length of an accuracy cell (the scorers in bench/scoring say what each holds)."""

    eval_len: int
    state_bytes: int | None = None
    error: str | None = None
    nonfinite: float = 0.0
    n_examples: int | None = None
    # recall and state tracking
    accuracy: float | None = None
    n_items: int | None = None
    by_distance: list[DistanceBin] = Field(default_factory=list)
    beyond_train: float | None = None
    beyond_train_items: int | None = None
    beyond_train_examples: int | None = None
    longest_prefix_90: int | None = None
    # language modelling
    bpb: float | None = None
    by_position: list[PositionBin] = Field(default_factory=list)
    by_document: Documents | None = None
    bpb_beyond_train: float | None = None
    bpb_beyond_train_truncated: float | None = None
    context_gain_beyond_train: float | None = None
    gain_from_context: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("nonfinite") is None:
            data = {**data, "nonfinite": 0.0}
        return data


class TrainRecipe(Lenient):
    """How an accuracy cell was trained (the sweep's TrainSettings, as stored)."""

    steps: int | None = None
    lr: float | None = None
    threshold: float | None = None
    stop_rule: str | None = None  # None: stored before the rule was a setting ("ceiling")
    warmup_steps: int | None = None
    eval_every: int | None = None


class AccuracyRow(Row):
    """An accuracy cell: bench/train/cell.py writes it."""

    train_len: int
    task: str
    task_label: str
    task_args: dict[str, Any] = Field(default_factory=dict)
    eval_lens: list[int] = Field(default_factory=list)
    train: TrainRecipe = Field(default_factory=TrainRecipe)
    smoke_test: bool = False
    context: str | None = None
    lr_origin: str = "grid"
    calibration: dict[str, Any] | None = None
    scoring: str | None = None
    section: str | None = None
    score_columns: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stop_reason: str | None = None
    steps_run: int | None = None
    cap_bound: bool = False
    train_seconds: float | None = None
    train_cpu_seconds: float | None = None
    train_tokens_per_s: float | None = None
    eval_seconds: float | None = None
    eval_cpu_seconds: float | None = None
    tokens_seen: int | None = None
    final_loss: float | None = None
    val_loss: float | None = None
    still_improving: bool | None = None
    val_loss_drop_last_20pct: float | None = None
    val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    val_bpb: float | None = None
    best_val_bpb: float | None = None
    accuracy: float | None = None
    bpb: float | None = None
    loss_curve: list[list[float]] = Field(default_factory=list)
    val_curve: list[list[float | None]] = Field(default_factory=list)
    val_loss_curve: list[list[float | None]] = Field(default_factory=list)
    accuracy_by_len: list[EvalEntry] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _older_records(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None or k in ("context",)}
        if "train_len" not in data and "seq_len" in data:  # before train_len had its own name
            data["train_len"] = data["seq_len"]
        for name in ("cap_bound", "smoke_test"):
            if name in data and not isinstance(data[name], bool):
                data[name] = bool(data[name])
        return data

    @property
    def lr(self) -> float | None:
        return self.train.lr

    def entry(self, eval_len: int) -> EvalEntry | None:
        return next((e for e in self.accuracy_by_len if e.eval_len == eval_len), None)


TIMING_MODES = ("train", "prefill", "decode")


def parse_row(record: dict[str, Any]) -> TimingRow | AccuracyRow:
    """The typed row of one stored record."""
    if record.get("mode") in TIMING_MODES:
        return TimingRow.model_validate(record)
    return AccuracyRow.model_validate(record)


def load_rows(run: str | Path) -> list[TimingRow | AccuracyRow]:
    """One typed row per finished cell of a run (rounds pooled; see ``bench.results.store.load``); a record
    that is not one (another version's, a damaged one) is bad input naming the file, cell and field."""
    return [parse_stored(record, run) for record in finished_records(run)]


def parse_stored(record: dict[str, Any], run: str | Path) -> TimingRow | AccuracyRow:
    """The typed row of a record read from ``run``'s results: one that is not one (another version's, a
    damaged one) is bad input naming the file, the cell and the field."""
    try:
        return parse_row(record)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BenchError(
            f"{str(results_path(run))!r}: cell {record.get('key')!r}: field {field!r}: {first['msg']} "
            "(written by another version, or damaged)"
        ) from None
