"""Atomic file writes: a temp file in the same folder, then rename, so nothing is ever half-written."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch

from .errors import DnasError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a binary temp file next to ``path``, then rename it into place (removed on any error)."""
    path = Path(path)
    if path.is_dir():  # say so about the user's path, not about the temporary file next to it
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only or full folder: name the file being written, not the temporary one
        raise _about(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename in (None, tmp):  # ENOSPC from write/flush/fsync names no file
            raise _about(e, path) from None
        raise


def _about(e: OSError, path: str | Path) -> OSError:
    """The same error (same errno, same OSError subclass), about ``path``."""
    return OSError(e.errno, e.strerror or str(e), str(path)) if e.errno else e


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(x: Any) -> Any:
    """``x`` with NaN and ±inf as None and numpy / torch scalars as plain numbers (tuples become lists)."""
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def to_json(obj: Any, **kw: Any) -> str:
    """Standard JSON text, as every file and stdout line dnas writes is: a non-finite float is ``null``.

    json's default writes bare ``NaN`` / ``Infinity``, which jq, JavaScript and other strict readers refuse.
    Where a table holds NaN on purpose (a selection's ``scores``: an op never scored), its readers turn
    ``null`` back into NaN (``select.base.scores_from_json``; numpy's ``float`` arrays do it by themselves)."""
    return json.dumps(jsonable(obj), allow_nan=False, **kw)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | Path) -> Any:
    """A JSON file; also one written before dnas wrote standard JSON (bare NaN / Infinity read as floats)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DnasError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DnasError(f"{path}: not valid JSON ({e})") from None


TRUST_CHECKPOINTS = "DNAS_TRUST_CHECKPOINTS"  # =1: load checkpoints with full unpickling (trusted files only)


def _legacy_globals() -> list[Any]:
    """What checkpoints of earlier dnas versions hold beyond plain data: numpy's RNG state, a uint32 array.
    An array's unpickling calls only numpy's own reconstruction (no code named by the file)."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    allowed: list[Any] = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    # The file names the reconstruction as the numpy that wrote it did: numpy.core.multiarray before numpy 2.1,
    # numpy._core.multiarray since. torch >= 2.6 takes (global, name) pairs, so either loads with either numpy.
    if torch.__version__ >= (2, 6):
        allowed += [(_reconstruct, f"numpy.{core}.multiarray._reconstruct") for core in ("core", "_core")]
    return allowed


# torch's refusal of an object it may not build names it in one of these forms (torch 2.3 to 2.13)
_REFUSED = re.compile(r"GLOBAL (\S+)|Unsupported class (\S+)|but got <class '([^']+)'>")


def torch_load(path: str | Path) -> Any:
    """Load a checkpoint: tensors and plain data only (``weights_only``), as unpickling anything else can run code
    the file names; dnas's own checkpoints hold nothing else. A missing or corrupt file, or one holding other
    objects, is a DnasError; the latter loads with ``DNAS_TRUST_CHECKPOINTS=1`` (only for files one trusts)."""
    path = Path(path)
    if not path.exists():
        raise DnasError(f"{path}: checkpoint not found")
    if os.environ.get(TRUST_CHECKPOINTS) == "1":
        allowed, weights_only = contextlib.nullcontext(), False
    else:  # torch >= 2.5 can allow earlier versions' numpy RNG state; older torch refuses those files (below)
        scoped = getattr(torch.serialization, "safe_globals", None)
        allowed, weights_only = (scoped(_legacy_globals()) if scoped else contextlib.nullcontext()), True
    try:
        with allowed:
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # torch raises many types for a truncated/corrupt file
        refused = _REFUSED.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if refused:
            name = next(g for g in refused.groups() if g)
            raise DnasError(f"{path}: refused: it holds {name}, which is neither a tensor nor plain data and could "
                            f"run code when loaded; if you trust the file (say, a checkpoint of an earlier dnas "
                            f"version), load it with {TRUST_CHECKPOINTS}=1") from None
        raise DnasError(f"{path}: corrupt checkpoint ({type(e).__name__})") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (metrics); the line is written whole with one write call. A line torn by a full
    disk is the file's last: the readers (``truncate_metrics``, resumed rankings) drop it and redo its step."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(to_json(record) + "\n")
            f.flush()
    except OSError as e:
        if e.filename is None:  # ENOSPC from write/flush names no file
            raise _about(e, path) from None
        raise


def read_jsonl(path: str | Path, check: Callable[[dict, str], Any] | None = None) -> Iterator[dict]:
    """The records of a JSON-lines log. A torn last line (see ``append_jsonl``) is dropped, as its step is
    redone on resume; any other line that is not a JSON object is a DnasError naming the file and line.
    ``check(record, "PATH:LINE")``: the caller's check of each record (it raises DnasError)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DnasError(f"{path}: not a JSON-lines file ({e})") from None
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    for n, (i, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                return
            raise DnasError(f"{path}:{i}: not a JSON line") from None
        if not isinstance(record, dict):
            raise DnasError(f"{path}:{i}: not a JSON object")
        if check is not None:
            check(record, f"{path}:{i}")
        yield record
