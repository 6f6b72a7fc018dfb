"""The sweep file (TOML), validated: unknown or malformed fields are errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from bench.errors import BenchError

Mode = Literal["train", "prefill", "decode", "accuracy"]
DType = Literal["float32", "bfloat16", "float16", "float64"]
Device = Literal["auto", "cpu", "cuda"]
TIMING_MODES = ("train", "prefill", "decode")
ACCURACY_MODE = "accuracy"  # a model trained on a task, then scored (an AccuracyCell)

PRESET_DIR = Path(__file__).parent / "presets"
# --preset NAME: a packaged sweep file used as the base spec
PRESETS = {
    "paper": "paper-accuracy.toml",
    "cpu-accuracy": "cpu-accuracy.toml",
    "cpu-recall": "cpu-recall.toml",
    "cpu-state": "cpu-state.toml",
    "cpu-lm": "cpu-lm.toml",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(Strict):
    """A model in a sweep: a registered name or "package.module:factory", with optional overrides."""

    name: str = Field(min_length=1)
    label: str | None = None  # how results and reports name it; defaults to `name`
    args: dict[str, Any] = Field(default_factory=dict)  # passed to the factory as keyword arguments

    @property
    def display(self) -> str:
        return self.label or self.name


class TaskEntry(Strict):
    """A task in a sweep: a registered task name with its own args (validated by the task)."""

    name: str = Field(min_length=1)
    label: str | None = None  # how results and reports name it; defaults to `name`
    args: dict[str, Any] = Field(default_factory=dict)
    train_len: PositiveInt | None = None  # None: the [accuracy] table's train_len
    steps: PositiveInt | None = None  # None: the [accuracy] table's steps (a small corpus wants fewer)

    @property
    def display(self) -> str:
        return self.label or self.name


class TrainSettings(Strict):
    """How an accuracy cell trains its model: all of it changes what is measured, so all of it is
    part of the cell's identity."""

    steps: PositiveInt = 2000  # the budget, and the cosine schedule's length; training may stop earlier
    # A safety cap on the training loop's wall clock (validation included), not a budget: a cell it
    # stops is marked `cap_bound` and reports show it as such.
    max_seconds: PositiveFloat = 600.0
    # A small Transformer at lr 3e-3 with a short warm-up stalls on MQAR's plateau and never learns
    # recall: a long warm-up matters. The [accuracy] table's `lrs` sweeps it per model, as Zoology does.
    lr: PositiveFloat = 3e-3
    warmup_steps: NonNegativeInt = 300
    weight_decay: NonNegativeFloat = 0.1
    grad_clip: PositiveFloat | None = 1.0
    # Stop once validation accuracy reaches it; None (`false` in TOML): never, every model trains `steps`.
    threshold: float | None = Field(default=0.99, gt=0, le=1)
    eval_every: PositiveInt = 25  # steps between validations
    val_samples: PositiveInt = 256  # held-out examples at the training length, for early stopping
    eval_samples: PositiveInt = 256  # held-out examples per evaluation length, for the results

    @field_validator("threshold", mode="before")
    @classmethod
    def _false_is_none(cls, value: Any) -> Any:
        return None if value is False else value  # TOML has no null


