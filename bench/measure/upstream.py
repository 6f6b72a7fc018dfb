"""The upstream packages' own pure-PyTorch reference functions, loaded without their packages' CUDA parts,
for checking this project's operators against them (``bench validate`` and the tests).

Each loader returns the function, or None when the package is not installed. Install them on a CPU
machine with ``scripts/install_cpu_references.sh``.

Only the reference files are loaded, not the packages' ``__init__`` (which pull in Triton and, for
mamba-ssm, tilelang and CUTLASS: 12 s of imports for functions that need only torch and einops):

* fla: ``fla/ops/delta_rule/naive.py`` and ``fla/ops/gated_delta_rule/naive.py`` import only torch
  and einops, so they are loaded by file path from the installed package.
* mamba-ssm: its reference modules import siblings (``mamba_ssm.ops.triton...``), so ``mamba_ssm`` is
  stood in by an empty package whose search path is the installed one, for the time of the import.
  ``selective_scan_interface`` imports the compiled ``selective_scan_cuda`` at module level, which a CPU
  install does not build; an empty stand-in module takes its place in ``sys.modules`` (only so that
  the file imports: the reference functions never call it).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

INSTALL_HINT = "run scripts/install_cpu_references.sh"


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _load_file(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _fla_naive(op: str) -> types.ModuleType | None:
    root = _package_dir("fla")
    if root is None:
        return None
    path = root / "ops" / op / "naive.py"
    if path.exists():
        return _load_file(f"_upstream_fla_{op}_naive", path)
    return importlib.import_module(f"fla.ops.{op}.naive")  # the layout changed: go through the package


def fla_delta_rule_recurrence() -> Callable | None:
    """``delta_rule_recurrence(q, k, v, beta, initial_state=None, output_final_state=True)``,
    [B, H, T, D] layout, computes in float32."""
    module = _fla_naive("delta_rule")
    return None if module is None else module.delta_rule_recurrence


def fla_delta_rule_chunkwise() -> Callable | None:
    """``delta_rule_chunkwise(q, k, v, beta, chunk_size=32)``, T divisible by chunk_size, no initial state."""
    module = _fla_naive("delta_rule")
    return None if module is None else module.delta_rule_chunkwise


def fla_gated_delta_rule_recurrence() -> Callable | None:
    """``naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=None, initial_state=None,
    output_final_state=False)``, [B, T, H, D] layout, computes in float32."""
    module = _fla_naive("gated_delta_rule")
    return None if module is None else module.naive_recurrent_gated_delta_rule


@functools.cache
def _mamba_module(name: str) -> types.ModuleType | None:
    root = _package_dir("mamba_ssm")
    if root is None:
        return None
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    full_name = f"mamba_ssm.{name}"
    if "mamba_ssm" in sys.modules:  # already really imported (or a stand-in is in place)
        return importlib.import_module(full_name)
    stand_in = types.ModuleType("mamba_ssm")
    stand_in.__path__ = [str(root)]
    sys.modules["mamba_ssm"] = stand_in
    try:
        return importlib.import_module(full_name)
    finally:
        # a later real `import mamba_ssm` runs the package's own __init__ and reuses the loaded modules
        del sys.modules["mamba_ssm"]


def mamba_selective_scan_ref() -> Callable | None:
    """``selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False)``, computes in float32."""
    module = _mamba_module("ops.selective_scan_interface")
    return None if module is None else module.selective_scan_ref


def mamba_selective_state_update_ref() -> Callable | None:
    """``selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
    dt_softplus=False)``, updates ``state`` in place and returns the output."""
    module = _mamba_module("ops.triton.selective_state_update")
    return None if module is None else module.selective_state_update_ref


def mamba_ssd_minimal_discrete() -> Callable | None:
    """``ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None)``, length divisible by
    block_len, initial_states (b, 1, H, P, N)."""
    module = _mamba_module("modules.ssd_minimal")
    return None if module is None else module.ssd_minimal_discrete


def fla_naive_chunk_gated_delta_rule() -> Callable | None:
    """``naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, scale=None, initial_state=None,
    output_final_state=False)``, [B, T, H, D] layout, any length, computes in float32."""
    module = _fla_naive("gated_delta_rule")
    return None if module is None else module.naive_chunk_gated_delta_rule


LOADERS = {
    "fla": (
        fla_delta_rule_recurrence,
        fla_delta_rule_chunkwise,
        fla_gated_delta_rule_recurrence,
        fla_naive_chunk_gated_delta_rule,
    ),
    "mamba-ssm": (mamba_selective_scan_ref, mamba_selective_state_update_ref, mamba_ssd_minimal_discrete),
}
