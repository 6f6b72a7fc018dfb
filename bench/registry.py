"""One registry for everything the harness looks up by name: models and tasks.

An entry is an object registered under a name with the metadata declared beside it
(``@models.register("mamba", config=MambaConfig, backends=..., reference="torch-recurrent")``), or a lazy
``"package.module:object"`` string imported on first use. Three sources fill a registry:

- built-ins, discovered by importing every module of the registry's built-in packages (``models`` and
  ``baselines`` for models, ``bench.tasks`` for tasks, ...): a module registers its objects with the
  registry's decorator, or, where it must not know the harness (the model zoo), defines catalog entries
  that the registry collects (``models.modules.catalog.ModelFamily``: any module-level object with a
  ``name``, a ``build``, a ``config`` and ``backends``); a built-in that fails to import is an error that
  names it, never a silent gap;
- installed packages, through an entry-point group (``titans_bench.models``);
- ``"package.module:object"`` strings, accepted wherever a name is.

This module imports neither torch nor any model: it is the bottom layer every other one may use.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bench.errors import BenchError


@dataclass
class Entry:
    """A registered object: ``target`` is the object, or the ``"package.module:object"`` string it is
    imported from on first use; ``metadata`` is what was declared at registration."""

    name: str
    target: Any
    metadata: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        if isinstance(self.target, str):
            self.target = import_object(self.target, self.name)
        return self.target

    def get(self, key: str, default: Any = None) -> Any:
        """Declared metadata, else an attribute of the same name on the object (how plug-ins declare it)."""
        if key in self.metadata:
            return self.metadata[key]
        return getattr(self.load(), key, default)


def import_object(spec: str, name: str | None = None) -> Any:
    """The object named by ``"package.module:object"`` or ``"path/to/file.py:object"``; a BenchError that
    says why when it cannot be had."""
    module_name, _, attr = spec.rpartition(":")
    what = f" ({name!r})" if name and name != spec else ""
    if not module_name or not attr:
        raise BenchError(f"{spec!r}{what} must look like 'package.module:object' or 'path/to/file.py:object'")
    try:
        module = (
            _load_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
        )
    except ModuleNotFoundError as err:
        hint = ""
        if "/" in module_name or "\\" in module_name:
            hint = "; a file path must end in .py"
        elif err.name == module_name.partition(".")[0]:
            hint = "; is its directory on PYTHONPATH (or give the file's path: path/to/file.py:object)?"
        raise BenchError(f"cannot import module {module_name!r} for {spec!r}{what}: {err}{hint}") from None
    except SyntaxError as err:
        raise BenchError(
            f"module {module_name!r} for {spec!r} has a syntax error: {err.filename}:{err.lineno}: {err.msg}"
        ) from None
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001 - a module may fail to import in any way; say which one
        problem = f"{type(err).__name__}: {err}"
        raise BenchError(f"module {module_name!r} for {spec!r} failed to import: {problem}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise BenchError(f"module {module_name!r} has no attribute {attr!r} ({spec!r}{what})")
    return obj


def _load_file(path: str) -> Any:
    """A plug-in given by file path, loaded once per process under a name derived from its path."""
    file = Path(path).resolve()
    if file.is_dir():
        raise BenchError(f"plug-in file {path!r} is a directory, not a Python file")
    if not file.is_file():
        raise BenchError(f"plug-in file {path!r} does not exist")
    module_name = "titans_bench_plugin_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


CATALOG_FIELDS = ("name", "build", "config", "backends")
# What a catalog entry may declare besides its name and builder: the registry's model metadata.
CATALOG_METADATA = ("config", "backends", "reference", "reference_args", "context", "size_knob")


def is_catalog_entry(obj: Any) -> bool:
    """A model family described as plain data (``models.modules.catalog.ModelFamily``), recognised by its
    fields so that the registry never imports the models."""
    return not isinstance(obj, type) and all(hasattr(obj, f) for f in CATALOG_FIELDS)


def catalog_entry(name: str, family: Any) -> Entry:
    """The registry entry of a catalog entry: its builder, with its declared facts as metadata."""
    metadata = {k: getattr(family, k) for k in CATALOG_METADATA if getattr(family, k, None) is not None}
    return Entry(name, family.build, metadata)


class Registry:
    """Names -> entries of one kind (``"model"``, ``"task"``, ...)."""

    def __init__(
        self,
        kind: str,
        builtin_packages: tuple[str, ...] = (),
        entry_point_group: str | None = None,
        collect_catalog: bool = False,
    ):
        self.kind = kind
        self.builtin_packages = builtin_packages
        self.entry_point_group = entry_point_group
        self.collect_catalog = collect_catalog
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def register(self, name: str, **metadata: Any) -> Callable[[Any], Any]:
        """Decorator: ``@registry.register("name", **metadata)`` above a function or class."""

        def decorate(obj: Any) -> Any:
            self.add(name, obj, **metadata)
            return obj

        return decorate

    def add(self, name: str, target: Any, **metadata: Any) -> None:
        """Register ``target`` (an object or a ``"package.module:object"`` string) under ``name``."""
        known = self._entries.get(name)
        if known is not None and known.target is not target:
            raise BenchError(f"{self.kind} name {name!r} is registered twice")
        self._entries[name] = Entry(name, target, metadata)

    def _discover(self) -> None:
        """Import every module of the built-in packages once (subpackages included), so their
        ``@register`` lines run and their catalog entries are collected."""
        if self._discovered:
            return
        self._discovered = True
        for package_name in self.builtin_packages:
            package = importlib.import_module(package_name)
            for info in pkgutil.walk_packages(package.__path__, package_name + "."):
                try:
                    module = importlib.import_module(info.name)
                except Exception as err:  # noqa: BLE001 - name the module that broke
                    self._discovered = False
                    problem = f"{type(err).__name__}: {err}"
                    raise BenchError(
                        f"built-in {self.kind} module {info.name!r} failed to import: {problem}"
                    ) from err
                if self.collect_catalog:
                    self._collect(module)

    def _collect(self, module: Any) -> None:
        for value in vars(module).values():
            if is_catalog_entry(value) and isinstance(value.name, str):
                known = self._entries.get(value.name)
                if known is None:
                    self._entries[value.name] = catalog_entry(value.name, value)
                elif known.target is not value.build:
                    raise BenchError(f"{self.kind} name {value.name!r} is registered twice")

    def _entry_points(self) -> dict[str, Any]:
        """Installed packages' entry points, read afresh so a new install is seen at once."""
        if self.entry_point_group is None:
            return {}
        return {ep.name: ep for ep in entry_points(group=self.entry_point_group)}

    def names(self) -> list[str]:
        """Sorted names of every registered entry (built-ins and entry points)."""
        self._discover()
        return sorted(set(self._entries) | set(self._entry_points()))

    def get(self, name: str) -> Entry:
        """The entry for a registered name or a ``"package.module:object"`` string."""
        if ":" in name:
            if self.collect_catalog:
                target = import_object(name)
                if is_catalog_entry(target):  # "pkg.module:FAMILY": the family, with what it declares
                    return catalog_entry(name, target)
                return Entry(name, target)
            return Entry(name, name)
        self._discover()
        if name in self._entries:
            return self._entries[name]
        plugin = self._entry_points().get(name)
        if plugin is None:
            raise BenchError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
        try:
            target = plugin.load()
        except Exception as err:  # noqa: BLE001 - a plug-in may fail in any way; say which one
            raise BenchError(f"plug-in {self.kind} {name!r} ({plugin.value}) failed to load: {err}") from None
        entry = catalog_entry(name, target) if self.collect_catalog and is_catalog_entry(target) else None
        self._entries[name] = entry or Entry(name, target)
        return self._entries[name]


