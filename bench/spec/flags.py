"""``python -m bench run``'s sweep flags, derived from the sweep schema (bench/spec/config.py): each field
that declares a flag becomes one, with the field's description as its help, and what the user gives is
laid over the sweep's data field by field, then validated with the rest, so that every value is checked
once, by the schema, and an error names the flag typed.

Lists are comma-separated (``--seq-lens 256,1024``); ``--models`` takes names, ``LABEL=MODEL`` and
``package.module:factory`` strings; ``--tasks`` takes task names or the labels of tasks the sweep already
lists (those keep their arguments); a switch (``--compile``) sets its field true.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from bench.errors import BenchError
from bench.spec.config import ModelEntry, SweepSpec, TaskEntry


@dataclass(frozen=True)
class SweepFlag:
    """One flag: the field it sets (``path``, e.g. ("accuracy", "train_len")), how its text is read
    (``kind``), its help and, for a choice, the choices."""

    path: tuple[str, ...]
    option: str
    help: str
    kind: str  # "ints", "names", "models", "tasks", "int", "float", "switch", "choice", "text"
    choices: tuple[str, ...] | None
    shapes: bool

    @property
    def dest(self) -> str:
        return "sweep__" + "__".join(self.path)

    @property
    def field(self) -> str:
        return ".".join(self.path)


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> X; Annotated[X, ...] -> X."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    return annotation


def _kind(annotation: Any) -> tuple[str, tuple[str, ...] | None]:
    annotation = _unwrap(annotation)
    if get_origin(annotation) is list:
        item = _unwrap(get_args(annotation)[0])
        if item is ModelEntry:
            return "models", None
        if item is TaskEntry:
            return "tasks", None
        if get_origin(item) is Literal:
            return "names", tuple(get_args(item))
        if item is int:
            return "ints", None
        return "names", None
    if get_origin(annotation) is Literal:
        return "choice", tuple(get_args(annotation))
    if annotation is bool:
        return "switch", None
    if annotation is int:
        return "int", None
    if annotation is float:
        return "float", None
    return "text", None


def _walk(model: type[BaseModel], prefix: tuple[str, ...]) -> list[SweepFlag]:
    flags = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        annotation = _unwrap(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and not extra:
            flags += _walk(annotation, (*prefix, name))  # a table of the sweep file: [accuracy]
            continue
        if "flag" not in extra:
            continue
        kind, choices = ("text", None) if extra.get("raw") else _kind(field.annotation)
        flags.append(
            SweepFlag(
                (*prefix, name),
                extra["flag"],
                field.description or "",
                kind,
                choices,
                bool(extra.get("shapes")),
            )
        )
    return flags


def sweep_flags() -> list[SweepFlag]:
    """Every flag the sweep schema declares, in the schema's order."""
    return _walk(SweepSpec, ())


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    for flag in sweep_flags():
        # argparse formats help with %: a schema description's "5%" would break `--help`
        text = flag.help.replace("%", "%%")
        metavar = flag.option.lstrip("-").replace("-", "_").upper()  # not the dotted dest
        if flag.kind == "switch":
            parser.add_argument(flag.option, dest=flag.dest, action="store_true", default=None, help=text)
        elif flag.kind == "choice":
            parser.add_argument(flag.option, dest=flag.dest, choices=flag.choices, help=text)
        else:
            parser.add_argument(flag.option, dest=flag.dest, help=text, metavar=metavar)


def _items(flag: SweepFlag, text: str) -> list[str]:
    """A list flag must name something: an unset shell variable is not "everything"."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise BenchError(
            f"{flag.option} {text!r} lists nothing; leave the flag out to use the sweep's own list"
        )
    return items


def _number(flag: SweepFlag, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise BenchError(f"{flag.option} takes {what}, got {text!r}") from None


def _value(flag: SweepFlag, text: Any, data: dict[str, Any]) -> Any:
    """The field's value from the flag's text (the schema validates it afterwards)."""
    if flag.kind in ("switch", "choice", "text"):
        return text
    if flag.kind == "int":
        return _number(flag, text, int)
    if flag.kind == "float":
        return _number(flag, text, float)
    items = _items(flag, text)
    if flag.kind == "ints":
        try:
            return [int(x) for x in items]
        except ValueError:
            raise BenchError(f"{flag.option} takes comma-separated integers, got {text!r}") from None
    if flag.kind == "tasks":  # a task the sweep lists keeps its arguments there
        known = {TaskEntry.model_validate(t).display: t for t in data.get("tasks") or []}
        return [known.get(n, {"name": n}) for n in items]
    return items  # names, models ("LABEL=MODEL" strings are read by the schema)


def apply_sweep_flags(
    args: argparse.Namespace, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The sweep's data with the flags given laid over it, and what was given: field path -> flag."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    given: dict[str, str] = {}
    for flag in sweep_flags():
        text = getattr(args, flag.dest, None)
        if text is None:
            continue
        target = data
        for part in flag.path[:-1]:
            target = target.setdefault(part, {})
        target[flag.path[-1]] = _value(flag, text, data)
        given[flag.field] = flag.option
    return data, given


def shaping(given: dict[str, str]) -> bool:
    """Whether any flag given changes what the sweep measures."""
    shapes = {f.field for f in sweep_flags() if f.shapes}
    return bool(shapes & set(given))


def field_text(field: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    """A changed field as the user knows it: its flag where it has one (``--timeout``), else its key in a
    sweep file, with the value it had and the one it has now."""
    option = next((f.option for f in sweep_flags() if f.field == field), field)

    def value(data: dict[str, Any]) -> str:
        for part in field.split("."):
            data = data.get(part) if isinstance(data, dict) else None
        text = json.dumps(data, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    return f"{option} was {value(before)}, now {value(after)}"
