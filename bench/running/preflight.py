"""What a sweep checks of its models before any cell runs, so that a model that cannot work is refused in
one line naming it (exit 2) instead of failing in every cell, or, worse, being measured:

- every model builds at every shape the sweep uses (on the meta device, or for real where it cannot be);
- every model's calls that the sweep's modes time return logits of the shape the harness relies on,
  once per model and shape, on a short input on the CPU. On a CUDA sweep a model whose calls fail on the
  CPU (a CUDA-only backend) is left to its cells; a wrong shape is refused all the same.
"""

from __future__ import annotations

import json

import torch

from bench.errors import BenchError
from bench.failures import is_oom
from bench.plugins import WrongLogits, build_to_check, check_logits, first_line, model_name
from bench.registry import build
from bench.running.ledger import AnyCell
from bench.spec.config import ACCURACY_MODE, TIMING_MODES, ModelEntry, SweepSpec

# The calls of a model each mode makes; a decoding cell prefills its prompt, then steps.
CALLS = {"train": {"forward"}, "prefill": {"prefill"}, "decode": {"prefill", "step"}, "accuracy": {"forward"}}
PROBE_LEN = 16  # tokens: enough for every call's shape, short enough to cost nothing


def check_models(spec: SweepSpec, models: list[ModelEntry]) -> None:
    """Build each model once at every shape the sweep uses, so that an unknown name, an unknown argument,
    an impossible shape or a factory that fails is reported before any cell runs."""
    labels = [m.display for m in models]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise BenchError(
            f"model label(s) used twice in the sweep: {', '.join(duplicates)}; give each a label"
        )
    shapes = []
    if any(m in TIMING_MODES for m in spec.modes):
        shapes.append((spec.d_model, spec.n_layers, "the sweep's shape"))
    if ACCURACY_MODE in spec.modes:
        acc = spec.accuracy
        shapes.append((acc.d_model or spec.d_model, acc.n_layers or spec.n_layers, "the accuracy shape"))
    for entry in models:
        for d_model, n_layers, where in dict.fromkeys(shapes):
            try:
                model = build_to_check(
                    entry.name,
                    entry.display,
                    vocab_size=spec.vocab_size,
                    d_model=d_model,
                    n_layers=n_layers,
                    **entry.args,
                )
            except BenchError:
                raise
            except Exception as err:  # noqa: BLE001 - whatever the factory raised is the model's
                # A ValueError or TypeError is the factory refusing its arguments: its own words say why.
                why = (
                    str(err)
                    if isinstance(err, (ValueError, TypeError))
                    else f"its factory raised {first_line(err)}"
                )
                shape = f"{where} (d_model {d_model}, {n_layers} layers)"
                raise BenchError(
                    f"model {model_name(entry.name, entry.display)!r} cannot be built at {shape}: {why}"
                ) from None
            if entry.state_passing and not getattr(model, "supports_state_passing", False):
                raise BenchError(
                    f"model {entry.display!r} sets state_passing but cannot continue from a state with "
                    "gradients (its mixers lack forward_from, or its backend's kernels do)"
                )


def check_calls(cells: list[AnyCell]) -> None:
    """Each distinct model of ``cells`` (name, arguments, shape) built once on the CPU and its calls the
    cells make run once on a short input: an exception or logits of the wrong shape refuse the sweep."""
    probes: dict[str, tuple[AnyCell, set[str], int]] = {}
    for cell in cells:
        kwargs = cell.build_kwargs()
        ident = json.dumps([cell.model, cell.label, kwargs], sort_keys=True, default=str)
        first, calls, length = probes.get(ident, (cell, set(), PROBE_LEN))
        probes[ident] = (first, calls | CALLS[cell.mode], min(length, cell.length))
    for cell, calls, length in probes.values():
        _probe(cell, calls, length)


def _probe(cell: AnyCell, calls: set[str], seq_len: int) -> None:
    on_cuda = cell.device == "cuda"
    name = model_name(cell.model, cell.label)
    try:
        torch.manual_seed(cell.seed)
        model = build(cell.model, **cell.build_kwargs()).float().eval()
        check_logits(model, name, cell.vocab_size, calls, seq_len)
    except WrongLogits:
        raise
    except BenchError:
        if on_cuda:
            return  # a call that fails on the CPU may well run on the GPU: its cells will tell
        raise
    except Exception as err:  # noqa: BLE001 - the factory's, or memory: the cells will say which
        if is_oom(err) or on_cuda:
            return
        raise BenchError(f"model {name!r}: its factory raised {first_line(err)}") from None