# -- models ------------------------------------------------------------------------------------------------
# A model entry's metadata (models.modules.catalog.ModelFamily documents each): ``config`` (the family's
# pydantic config class, which validates a build's arguments), ``backends`` (a function -> {backend: True
# or the reason it cannot run here}), ``reference`` (the slow, obviously correct backend `bench validate`
# checks the others against) and ``reference_args``, ``context`` (the argument that bounds its attention
# context) and ``size_knob``. A plug-in without a config is any factory(vocab_size, d_model, n_layers,
# backend="auto", **options); it may declare ``available_backends`` and ``reference_backend`` as
# attributes of the factory, or be a ModelFamily itself.

MODELS = Registry(
    "model",
    builtin_packages=("baselines", "models"),
    entry_point_group="titans_bench.models",
    collect_catalog=True,
)


def register(name: str, **metadata: Any) -> Callable[[Any], Any]:
    """Decorator: ``@register("mamba", config=MambaConfig, backends=..., reference="torch-recurrent")``."""
    return MODELS.register(name, **metadata)


def list_models() -> list[str]:
    """Sorted names of every registered model (built-ins and entry points)."""
    return MODELS.names()


def get_factory(name: str) -> Callable[..., Any]:
    """The factory for a registered name or a ``"package.module:factory"`` string."""
    return MODELS.get(name).load()


