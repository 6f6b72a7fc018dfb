"""The sweep file (TOML), validated: unknown or malformed fields are errors that name the field.

This schema is the one place a sweep field is declared: its type, default, checks and help text
(``description``), and, where the command line may set it, its flag (``json_schema_extra={"flag": ...}``,
see :func:`cli`). ``bench/spec/flags.py`` derives ``python -m bench run``'s flags from it. Rules that
join fields live here too, as validators; those about what the user gave on the command line read it
from the validation context (``given``: field path -> the flag typed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

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
    ValidationInfo,
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
    "cpu-length": "cpu-length.toml",
}


def cli(flag: str, shapes: bool = False, raw: bool = False) -> dict[str, Any]:
    """A field's command-line flag. ``shapes``: the flag changes what the sweep measures, so a packaged
    sweep run with it is no longer that sweep (it is not reported under the packaged name). ``raw``: the
    flag's text goes to the field as it is (the field parses it, e.g. "2M")."""
    return {"flag": flag, "shapes": shapes, "raw": raw}


def given_flags(info: ValidationInfo) -> dict[str, str]:
    """Field path ("accuracy.train_len") -> the flag the user typed, from the validation context."""
    return (info.context or {}).get("given", {}) if info is not None else {}


class Strict(BaseModel):
    # Strict types: `true` is not a length and 64.5 not a width; no field takes NaN or an infinity (a
    # NaN passes every comparison a check makes, and no limit or rate here means anything infinite).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# Characters that would break the report's markdown tables or the one-line messages that name a label.
LABEL_BREAKERS = ("|", "`", "\n", "\r")


def check_label(value: str | None) -> str | None:
    if value is not None:
        bad = [c for c in LABEL_BREAKERS if c in value]
        if bad:
            raise ValueError(f"label {value!r} contains {bad[0]!r}, which the report's tables cannot show")
    return value


class ModelEntry(Strict):
    """A model in a sweep: a registered name or "package.module:factory", with optional overrides."""

    name: str = Field(min_length=1)
    label: str | None = None  # how results and reports name it; defaults to `name`
    args: dict[str, Any] = Field(default_factory=dict)  # passed to the factory as keyword arguments
    # Accuracy cells train it with state passing (see TrainSettings.state_passing): give it its own label.
    state_passing: bool = False

    @field_validator("label")
    @classmethod
    def _label_fits_the_report(cls, value: str | None) -> str | None:
        return check_label(value)

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

    @field_validator("label")
    @classmethod
    def _label_fits_the_report(cls, value: str | None) -> str | None:
        return check_label(value)

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
    # The early stop's ceiling: validation accuracy at which training may end; None (`false` in TOML):
    # never, every model trains `steps`.
    threshold: float | None = Field(default=0.99, gt=0, le=1)
    # When the ceiling ends a run. "converged": once the validation accuracy is at the ceiling *and* the
    # convergence check (bench/train/loop.py) applied as if the run ended there says its validation loss
    # has stopped falling, so the loss the run leaves, which the learning rate is chosen by, is the one
    # it had settled at, not the loss at whichever step a fast rate reached the ceiling. "ceiling": at
    # the first validation at the ceiling (cheaper; then the early stop can decide the rate, and the
    # report says where it did).
    stop_rule: Literal["converged", "ceiling"] = "converged"
    # Settings that act only while another is set, setting -> the one it needs: the loop never consults
    # the stop rule without a threshold. Where a sweep changed one that could not act in any of its cells,
    # the summary page says so (bench/analysis/summary.py).
    ACTS_ONLY_WITH: ClassVar[dict[str, str]] = {"stop_rule": "threshold"}
    # State passing (recurrent models, on a task with a stream of text): row i of each batch continues row
    # i of the batch before, and the model starts from the state the previous batch left (detached: the
    # gradient stops at the window boundary), so training sees states longer than the window. Set per model
    # in the sweep's model list (``state_passing = true``).
    state_passing: bool = False
    eval_every: PositiveInt = 25  # steps between validations
    val_samples: PositiveInt = 256  # held-out examples at the training length, for early stopping
    eval_samples: PositiveInt = 256  # held-out examples per evaluation length, for the results

    @field_validator("threshold", mode="before")
    @classmethod
    def _false_is_none(cls, value: Any) -> Any:
        return None if value is False else value  # TOML has no null