class AccuracySettings(TrainSettings):
    """The [accuracy] table: how accuracy cells are trained and evaluated."""

    train_len: PositiveInt = 64
    eval_factors: list[PositiveInt] = Field(default=[1, 2, 4], min_length=1)  # x train_len
    batch_size: PositiveInt = 64
    # The model shape of accuracy cells; None: the sweep's. The vocabulary is always the task's own.
    d_model: PositiveInt | None = None
    n_layers: PositiveInt | None = None
    dtype: DType | None = None  # None: float32 on the CPU, bfloat16 autocast on CUDA
    threads: PositiveInt | None = None  # CPU threads for torch; None: the sweep's
    # Fair training: every model is trained at every learning rate of `lrs` (None: just `lr`) and every
    # seed of `seeds` (None: the sweep's seed); reports pick each model's best learning rate by
    # validation accuracy and give the mean over seeds with a 95% interval.
    lrs: list[PositiveFloat] | None = Field(default=None, min_length=1)
    seeds: list[int] | None = Field(default=None, min_length=1)
    # The attention context of the hybrids (`window` of titans-mal/-mag, `segment` of titans-mac; any
    # model whose `window` or `segment` has a default): a float is a fraction of the task's training
    # length, an int a number of tokens, None the models' own defaults. Shorter than the distances the
    # task asks about, so that what attention cannot reach must come from the memory. An explicit model
    # argument in the sweep wins.
    hybrid_context: PositiveInt | PositiveFloat | None = 0.25
    # Add the sliding-window Transformer ("transformer-swa", window = hybrid_context) next to each plain
    # "transformer", as the control for the hybrids: the same attention without the memory. None: when
    # the sweep lists no models (every registered model runs).
    swa_control: bool | None = None
    # The report calls the accuracy section a smoke test (too little training to rank the models) and
    # points to the presets. Not part of any cell's identity.
    smoke_test: bool = False

    @field_validator("eval_factors", "lrs", "seeds")
    @classmethod
    def _unique(cls, value: list | None) -> list | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("contains duplicates")
        return value

    @model_validator(mode="after")
    def _lr_or_lrs(self) -> AccuracySettings:
        if self.lrs is not None and self.lr != TrainSettings.model_fields["lr"].default:
            raise ValueError(f"give lr ({self.lr}) or lrs ({self.lrs}), not both")
        return self

    def context_tokens(self, train_len: int) -> int | None:
        """The hybrids' window / segment for a task trained at ``train_len``."""
        c = self.hybrid_context
        if c is None or isinstance(c, int):
            return c
        return max(1, round(c * train_len))


Executor = Literal["local", "ray", "slurm"]


