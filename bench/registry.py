"""Models by name: built-ins registered with ``@register``, any ``"package.module:factory"`` string,
and third-party packages through the ``titans_bench.models`` entry-point group.

A factory is called as ``factory(vocab_size=..., d_model=..., n_layers=..., backend=..., **overrides)``
and returns a model with the interface of :class:`bench.lm.LanguageModel`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from bench.errors import BenchError

ENTRY_POINT_GROUP = "titans_bench.models"

# Modules whose import registers the built-in models. Imported on first use, so `import bench` stays cheap.
BUILTIN_MODULES = (
    "baselines.transformer",
    "baselines.mamba.model",
    "baselines.deltanet.model",
    "models.titans.model",
    "models.titans.mac",
)

_factories: dict[str, Callable[..., Any]] = {}
_loaded = False


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register("mamba")`` above a factory function or model class."""

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _factories and _factories[name] is not factory:
            raise BenchError(f"model name {name!r} is registered twice")
        _factories[name] = factory
        return factory

    return decorate


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            # A built-in family that is not written yet is simply absent; a missing dependency inside
            # one that exists is a real error.
            if err.name is None or not module.startswith(err.name):
                raise


def _plugins() -> dict[str, Any]:
    """Entry points of installed third-party packages, read afresh so a new install is seen at once."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_models() -> list[str]:
    """Sorted names of every registered model (built-ins and entry points)."""
    _load_builtins()
    return sorted(set(_factories) | set(_plugins()))


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BenchError(f"model spec {spec!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BenchError(f"cannot import module {module_name!r} for model {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise BenchError(f"module {module_name!r} has no attribute {attr!r} (model {spec!r})")
    return factory


def get_factory(name: str) -> Callable[..., Any]:
    """The factory for a registered name or a ``"package.module:factory"`` string."""
    if ":" in name:
        return _import_factory(name)
    _load_builtins()
    if name in _factories:
        return _factories[name]
    plugin = _plugins().get(name)
    if plugin is None:
        raise BenchError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        factory = _factories[name] = plugin.load()
    except Exception as err:  # noqa: BLE001 - a plug-in may fail in any way; say which one
        raise BenchError(f"plug-in model {name!r} ({plugin.value}) failed to load: {err}") from None
    return factory


def build(name: str, **kwargs: Any):
    """Build a model by name: ``bench.build("transformer", vocab_size=256, d_model=64, n_layers=2)``."""
    factory = get_factory(name)
    _check_arguments(name, factory, kwargs)
    return factory(**kwargs)


def _check_arguments(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Reject unknown keyword arguments up front, so a typo is named instead of surfacing deep inside."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise BenchError(
            f"model {name!r} does not accept argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )


def describe_backends(name: str) -> dict[str, bool | str]:
    """Backend name -> True if it can run here, else the reason it cannot. A factory declares its
    backends with an ``available_backends()`` attribute; plug-ins without one report nothing."""
    factory = get_factory(name)
    probe = getattr(factory, "available_backends", None)
    return probe() if callable(probe) else {}