class Calibration(Strict):
    """The [accuracy.calibration] table: a model that must learn the preset's tasks, the check that the
    training budget is long enough to rank the others. The report says PASS or FAIL for it."""

    model: str = Field(
        min_length=1,
        description="a model label of the sweep, or 'best': the model with the lowest validation loss",
    )
    min_score: float | None = Field(
        default=None,
        description="the score it must reach at the training length on every task (mean over seeds at its "
        "chosen learning rate; a fraction for accuracy); None: no bar",
    )
    converged: bool = Field(
        default=True, description="its runs at the chosen rate must have stopped improving by the end"
    )


class AccuracySettings(TrainSettings):
    """The [accuracy] table: how accuracy cells are trained and evaluated."""

    train_len: PositiveInt = Field(
        default=64,
        description="accuracy cells' training length (a task may set its own)",
        json_schema_extra=cli("--train-len", shapes=True),
    )
    eval_factors: list[PositiveInt] = Field(default=[1, 2, 4], min_length=1)  # x train_len
    batch_size: PositiveInt = 64
    # The model shape of accuracy cells; None: the sweep's. The vocabulary is always the task's own.
    d_model: PositiveInt | None = None
    n_layers: PositiveInt | None = None
    dtype: DType | None = None  # None: float32 on the CPU, bfloat16 autocast on CUDA
    threads: PositiveInt | None = None  # CPU threads for torch; None: the sweep's
    # Fair training: every model is trained at every learning rate of `lrs` (None: just `lr`) and every
    # seed of `seeds` (None: the sweep's seed); reports pick each model's best learning rate by
    # validation loss (bench/results/lr_choice.py) and give the mean over seeds with a 95% interval.
    lrs: list[PositiveFloat] | None = Field(default=None, min_length=1)
    seeds: list[int] | None = Field(default=None, min_length=1)
    # A grid brackets its optimum, or the sweep extends it: when a model's chosen rate is the largest (the
    # smallest) of those tried, it trains again at 3x (1/3) that rate, at most this many times each way.
    lr_extend: NonNegativeInt = Field(
        default=2,
        description="times a learning-rate grid may grow by x3 beyond an edge where the chosen rate sits",
    )
    # Every model sized to this many non-embedding parameters (within 5%) by its width knob, at the
    # accuracy cells' own shape; None: as built (the models differ by up to ~2x at one width and depth).
    param_budget: PositiveInt | None = Field(
        default=None,
        description="size every accuracy model to this many non-embedding parameters (within 5%), e.g. 200k",
    )
    calibration: Calibration | None = None
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

    @field_validator("param_budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        return parse_count(value) if isinstance(value, str) else value

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

    partition: str | None = Field(
        default=None,
        pattern=r"\S",
        description="partition to submit to (default: the cluster's)",
        json_schema_extra=cli("--slurm-partition"),
    )
    account: str | None = Field(
        default=None, pattern=r"\S", description="account to charge", json_schema_extra=cli("--slurm-account")
    )
    qos: str | None = Field(
        default=None, pattern=r"\S", description="quality of service", json_schema_extra=cli("--slurm-qos")
    )
    # Minutes of the job's time limit per cell; None: the sweep's timeout_s plus a minute for the
    # cell's process to start, rounded up. A group's task gets this times its cells, plus 2 minutes.
    time_per_cell_min: PositiveInt | None = None
    gpus_per_cell: NonNegativeInt | None = Field(
        default=None,
        description="GPUs per cell (default: 1 on CUDA cells, 0 on CPU cells)",
        json_schema_extra=cli("--slurm-gpus-per-cell"),
    )
    # None: the sweep's `threads` when set, else 4 on CUDA cells (the launching thread and some room)
    # and 1 on CPU cells.
    cpus_per_cell: PositiveInt | None = Field(
        default=None,
        description="CPUs per cell (default: the sweep's threads, else 4 on CUDA cells, 1 on CPU)",
        json_schema_extra=cli("--slurm-cpus-per-cell"),
    )
    mem_gb: PositiveFloat | None = Field(
        default=None,
        description="memory per cell in GB (default: the partition's)",
        json_schema_extra=cli("--slurm-mem-gb"),
    )
    array_parallelism: PositiveInt | None = Field(
        default=None,
        description="at most this many of the sweep's tasks at once (default: no cap)",
        json_schema_extra=cli("--slurm-array-parallelism"),
    )
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
    name: str = Field(
        default="sweep",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="the sweep's name in the report and the default run directory",
        json_schema_extra=cli("--name"),
    )
    models: list[ModelEntry] | None = Field(
        default=None,
        min_length=1,
        description="comma-separated registered names, package.module:factory or path/file.py:factory "
        "strings; LABEL=MODEL names one in the results (default: every registered model)",
        json_schema_extra=cli("--models", shapes=True),
    )
    seq_lens: list[PositiveInt] = Field(
        default=[256, 1024],
        min_length=1,
        description="timing cells' sequence lengths, e.g. 256,1024",
        json_schema_extra=cli("--seq-lens", shapes=True),
    )
    mode_seq_lens: dict[Literal["train", "prefill", "decode"], list[PositiveInt]] = Field(
        default_factory=dict,
        description="one timing mode's own lengths, in place of seq_lens for it (a table, e.g. "
        "{prefill = [256, 1024, 4096]}); --seq-lens on the command line sets every mode's",
    )
    batch_sizes: list[PositiveInt] = Field(
        default=[1], min_length=1, description="e.g. 1,4", json_schema_extra=cli("--batch-sizes", shapes=True)
    )
    dtypes: list[DType] | None = Field(
        default=None,
        description="float32, bfloat16, float16, float64 (default: bfloat16 on CUDA, float32 on the CPU)",
        json_schema_extra=cli("--dtypes", shapes=True),
    )
    modes: list[Mode] = Field(
        default=["train", "prefill", "decode"],
        min_length=1,
        description="train, prefill, decode, accuracy",
        json_schema_extra=cli("--modes", shapes=True),
    )
    device: Device = Field(
        default="auto", description="where cells run (default: auto)", json_schema_extra=cli("--device", True)
    )
    # The model shape every cell uses, so every model is compared at the same width and depth.
    vocab_size: PositiveInt = Field(
        default=512, description="the timing cells' vocabulary", json_schema_extra=cli("--vocab-size", True)
    )
    d_model: PositiveInt = Field(
        default=256, description="every model's width", json_schema_extra=cli("--d-model", shapes=True)
    )
    n_layers: PositiveInt = Field(
        default=2, description="every model's depth", json_schema_extra=cli("--n-layers", shapes=True)
    )
    param_budget: PositiveInt | None = Field(
        default=None,
        description="size every model to this many non-embedding parameters (within 5%) by its MLP width, "
        "e.g. 2e6 or 2M",
        json_schema_extra=cli("--param-budget", shapes=True, raw=True),
    )
    # How cells are timed. decode_tokens and threads change what a cell measures: they are in its key.
    repeats: PositiveInt = Field(
        default=5,
        description="timed calls per cell and round, after warm-up",
        json_schema_extra=cli("--repeats"),
    )
    warmup: PositiveInt = Field(
        default=2,
        description="untimed calls at least, before timing (more until steady, up to warmup_max)",
        json_schema_extra=cli("--warmup"),
    )
    warmup_max: PositiveInt = Field(default=12, description="untimed calls at most")
    decode_tokens: PositiveInt = Field(default=32, description="tokens a decode cell steps through")
    threads: PositiveInt | None = Field(
        default=None,
        description="CPU threads for torch (at most the cores here; default: torch's)",
        json_schema_extra=cli("--threads"),
    )
    # Every timing cell measured `rounds` times, each time in a fresh process, the cells in a new seeded
    # order each round, so that machine drift does not fall on one model; compare treats a round as the
    # unit. Accuracy cells train once: a seed's training is deterministic, a second round would repeat it.
    rounds: PositiveInt = Field(
        default=1,
        description="measure every timing cell this many times, each in a fresh process, in a new seeded "
        "order per round (what `compare` counts as independent units); accuracy cells run once",
        json_schema_extra=cli("--rounds"),
    )
    # Every model through torch.compile (outside the timed region; the first call's time is recorded), every
    # family alike. Titans compiles its memory's per-chunk steps and keeps the loop over chunks outside.
    compile: bool = Field(
        default=False,
        description="run every model through torch.compile (compiled outside the timed region; time "
        "recorded)",
        json_schema_extra=cli("--compile"),
    )
    timeout_s: PositiveFloat = Field(
        default=900.0,
        description="seconds per cell before it is killed and recorded as timeout",
        json_schema_extra=cli("--timeout"),
    )
    seed: int = Field(default=0, description="the sweep's seed (models, data, the rounds' order)")
    isolation: Literal["process", "none"] = Field(
        default="process",
        description="one process per cell (default) or none, for debugging",
        json_schema_extra=cli("--isolation"),
    )
    # Where cells run (not what they measure: a run may be resumed with another executor).
    executor: Executor = Field(
        default="local",
        description="local: cells here, one at a time (accuracy cells --parallel at a time); ray: cells as "
        "Ray tasks (RAY_ADDRESS or a local Ray); slurm: each group of cells as a Slurm job-array task (the "
        "[slurm] table, --slurm-* flags)",
        json_schema_extra=cli("--executor"),
    )
    ray_cpus_per_cell: PositiveInt | None = Field(
        default=None,
        description="CPUs each Ray task reserves (default: all of a node's)",
        json_schema_extra=cli("--ray-cpus-per-cell"),
    )
    parallel: PositiveInt = Field(
        default=1,
        description="accuracy cells trained at once by the local executor, each in its own process (give "
        "each [accuracy] threads = 1); timing cells always run alone",
        json_schema_extra=cli("--parallel"),
    )
    out: str | None = Field(
        default=None,
        description="run directory (default runs/<name>-<timestamp>)",
        json_schema_extra=cli("--out"),
    )
    # Accuracy mode: each model is trained from scratch on each task (bench/train/cell.py).
    tasks: list[TaskEntry] = Field(
        default_factory=list,
        description="accuracy tasks, e.g. mqar,niah-pk (see bench/tasks); a task the sweep lists keeps its "
        "arguments",
        json_schema_extra=cli("--tasks", shapes=True),
    )
    accuracy: AccuracySettings = Field(default_factory=AccuracySettings)
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
    def _warmup_within_the_budget(self) -> SweepSpec:
        """A warm-up as long as the budget never reaches the rate the cell, its key and the report name,
        nor decays from it."""
        if ACCURACY_MODE not in self.modes:
            return self
        for task in self.tasks:
            steps = task.steps or self.accuracy.steps
            if self.accuracy.warmup_steps >= steps:
                where = (
                    f"task {task.display!r} (steps = {steps})"
                    if task.steps
                    else f"[accuracy] steps = {steps}"
                )
                raise ValueError(
                    f"[accuracy] warmup_steps = {self.accuracy.warmup_steps} is not below the step budget of "
                    f"{where}: the learning rate would never reach lr"
                )
        return self

    @model_validator(mode="after")
    def _flags_fit_the_modes(self, info: ValidationInfo) -> SweepSpec:
        """Flags that set what only some modes use, given where no such mode runs, are mistakes."""
        given = given_flags(info)
        accuracy = ACCURACY_MODE in self.modes
        if "tasks" in given and not accuracy:
            raise ValueError(f"{given['tasks']} needs 'accuracy' among the modes (e.g. --modes accuracy)")
        if "accuracy.train_len" in given and not accuracy:
            raise ValueError(
                f"{given['accuracy.train_len']} sets the accuracy cells' training length; the modes have no "
                "'accuracy'"
            )
        if "seq_lens" in given and not any(m in TIMING_MODES for m in self.modes):
            raise ValueError(
                f"{given['seq_lens']} sets the timing cells' lengths and this sweep has only accuracy cells; "
                "their training length is --train-len"
            )
        return self

    @model_validator(mode="after")
    def _seq_lens_flag_sets_every_mode(self, info: ValidationInfo) -> SweepSpec:
        if "seq_lens" in given_flags(info):
            self.mode_seq_lens = {}
        for mode, lens in self.mode_seq_lens.items():
            if not lens or len(set(lens)) != len(lens):
                raise ValueError(f"mode_seq_lens.{mode} must list distinct lengths, got {lens}")
        return self

    def lengths(self, mode: str) -> list[int]:
        """The timing cells' lengths for one mode."""
        return sorted(self.mode_seq_lens.get(mode, self.seq_lens))

    @model_validator(mode="after")
    def _executor_options(self, info: ValidationInfo) -> SweepSpec:
        if self.ray_cpus_per_cell is not None and self.executor != "ray":
            given = given_flags(info)
            raise ValueError(
                f"{given.get('ray_cpus_per_cell', 'ray_cpus_per_cell')} applies to "
                f"{given.get('executor', '--executor')} ray only"
            )
        return self

    @model_validator(mode="after")
    def _slurm_options(self, info: ValidationInfo) -> SweepSpec:
        given = [flag for path, flag in given_flags(info).items() if path.startswith("slurm.")]
        if given and self.executor != "slurm":
            raise ValueError(f"{given[0]} applies to --executor slurm only")
        return self

    @model_validator(mode="after")
    def _threads_fit_the_machine(self, info: ValidationInfo) -> SweepSpec:
        if self.executor == "slurm":  # the cells' cores are the compute nodes', not this machine's
            return self
        cores, given = os.cpu_count() or 1, given_flags(info)
        typed = f"{given['threads']} {self.threads}" if "threads" in given else f"threads = {self.threads}"
        accuracy = f"[accuracy] threads = {self.accuracy.threads}"
        for where, threads in ((typed, self.threads), (accuracy, self.accuracy.threads)):
            if threads is not None and threads > cores:
                raise ValueError(f"{where} is more than the {cores} CPU cores here")
        return self

    @model_validator(mode="after")
    def _warmup_cap(self, info: ValidationInfo) -> SweepSpec:
        if self.warmup_max < self.warmup:
            given = given_flags(info)
            if "warmup" in given:  # the user typed the flag: name it, and the cap it ran into
                raise ValueError(
                    f"{given['warmup']} {self.warmup} is above {self.warmup_max}, the most warm-up calls "
                    "(warmup_max in a sweep file)"
                )
            raise ValueError(f"warmup_max ({self.warmup_max}) is below warmup ({self.warmup})")
        return self

    @field_validator("param_budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        if isinstance(value, float):  # 2e6 in a sweep file
            return parse_count(repr(value))
        return parse_count(value) if isinstance(value, str) else value

    @field_validator("seq_lens", "batch_sizes", "modes", "dtypes")
    @classmethod
    def _unique(cls, value: list | None) -> list | None:
        if value is not None and len(set(value)) != len(value):
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
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite count (e.g. 2000000, 2e6, 2M)")
    if number != int(number) or number < 1:
        raise ValueError(f"{text!r} is not a positive whole count")
    return int(number)


def format_validation_error(err: ValidationError, source: str, given: dict[str, str] | None = None) -> str:
    """One line naming the first bad field the way the user wrote it: the flag typed on the command line
    (``--timeout: Input should be greater than 0``), else the field of the file
    (``sweep.toml: field 'seq_lens.1': ...``); a rule joining fields is its own message."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    for depth in range(len(loc), 0, -1):  # the longest given path the error lies under
        flag = (given or {}).get(".".join(loc[:depth]))
        if flag:
            item = f" (item {int(loc[depth]) + 1})" if depth < len(loc) and loc[depth].isdigit() else ""
            return f"{flag}{item}: {message}{more}"
    if not loc:
        return f"{source}: {message}{more}"
    kind = "unknown field" if first["type"] == "extra_forbidden" else "field"
    return f"{source}: {kind} {'.'.join(loc)!r}: {message}{more}"


def parse_spec(data: dict[str, Any], source: str, given: dict[str, str] | None = None) -> SweepSpec:
    """The sweep from its data; ``given``: field path -> the flag the user typed for it."""
    try:
        return SweepSpec.model_validate(data, context={"given": given or {}})
    except ValidationError as err:
        raise BenchError(format_validation_error(err, source, given)) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """A sweep file's data; a BenchError that says what is wrong with the file as a file."""
    path = Path(path)
    if path.is_dir():
        raise BenchError(f"sweep file {str(path)!r} is a directory, not a file")
    if not path.exists():
        raise BenchError(f"sweep file {str(path)!r} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BenchError(f"sweep file {str(path)!r} cannot be read: {err.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise BenchError(
            f"{path}: starts with a UTF-8 byte-order mark (BOM), which TOML does not allow; save it as UTF-8 "
            "without one"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BenchError(
            f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); a sweep file is "
            "TOML text"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"{path}: not valid TOML: {err}") from None
    if not data:
        raise BenchError(
            f"{path} sets nothing; write the fields to change in it, or leave it out to run the default sweep"
        )
    return data


def load_spec(path: str | Path) -> SweepSpec:
    data = read_toml(path)
    accuracy = data.get("accuracy")
    # The schema refuses lr beside lrs only where lr differs from its default: a saved spec.json carries
    # both. A file someone wrote with both means one of them is ignored, whatever its value.
    if isinstance(accuracy, dict) and "lr" in accuracy and "lrs" in accuracy:
        raise BenchError(
            f"{path}: [accuracy] sets lr and lrs; give one (with lrs, every model trains at each rate)"
        )
    return parse_spec(data, str(path))


def default_spec(device: str) -> SweepSpec:
    """The sweep `python -m bench run` runs with no file: small on the CPU, 1K-16K tokens on CUDA."""
    return load_spec(PRESET_DIR / ("cuda-default.toml" if device == "cuda" else "cpu-default.toml"))


def preset_spec(name: str) -> SweepSpec:
    """A packaged sweep by name (`--preset paper`)."""
    if name not in PRESETS:
        raise BenchError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return load_spec(PRESET_DIR / PRESETS[name])