class SlurmSettings(Strict):
    """The [slurm] table: how `executor = "slurm"` asks Slurm for each group of cells (one job-array
    task per group; see bench/running/slurm.py). None leaves the choice to the cluster's defaults, or
    to the rule in the comment."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # Minutes of the job's time limit per cell; None: the sweep's timeout_s plus a minute for the
    # cell's process to start, rounded up. A group's task gets this times its cells, plus 2 minutes.
    time_per_cell_min: PositiveInt | None = None
    gpus_per_cell: NonNegativeInt | None = None  # None: 1 on CUDA cells, 0 on CPU cells
    # None: the sweep's `threads` when set, else 4 on CUDA cells (the launching thread and some room)
    # and 1 on CPU cells.
    cpus_per_cell: PositiveInt | None = None
    mem_gb: PositiveFloat | None = None
    array_parallelism: PositiveInt | None = None  # at most this many tasks at once; None: no cap
    # More `#SBATCH` options, each in its long form: "--constraint=a100", "--exclusive".
    extra_sbatch: list[str] = Field(default_factory=list)
    # Shell lines run in the job before the cells, e.g. "module load cuda/12.4".
    setup: list[str] = Field(default_factory=list)
    poll_s: PositiveFloat = 5.0  # how often the driver asks squeue about its jobs

    @field_validator("extra_sbatch")
    @classmethod
    def _long_options(cls, value: list[str]) -> list[str]:
        for line in value:
            option = line.removeprefix("#SBATCH").strip()
            if not option.startswith("--") or len(option) < 3 or " " in option.split("=", 1)[0]:
                raise ValueError(f"{line!r} is not a long sbatch option such as '--constraint=a100'")
        return value


class SweepSpec(Strict):
    name: str = Field(default="sweep", pattern=r"^[A-Za-z0-9._-]+$")
    models: list[ModelEntry] | None = Field(default=None, min_length=1)  # None: every registered model
    seq_lens: list[PositiveInt] = Field(default=[256, 1024], min_length=1)
    batch_sizes: list[PositiveInt] = Field(default=[1], min_length=1)
    dtypes: list[DType] | None = None  # None: bfloat16 on CUDA, float32 on the CPU
    modes: list[Mode] = Field(default=["train", "prefill", "decode"], min_length=1)
    device: Device = "auto"
    # The model shape every cell uses, so every model is compared at the same width and depth.
    vocab_size: PositiveInt = 512
    d_model: PositiveInt = 256
    n_layers: PositiveInt = 2
    # Every model sized to this many non-embedding parameters (within 5%) by its MLP width; None: as built.
    param_budget: PositiveInt | None = None
    # How cells are timed. decode_tokens and threads change what a cell measures: they are in its key.
    repeats: PositiveInt = 5
    warmup: PositiveInt = 2  # warm-up calls at least; more until the timings settle, up to warmup_max
    warmup_max: PositiveInt = 12
    decode_tokens: PositiveInt = 32
    threads: PositiveInt | None = None  # CPU threads for torch; None: torch's default
    # Every cell measured `rounds` times, each time in a fresh process, the cells in a new seeded order
    # each round, so that machine drift does not fall on one model; compare treats a round as the unit.
    rounds: PositiveInt = 1
    # Every model through torch.compile (outside the timed region; the first call's time is recorded), every
    # family alike. Titans compiles its memory's per-chunk steps and keeps the loop over chunks outside.
    compile: bool = False
    timeout_s: PositiveFloat = 900.0
    seed: int = 0
    isolation: Literal["process", "none"] = "process"
    out: str | None = None
    # Accuracy mode: each model is trained from scratch on each task (see bench/running/accuracy.py).
    tasks: list[TaskEntry] = Field(default_factory=list)
    accuracy: AccuracySettings = Field(default_factory=AccuracySettings)
    # Where cells run (not what they measure: a run may be resumed with another executor).
    executor: Executor = "local"
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)

    @field_validator("models", "tasks", mode="before")
    @classmethod
    def _names_to_entries(cls, value: Any) -> Any:
        """ "name" or "label=name" strings as entries."""
        if isinstance(value, list):
            return [_entry(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_task_labels(cls, value: list[TaskEntry]) -> list[TaskEntry]:
        labels = [t.display for t in value]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"task label(s) used twice: {', '.join(duplicates)}; give each a label")
        return value

    @model_validator(mode="after")
    def _accuracy_needs_tasks(self) -> SweepSpec:
        if ACCURACY_MODE in self.modes and not self.tasks:
            raise ValueError("modes include 'accuracy' but no tasks are given (tasks = [...] or --tasks)")
        return self

    @model_validator(mode="after")
    def _warmup_cap(self) -> SweepSpec:
        if self.warmup_max < self.warmup:
            raise ValueError(f"warmup_max ({self.warmup_max}) is below warmup ({self.warmup})")
        return self

    @field_validator("param_budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        return parse_count(value) if isinstance(value, str) else value

    @field_validator("seq_lens", "batch_sizes", "modes")
    @classmethod
    def _unique(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError("contains duplicates")
        return value


def _entry(text: str) -> dict[str, str]:
    label, sep, name = text.partition("=")
    return {"name": name.strip(), "label": label.strip()} if sep else {"name": text}


def parse_count(text: str) -> int:
    """'2000000', '2e6', '2M', '500k', '1.5G' -> an integer count."""
    value = text.strip().replace("_", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(value[-1:].lower(), 1)
    if scale != 1:
        value = value[:-1]
    try:
        number = float(value) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a count (e.g. 2000000, 2e6, 2M)") from None
    if number != int(number) or number < 1:
        raise ValueError(f"{text!r} is not a positive whole count")
    return int(number)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first bad field, e.g. ``sweep.toml: field 'seq_lens.1': ...``."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    kind = "unknown field" if first["type"] == "extra_forbidden" else "field"
    return f"{source}: {kind} {where!r}: {first['msg']}{more}"


def parse_spec(data: dict[str, Any], source: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise BenchError(format_validation_error(err, source)) from None


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"sweep file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"{path}: not valid TOML: {err}") from None
    return parse_spec(data, str(path))


def default_spec(device: str) -> SweepSpec:
    """The sweep `python -m bench run` runs with no file: small on the CPU, 1K-16K tokens on CUDA."""
    return load_spec(PRESET_DIR / ("cuda-default.toml" if device == "cuda" else "cpu-default.toml"))


def preset_spec(name: str) -> SweepSpec:
    """A packaged sweep by name (`--preset paper`)."""
    if name not in PRESETS:
        raise BenchError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return load_spec(PRESET_DIR / PRESETS[name])
