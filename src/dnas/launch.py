"""How this process was launched: ``torchrun`` sets WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE. Read
without importing torch, so the CLI can ask before (or without) loading it."""
from __future__ import annotations

import os

from .errors import DnasError


def env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DnasError(f"environment variable {name}={value!r} is not an integer") from None


def world_size() -> int:
    """The number of processes of this launch (1 without torchrun)."""
    return env_int("WORLD_SIZE") or 1


def reports_errors() -> bool:
    """Whether this process prints the CLI's one-line errors. Under torchrun every process of a machine runs the
    same command on the same files and so fails the same way on bad input: only its local rank 0 says so (one
    line, not one per process). Other launchers (no LOCAL_WORLD_SIZE) print on every rank."""
    try:
        if world_size() <= 1 or env_int("LOCAL_WORLD_SIZE") is None:
            return True
        return (env_int("LOCAL_RANK") or 0) == 0
    except DnasError:
        return True