def build(name: str, **kwargs: Any):
    """Build a model by name: ``bench.build("transformer", vocab_size=256, d_model=64, n_layers=2)``.
    Arguments are checked against the family's config (or the plug-in factory's signature) first, so a typo
    or a wrong type is named instead of surfacing deep inside."""
    entry = MODELS.get(name)
    factory = entry.load()
    config_class = entry.metadata.get("config")
    if config_class is not None:
        return factory(make_config(name, config_class, kwargs))
    _check_signature(name, factory, kwargs)
    model = factory(**kwargs)
    if model is None:
        raise BenchError(f"model {name!r}: its factory returned None instead of a model")
    return model


def model_config(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every setting a model is built with: its family's config with the defaults filled in (what a report
    prints so that a reader sees the whole model), or for a plug-in the factory's defaults and the
    arguments given."""
    entry = MODELS.get(name)
    config_class = entry.metadata.get("config")
    if config_class is not None:
        return make_config(name, config_class, kwargs).model_dump(mode="json")
    defaults = {k: v for k, v in model_parameters(name).items() if v is not inspect.Parameter.empty}
    return {**defaults, **kwargs}


def make_config(name: str, config_class: Any, kwargs: dict[str, Any]) -> Any:
    """The family's config from keyword arguments; a BenchError naming the first bad one."""
    from pydantic import ValidationError  # only where a config is used: `bench list` stays light

    try:
        return config_class.model_validate(kwargs)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            unknown = sorted({str(e["loc"][0]) for e in err.errors() if e["type"] == "extra_forbidden"})
            raise BenchError(
                f"model {name!r} does not accept argument(s) {', '.join(unknown)}; "
                f"it accepts: {', '.join(sorted(config_class.model_fields))}"
            ) from None
        raise BenchError(f"model {name!r}: argument {where!r}: {first['msg']}") from None


def model_parameters(name: str) -> dict[str, Any]:
    """Argument name -> default of a model (from its config, or its factory's signature)."""
    entry = MODELS.get(name)
    config_class = entry.metadata.get("config")
    if config_class is not None:
        return {k: f.default for k, f in config_class.model_fields.items()}
    try:
        params = inspect.signature(entry.load()).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}


def _check_signature(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
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
    """Backend name -> True if it can run here, else the reason it cannot; {} when none are declared."""
    probe = MODELS.get(name).get("backends") or MODELS.get(name).get("available_backends")
    return probe() if callable(probe) else {}


def reference_backend(name: str) -> str | None:
    """The slow, obviously correct backend of a model's family, or None when none is declared."""
    entry = MODELS.get(name)
    return entry.get("reference") or entry.get("reference_backend")


def context_argument(name: str) -> tuple[str, Any] | None:
    """(the argument that bounds a model's attention context, its default) or None for a model that
    declares none (no attention, or a plug-in that says nothing)."""
    arg = MODELS.get(name).metadata.get("context")
    if arg is None:
        return None
    return arg, model_parameters(name).get(arg)


# -- tasks -------------------------------------------------------------------------------------------------
# A task entry is a Task subclass (bench.tasks.base) registered with ``@register_task("name")``.

TASKS = Registry("task", builtin_packages=("bench.tasks",))

# -- scorers -----------------------------------------------------------------------------------------------
# A scorer entry is a Scorer subclass (bench.scoring.base) registered with ``@register_scorer("name")``;
# a task names its scorer.

SCORERS = Registry("scorer", builtin_packages=("bench.scoring",))

# -- report sections ---------------------------------------------------------------------------------------
# A section entry renders the records of one scorer in REPORT.md (bench.analysis.sections); a scorer names
# its section.

SECTIONS = Registry("report section", builtin_packages=("bench.analysis.sections",))


def register_task(name: str, **metadata: Any) -> Callable[[Any], Any]:
    def decorate(cls: Any) -> Any:
        cls.name = name
        return TASKS.register(name, **metadata)(cls)

    return decorate
