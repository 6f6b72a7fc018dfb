"""The upstream packages' reference functions for the tests: the loaders live in the harness
(``bench/measure/upstream.py``, which ``bench validate`` uses too); ``require`` turns a missing reference
into a test failure in CI (env CI=true), where the install script has run, and into a skip elsewhere."""

from __future__ import annotations

import os
from collections.abc import Callable

from bench.measure.upstream import (  # noqa: F401 - the tests' names for the loaders
    INSTALL_HINT,
    LOADERS,
    _fla_naive,
    _mamba_module,
    fla_delta_rule_chunkwise,
    fla_delta_rule_recurrence,
    fla_gated_delta_rule_recurrence,
    fla_naive_chunk_gated_delta_rule,
    mamba_selective_scan_ref,
    mamba_selective_state_update_ref,
    mamba_ssd_minimal_discrete,
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(reference: Callable[[], Callable | None], package: str) -> Callable:
    """The reference function, or fail (in CI) / skip (elsewhere) with the way to install it."""
    import pytest

    function = reference()
    if function is None:
        message = f"{package} is not installed, so its reference cannot be compared against: {INSTALL_HINT}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return function


def check_all() -> None:
    """Load every reference or raise: what the install script runs last."""
    for package, functions in LOADERS.items():
        for load in functions:
            if load() is None:
                raise RuntimeError(f"{package}: {load.__name__} did not load")
            print(f"ok  {package}: {load.__name__}")
