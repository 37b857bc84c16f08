"""Finding dataset folders and fetching dataset files: shared by the CIFAR and SVHN readers."""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ..errors import DnasError
from ..io import atomic_write


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and its message with whitespace collapsed."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The explicit data_dir, else $DNAS_DATA_DIR; it must be an existing folder."""
    if data_dir is None:
        data_dir = os.environ.get("DNAS_DATA_DIR") or None
        if data_dir is None:
            raise DnasError(f"{name}: no data directory given; pass --data-dir DIR or set DNAS_DATA_DIR")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DnasError(f"{name}: data directory {root} does not exist")
    return root


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, url: str, md5: str, target: Path) -> None:
    """Download `url` to a temp file next to `target`, check its md5, then rename it into place."""

    def download(out: BinaryIO) -> None:
        h = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=60) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != md5:
            raise DnasError(f"{name}: md5 mismatch for {url}: got {h.hexdigest()}, expected {md5}")

    try:
        atomic_write(target, download)
    except DnasError:
        raise
    # URLError is an OSError; ValueError: malformed URL; HTTPException: e.g. IncompleteRead when a chunked
    # response breaks off (a Content-Length response that breaks off just ends early: the md5 catches it).
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise DnasError(f"{name}: download of {url} failed ({one_line(e)})") from None
