"""A cell is one measurement: model x seq_len x batch x dtype x mode on one device."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bench.config import SweepSpec


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

    @property
    def key(self) -> str:
        """Stable across runs and processes: a readable prefix and a hash of the full identity."""
        identity = {name: getattr(self, name) for name in self.IDENTITY}
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return (
            f"{self.label}/{self.mode}/T{self.seq_len}/B{self.batch_size}/{self.dtype}/{self.device}/{digest}"
        )

    @property
    def group(self) -> tuple:
        """Cells that differ only in seq_len: after an OOM at one length the longer ones are skipped."""
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
