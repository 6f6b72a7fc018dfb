"""The report's appendix: every model's configuration as it was built, one row per model, the settings
that differ between the models first, then those they all share; so that a reader never has to guess a
Titans chunk, a window, a Mamba d_state or an MLP width."""

from __future__ import annotations

import json

from bench.analysis.text import cell_text
from bench.errors import BenchError
from bench.registry import model_config
from bench.results import AccuracyRow, TimingRow

SHAPE = ("vocab_size", "d_model", "n_layers")


def config_of(row: TimingRow | AccuracyRow) -> dict | None:
    """The row's recorded configuration, else (older records) its family's config rebuilt from the row."""
    if row.model_settings:
        return row.model_settings
    try:
        kwargs = dict(vocab_size=row.vocab_size, d_model=row.d_model, n_layers=row.n_layers, **row.model_args)
        return model_config(row.model, kwargs)
    except (BenchError, TypeError, ValueError):
        return None


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def config_lines(rows: list[TimingRow | AccuracyRow]) -> list[str]:
    """Markdown lines: per model label (and, for accuracy cells, per shape), its settings."""
    configs: dict[tuple, dict] = {}
    for row in rows:
        config = config_of(row)
        if config is not None:
            kind = "timing" if isinstance(row, TimingRow) else f"accuracy, {row.task_label}"
            key = (row.label, json.dumps({k: config.get(k) for k in SHAPE}))
            configs.setdefault(key, {"config": config, "where": set()})["where"].add(kind)
    if not configs:
        return []
    fields = list(dict.fromkeys(f for c in configs.values() for f in c["config"]))
    shared = [f for f in fields if len({_text(c["config"].get(f, "–")) for c in configs.values()}) == 1]
    differing = [f for f in fields if f not in shared]
    out = [
        "## Appendix: every model's configuration",
        "",
        "Each model as it was built (its family's config with every default filled in); the settings that "
        "differ between models in each row, those every model shares below the table.",
        "",
        "| model | cells | settings that differ between models |",
        "|---|---|---|",
    ]
    for (label, _), c in configs.items():
        config = c["config"]
        text = ", ".join(f"{f}={_text(config[f])}" for f in differing if f in config)
        out.append(f"| {label} | {cell_text(', '.join(sorted(c['where'])))} | {cell_text(text)} |")
    first = next(iter(configs.values()))["config"]
    out += ["", "Shared by every model: " + ", ".join(f"{f}={_text(first[f])}" for f in shared) + ".", ""]
    return out
