"""The sweep file (TOML), validated: unknown or malformed fields are errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from bench.errors import BenchError

Mode = Literal["train", "prefill", "decode", "accuracy"]
DType = Literal["float32", "bfloat16", "float16", "float64"]
Device = Literal["auto", "cpu", "cuda"]
TIMING_MODES = ("train", "prefill", "decode")

SPEC_DIR = Path(__file__).parent / "specs"


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


class SweepSpec(Strict):
    name: str = Field(default="sweep", pattern=r"^[A-Za-z0-9._-]+$")
    models: list[ModelEntry] | None = None  # None: every registered model
    seq_lens: list[PositiveInt] = Field(default=[256, 1024], min_length=1)
    batch_sizes: list[PositiveInt] = Field(default=[1], min_length=1)
    dtypes: list[DType] | None = None  # None: bfloat16 on CUDA, float32 on the CPU
    modes: list[Mode] = Field(default=["train", "prefill", "decode"], min_length=1)
    device: Device = "auto"
    # The model shape every cell uses, so every model is compared at the same width and depth.
    vocab_size: PositiveInt = 512
    d_model: PositiveInt = 256
    n_layers: PositiveInt = 2
    # Measurement settings: not part of a cell's identity.
    repeats: PositiveInt = 5
    warmup: PositiveInt = 2
    decode_tokens: PositiveInt = 32
    threads: PositiveInt | None = None  # CPU threads for torch; None: torch's default
    timeout_s: PositiveFloat = 900.0
    seed: int = 0
    isolation: Literal["process", "none"] = "process"
    out: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _names_to_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("seq_lens", "batch_sizes", "modes")
    @classmethod
    def _unique(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError("contains duplicates")
        return value


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
    return load_spec(SPEC_DIR / ("cuda-default.toml" if device == "cuda" else "cpu-default.toml"))
