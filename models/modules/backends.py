"""Choosing the kernels a model runs, and wrapping an upstream package's layer as a mixer.

A backend is fixed when the model is built and recorded by the model (``model.backend``): "auto" takes the
upstream kernels where they can run and the pure-PyTorch chunked path otherwise, and an explicit upstream
backend that cannot run here is an error, never a silent fallback.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from models.modules.lm import Mixer

# The pure-PyTorch paths every recurrent family has: the fast chunked form and the per-token reference.
TORCH_BACKENDS = ("torch-chunked", "torch-recurrent")


def upstream_problem(package: str, modules: tuple[str, ...]) -> str | None:
    """Why the upstream ``package``'s kernels cannot run here, or None when they can. Imports ``modules``
    only when a CUDA device is there (on the CPU the import is slow and fails for the same reason)."""
    if not torch.cuda.is_available():
        return f"{package} needs a CUDA device and torch.cuda.is_available() is False"
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install 'titans-bench[gpu]')"
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # an ImportError, or an extension built against another torch or CUDA
            return f"{module} does not import: {type(err).__name__}: {err}"
    return None


def resolve_backend(requested: str, upstream: str, problem: Callable[[], str | None]) -> str:
    """The backend a model really runs, fixed at build time: "auto" is ``upstream`` where it can run, else
    "torch-chunked"; an explicit ``upstream`` that cannot run here is an error, never a fallback."""
    choices = ("auto", *TORCH_BACKENDS, upstream)
    if requested not in choices:
        raise ValueError(f"unknown backend {requested!r}; choose from {', '.join(choices)}")
    if requested == "auto":
        return upstream if problem() is None else "torch-chunked"
    if requested == upstream:
        reason = problem()
        if reason is not None:
            raise ValueError(f"backend {upstream!r} cannot run here: {reason}")
    return requested


def torch_or_upstream_backends(upstream: str, problem: Callable[[], str | None]) -> dict[str, bool | str]:
    """What ``bench list`` and ``bench validate`` show for a family with both kinds of path: backend ->
    True, or the reason it cannot run here."""
    return {"auto": True, "torch-chunked": True, "torch-recurrent": True, upstream: problem() or True}


def _drop_layer_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "layer.")]:
        state_dict[prefix + key[len(prefix) + len("layer.") :]] = state_dict.pop(key)


def _add_layer_prefix(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "layer.")]:
        state_dict[prefix + "layer." + key[len(prefix) :]] = state_dict.pop(key)


class UpstreamMixer(Mixer):
    """An upstream package's own layer as the mixer. Its state_dict leaves out the "layer." level, so the
    keys are the layer's own parameter names, the same as our torch mixers': weights move between
    backends, and the upstream kernel can be checked against our path with identical weights."""

    def __init__(self, layer: nn.Module, backend: str):
        super().__init__()
        self.layer = layer
        self.backend = backend
        self.register_state_dict_post_hook(_drop_layer_prefix)
        self.register_load_state_dict_pre_hook(_add_layer_prefix)
