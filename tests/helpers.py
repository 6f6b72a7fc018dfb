"""Shared test helpers: tiny model shapes and sweeps that run in seconds on the CPU."""

import torch

import bench
from bench.registry import describe_backends
from bench.results import AccuracyRow, parse_row
from bench.spec.cells import AccuracyCell
from bench.spec.config import TrainSettings
from bench.tasks import make_task

# Small enough that every family runs the conformance suite in seconds, in float64 so that "equal"
# means equal to rounding, not to a loose tolerance.
TINY = dict(vocab_size=37, d_model=32, n_layers=2)


# A sweep through the command line that runs in seconds: the smallest model, few repeats, on the CPU.
TINY_SWEEP = (
    "--d-model 16 --n-layers 1 --vocab-size 32 --repeats 2 --warmup 1 --rounds 1 --device cpu --no-progress"
).split()


def tiny_sweep(*overrides: str) -> list[str]:
    """TINY_SWEEP with some of its flags set otherwise (``"--repeats", "7"``): a flag given twice with two
    values is refused, so an override replaces the value instead of following it."""
    changed = dict(zip(overrides[::2], overrides[1::2], strict=True))
    out, flags = [], list(TINY_SWEEP)
    while flags:
        flag = flags.pop(0)
        takes_value = bool(flags) and not flags[0].startswith("--")
        value = flags.pop(0) if takes_value else None
        out += [flag, changed.pop(flag, value)] if takes_value else [flag]
    return out + [x for pair in changed.items() for x in pair]


def tiny_model(name: str, **overrides):
    # These tests hold the pure-PyTorch fast path to the contract in float64 on the CPU. On a CUDA machine
    # "auto" would pick the upstream kernels, which `python -m bench validate` checks against this path.
    if "backend" not in overrides and "torch-chunked" in describe_backends(name):
        overrides["backend"] = "torch-chunked"
    return bench.build(name, **{**TINY, **overrides}).to(torch.float64)


# The model part of an accuracy sweep's flags, for runs that only need to finish.
TINY_MODEL = ["--d-model", "16", "--n-layers", "1", "--no-progress"]


def stored(cell, record: dict, **changes) -> AccuracyRow:
    """The typed row a report reads for ``cell`` measured as ``record`` (as the ledger stores it), with
    ``changes`` applied to the stored record."""
    return parse_row({"key": cell.key, **cell.model_dump(), **record, **changes})


def accuracy_cell(model: str, task: str, task_args: dict, seq_len: int, **train) -> AccuracyCell:
    """An accuracy cell of a small model on the CPU, trained with ``train`` settings."""
    return AccuracyCell(
        model=model,
        label=model,
        model_args={"n_heads": 2} if model == "transformer" else {},
        vocab_size=make_task(task, task_args).vocab_size,
        d_model=64,
        n_layers=2,
        train_len=seq_len,
        batch_size=32,
        dtype="float32",
        device="cpu",
        threads=1,  # one thread: steady on a shared CPU, and bit-for-bit repeatable
        task=task,
        task_label=task,
        task_args=task_args,
        eval_lens=[seq_len, 2 * seq_len],
        train=TrainSettings(**train),
    )
