"""Checking JSON-like values (run files, checkpoints) against type hints: one DnasError naming the field.

``check_fields(obj, {"epochs": int, "lr": float | None}, "RUN/config.json")`` says ``RUN/config.json: epochs
must be an integer, got "ten"``; the hints are those of dataclass fields (``check_settings``) or schema tables
(``rundir.RESULT_FIELDS`` and the like), down to the elements of lists and objects.
"""
from __future__ import annotations

import types
import typing
from typing import Any, Iterator, Mapping

from .errors import DnasError
from .io import to_json


def _problem(value: Any, hint: Any, name: str) -> str | None:
    """What is wrong with the JSON value ``name`` for the type ``hint`` (a dataclass field annotation or a
    schema entry), down to the element of a list or object; None when it fits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        ok = any(_problem(value, a, name) is None for a in args)
    elif origin is tuple:  # saved as a JSON list
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return _first(_problem(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        ok = False
    elif hint is list or origin is list:
        if isinstance(value, list):
            return _first(_problem(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)) if args else None
        ok = False
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return _first(_problem(v, args[1], f"{name}.{k}") for k, v in value.items()) if args else None
        ok = False
    elif hint is float:  # JSON writes a float set as a whole number without its ".0"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = not isinstance(hint, type) or isinstance(value, hint)
    return None if ok else f"{name} must be {_describe(hint)}, got {_show(value)}"


def _first(problems: Iterator[str | None]) -> str | None:
    return next((p for p in problems if p), None)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} {'numbers' if all(a is float for a in args) else 'values'}"
    if hint is list or origin is list:
        return "a list"
    if hint is dict or origin is dict:
        return "a JSON object"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_fields(obj: Any, fields: Mapping[str, Any], where: Any, *, what: str = "a JSON object",
                 required: tuple[str, ...] = (), prefix: str = "") -> dict[str, Any]:
    """``obj`` must be a dict whose keys named in ``fields`` hold values of those types (other keys are
    free) and that has the ``required`` keys; otherwise one DnasError: ``where: KEY must be ..., got ...``."""
    if not isinstance(obj, dict):
        raise DnasError(f"{where}: {f'{prefix[:-1]} must be ' if prefix else 'not '}{what}, got {_show(obj)}")
    for key, hint in fields.items():
        problem = _problem(obj[key], hint, f"{prefix}{key}") if key in obj else None
        if problem:
            raise DnasError(f"{where}: {problem}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise DnasError(f"{where}: {prefix}{missing[0]} is missing")
    return obj


def _show(value: Any) -> str:
    try:
        text = to_json(value)
    except (TypeError, ValueError):  # a checkpoint's value (a tensor, a tuple of arrays): its type says enough
        return type(value).__name__
    return text if len(text) <= 40 else f"{text[:37]}..."


def check_settings(config: Any, settings: type, where: Any) -> dict[str, Any]:
    """A saved config (``settings``: its dataclass, e.g. SearchConfig, TrainConfig): every field it holds has
    its annotated type, and it holds no other key (a typo in a hand edit would otherwise be ignored). Fields
    added since a run was written may be missing."""
    hints = typing.get_type_hints(settings)
    check_fields(config, hints, where, what="a dnas run configuration")
    unknown = sorted(k for k in config if k not in hints)
    if unknown:
        raise DnasError(f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(_show, unknown))}")
    return config
