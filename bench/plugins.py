"""A model's own errors, told apart from the harness's.

Every model, a built-in or a plug-in, is code the harness calls: its factory, ``forward``, ``prefill``,
``step``. An exception from one of them is that model's, and the user needs to know which model and
which call, in one line, not an "internal error" pointing into the harness. Here:

- :func:`call_of` reads an exception's traceback for the call of the model it came from;
- :func:`build_to_check` builds a model on the meta device (no memory, no compute) to check its
  arguments and shapes, and a model whose construction needs real tensors (it reads a value, say) for
  real on the CPU instead, saying so once;
- :func:`check_logits` runs each call a sweep will time once on a short input and refuses logits whose
  shape is not what the harness relies on, naming the expected shape.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError
from bench.failures import is_oom
from bench.registry import build

_HARNESS = str(Path(__file__).resolve().parent) + os.sep
_TORCH = str(Path(torch.__file__).resolve().parent) + os.sep
_STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve())
_REGISTRY = str(Path(__file__).resolve().parent / "registry.py")


def _not_the_model(filename: str) -> bool:
    """Frames of the harness, of torch or of the standard library (installed packages aside: a plug-in
    may be one), and generated code."""
    if filename.startswith("<"):
        return True
    path = str(Path(filename).resolve())
    if path.startswith((_HARNESS, _TORCH)):
        return True
    return path.startswith(_STDLIB) and "-packages" not in path


def call_of(err: BaseException) -> str | None:
    """The call of a model an exception came from ("factory", "forward", "prefill", "step", ...): the
    outermost frame of the traceback that is the model's own code; None when it came from the harness."""
    previous = None
    for frame in traceback.extract_tb(err.__traceback__):
        if _not_the_model(frame.filename):
            previous = frame
            continue
        if previous is not None and str(Path(previous.filename).resolve()) == _REGISTRY:
            return "factory"
        return frame.name
    return None


class WrongLogits(BenchError):
    """A model's call returned something other than logits of the shape the harness relies on."""


def model_name(name: str, label: str | None = None) -> str:
    """How an error names a model: its label, and what it is when that says more (a plug-in's path)."""
    return name if label in (None, name) else f"{label} ({name})"


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _blame(model: str, call: str, what: str) -> str:
    return f"model {model!r}: {'its factory' if call == 'factory' else call} raised {what}"


def model_error(model: str, call: str, err: BaseException) -> str:
    """The one line that blames ``call`` of ``model``."""
    return _blame(model, call, first_line(err))


def describe_failure(err: BaseException, model: str) -> str:
    """A failed cell's error, whole: the model and its call first when the exception came from the
    model's own code."""
    call = call_of(err)
    text = f"{type(err).__name__}: {err}"
    return text if call is None else _blame(model, call, text)


_built_for_real: set[str] = set()


def build_to_check(name: str, label: str, **kwargs: Any):
    """The model ``name`` built with ``kwargs`` on the meta device; one that cannot be is built for real
    on the CPU (one line on stderr says so, once per model). A failure of the real build propagates."""
    try:
        with torch.device("meta"):
            return build(name, **kwargs)
    except BenchError:
        raise
    except Exception as meta_err:  # noqa: BLE001 - any failure on meta is retried for real, which decides
        model = build(name, **kwargs)
        if label not in _built_for_real:
            _built_for_real.add(label)
            print(
                f"note: model {label!r} cannot be built on the meta device ({first_line(meta_err)}); "
                "built for real on the CPU to check it",
                file=sys.stderr,
            )
        return model


def _call(model: str, call: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as err:
        if is_oom(err):
            raise
        raise BenchError(model_error(model, call, err)) from None


def _logits(model: str, call: str, out: Any, expected: tuple[int, ...], layout: str) -> Any:
    """The state ``call`` returned beside its logits (None for forward), once the logits have the shape
    ``expected`` (``layout`` in words)."""
    state = None
    if call != "forward":
        if not (isinstance(out, tuple) and len(out) == 2):
            raise WrongLogits(
                f"model {model!r}: {call} must return (logits, state), got {type(out).__name__}"
            )
        out, state = out
    if not isinstance(out, torch.Tensor):
        raise WrongLogits(
            f"model {model!r}: {call} returned {type(out).__name__} as its logits, not a tensor"
        )
    if tuple(out.shape) != expected:
        raise WrongLogits(
            f"model {model!r}: {call} returned logits of shape {list(out.shape)}; expected "
            f"{list(expected)} ({layout})"
        )
    return state


def check_logits(model, name: str, vocab_size: int, calls: set[str], seq_len: int, batch: int = 2) -> None:
    """Run ``calls`` ("forward", "prefill", "step") of ``model`` once on ``batch`` x ``seq_len`` tokens and
    refuse logits of another shape than the harness relies on; an exception is the model's, named."""
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    B, T, V = batch, seq_len, vocab_size
    with torch.inference_mode():
        if "forward" in calls:
            _logits(
                name,
                "forward",
                _call(name, "forward", lambda: model(ids)),
                (B, T, V),
                "[batch, seq_len, vocab]",
            )
        if calls & {"prefill", "step"}:
            out = _call(name, "prefill", lambda: model.prefill(ids))
            state = _logits(name, "prefill", out, (B, V), "[batch, vocab]: the last position's")
            if "step" in calls:
                out = _call(name, "step", lambda: model.step(ids[:, -1], state))
                _logits(name, "step", out, (B, V), "[batch, vocab]")
