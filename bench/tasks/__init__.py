"""Synthetic tasks by name, for training models from scratch and measuring what they recall.

Adding a task is one file: a :class:`~bench.tasks.base.Task` subclass with a pydantic ``Config``,
decorated with ``@register_task("name")``, and its module added to ``BUILTIN_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from bench.errors import BenchError
from bench.tasks.base import IGNORE, Task, TaskConfig

BUILTIN_MODULES = ("bench.tasks.mqar", "bench.tasks.niah")

_tasks: dict[str, type[Task]] = {}
_loaded = False


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorate(cls: type[Task]) -> type[Task]:
        if name in _tasks and _tasks[name] is not cls:
            raise BenchError(f"task name {name!r} is registered twice")
        cls.name = name
        _tasks[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def list_tasks() -> list[str]:
    _load_builtins()
    return sorted(_tasks)


def make_task(name: str, args: dict[str, Any] | None = None) -> Task:
    """The task ``name`` with its config validated from ``args``; a bad name or argument is a BenchError."""
    _load_builtins()
    cls = _tasks.get(name)
    if cls is None:
        raise BenchError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    try:
        config = cls.Config.model_validate(args or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(args)"
        kind = "unknown argument" if first["type"] == "extra_forbidden" else "argument"
        raise BenchError(f"task {name!r}: {kind} {where!r}: {first['msg']}") from None
    return cls(config)


__all__ = ["IGNORE", "Task", "TaskConfig", "list_tasks", "make_task", "register_task"]
