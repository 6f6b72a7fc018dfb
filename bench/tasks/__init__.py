"""Synthetic tasks by name, for training models from scratch and measuring what they recall.

A task is a :class:`~bench.tasks.base.Task` subclass with a pydantic ``Config``, registered with
``@register_task("name")`` (from ``bench.registry``) in a module of this package: every module here is
imported when a task is first looked up, so a new file is all a new task needs.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from bench.errors import BenchError
from bench.registry import TASKS
from bench.tasks.base import IGNORE, Task, TaskConfig


def list_tasks() -> list[str]:
    return TASKS.names()


def make_task(name: str, args: dict[str, Any] | None = None) -> Task:
    """The task ``name`` with its config validated from ``args``; a bad name or argument is a BenchError."""
    cls = TASKS.get(name).load()
    try:
        config = cls.Config.model_validate(args or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(args)"
        kind = "unknown argument" if first["type"] == "extra_forbidden" else "argument"
        raise BenchError(f"task {name!r}: {kind} {where!r}: {first['msg']}") from None
    return cls(config)


__all__ = ["IGNORE", "Task", "TaskConfig", "list_tasks", "make_task"]
