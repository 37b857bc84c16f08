"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits 2."""
from __future__ import annotations

import re
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping


class DnasError(ValueError):
    """Bad input (unknown name, malformed genotype, missing data, impossible size...)."""


class OutOfMemory(DnasError, MemoryError):
    """The sizes asked for do not fit in memory. Still a MemoryError for callers that catch that."""


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM) turned into the same clean stop as Ctrl-C: work stopped, state kept."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


def stop_on_signal(signum: int, frame: Any) -> None:
    """A signal handler: raise ``Terminated`` in the main thread."""
    raise Terminated(signum)


def interrupted_exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal that stopped us, as a shell reports a process killed by it: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + getattr(e, "signum", signal.SIGINT)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is running out of memory: Python's and numpy's MemoryError, CUDA's torch.OutOfMemoryError,
    or the plain RuntimeError that torch's CPU allocator raises ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(e, DnasError):  # already said (OutOfMemory is a MemoryError too)
        return False
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                            or "ALLOC_FAILED" in text)  # cuDNN / cuBLAS workspaces


def _request(e: BaseException) -> str:
    """The size of the allocation that failed, when the message says it: "" or ": could not allocate 40 GB"."""
    text = str(e)
    m = re.search(r"tried to allocate (\d+) bytes", text)  # torch's CPU allocator
    if m:
        return f": could not allocate {int(m.group(1)) / 1e9:.3g} GB"
    m = re.search(r"(?:[Tt]ried to allocate|Unable to allocate) ([\d.]+ [KMGTP]i?B)", text)  # CUDA, numpy
    return f": could not allocate {m.group(1)}" if m else ""


def memory_message(e: BaseException, what: str, sizes: Mapping[str, Any] | None = None, lower: str = "") -> str:
    """One line: ``out of memory WHAT (key value, ...): could not allocate N GB; lower LOWER``."""
    shown = ", ".join(f"{k} {v}" for k, v in (sizes or {}).items() if v is not None)
    return f"out of memory {what}{f' ({shown})' if shown else ''}{_request(e)}{f'; lower {lower}' if lower else ''}"


@contextmanager
def memory_limits(what: str, sizes: Mapping[str, Any], lower: str) -> Iterator[None]:
    """Running out of memory in the block is one OutOfMemory error naming ``what`` was being built or run,
    its ``sizes`` and the options to ``lower``. The innermost block names it; outer ones pass it on."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise OutOfMemory(memory_message(e, what, sizes, lower)) from None
