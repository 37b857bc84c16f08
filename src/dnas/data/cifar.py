"""CIFAR-10/100 readers (python pickles or WebDataset JPEG shards), a decoded-array cache and a downloader."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DnasError
from ..io import atomic_torch_save, to_json
from .files import fetch, file_md5, one_line, resolve_data_dir

@dataclass(frozen=True)
class CifarSpec:
    """Where and how one CIFAR variant is stored."""

    name: str
    num_classes: int
    folder: str  # folder of the official python release
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    archive: str
    url: str
    md5: str
    shards: dict[str, int] | None  # split -> number of WebDataset shards, None when there is no shard layout


SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        num_classes=10,
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        shards={"train": 5, "test": 1},
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        num_classes=100,
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        shards=None,
    ),
}


def _spec(name: str) -> CifarSpec:
    if name not in SPECS:
        raise DnasError(f"unknown CIFAR dataset {name!r} (choose from {', '.join(SPECS)})")
    return SPECS[name]


def shard_name(name: str, split: str, k: int) -> str:
    """File name of WebDataset shard `k` of a split, e.g. cifar10-train-000003.tar.gz."""
    return f"{name}-{split}-{k:06d}.tar.gz"


# ----------------------------------------------------------------------------------------------
# Locating the data
# ----------------------------------------------------------------------------------------------


def _has_shards(folder: Path, spec: CifarSpec) -> bool:
    return spec.shards is not None and any(folder.glob(f"{spec.name}-*.tar.gz"))


def locate(spec: CifarSpec, root: Path) -> tuple[str, Path]:
    """Find the layout under `root`: ("python", folder) or ("shards", folder)."""
    if (root / spec.folder).is_dir():
        return "python", root / spec.folder
    if any((root / f).is_file() for f in spec.train_files + spec.test_files):
        return "python", root  # root is the python folder itself
    if _has_shards(root, spec):
        return "shards", root
    if _has_shards(root / spec.name, spec):
        return "shards", root / spec.name
    expected = f"{spec.folder}/"
    if spec.shards is not None:
        expected += f" or {shard_name(spec.name, 'train', 0)} ... {shard_name(spec.name, 'test', 0)}"
    raise DnasError(f"{spec.name}: no data found in {root} (expected {expected}; `download_cifar` fetches the official archive)")


# ----------------------------------------------------------------------------------------------
# Python pickles
# ----------------------------------------------------------------------------------------------


def _get(d: dict, key: str):
    # The official pickles have bytes keys (encoding="bytes"); accept str keys from re-pickled copies.
    if key.encode() in d:
        return d[key.encode()]
    return d[key]


def read_python(spec: CifarSpec, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the official python batches of a split into uint8 N x 3 x 32 x 32 images and int64 labels."""
    files = spec.train_files if split == "train" else spec.test_files
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise DnasError(f"{spec.name}: missing file {path}")
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            data = np.asarray(_get(d, "data"), dtype=np.uint8)
            labels = np.asarray(_get(d, spec.label_key), dtype=np.int64)
        # A corrupt pickle can raise almost anything (EOFError, UnpicklingError, KeyError, ...).
        except Exception as e:
            raise DnasError(f"{spec.name}: cannot read {path} ({one_line(e)})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
            raise DnasError(f"{spec.name}: {path} has data of shape {data.shape} and {labels.size} labels (expected N x 3072 and N)")
        xs.append(data.reshape(-1, 3, 32, 32))  # stored as 1024 R, 1024 G, 1024 B: already CHW
        ys.append(labels)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(xs))), torch.from_numpy(np.concatenate(ys))


# ----------------------------------------------------------------------------------------------
# WebDataset shards
# ----------------------------------------------------------------------------------------------


def read_shard(name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode one gzip tar shard of `{key}.jpg` + `{key}.cls` pairs into (N,32,32,3) uint8 and (N,) int64."""
    from PIL import Image

    images: dict[str, np.ndarray] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    try:
        # Decompress the whole shard first (a few MB): unlike tarfile's streaming reader, which stops at
        # the end-of-archive block, gzip.decompress also checks the trailer's CRC and length.
        raw = gzip.decompress(path.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition(".")
                if ext not in ("jpg", "cls"):
                    continue
                f = tf.extractfile(m)
                assert f is not None  # regular file
                b = f.read()
                if key not in images and key not in labels:
                    order.append(key)
                if ext == "jpg":
                    with Image.open(io.BytesIO(b)) as im:
                        images[key] = np.asarray(im.convert("RGB"))
                else:
                    labels[key] = int(b.decode("ascii").strip())
            # tarfile also stops without a word at a garbled or missing header after the first one, so the
            # rest of the archive would be dropped: past the last member there must be zero blocks only.
            if raw[tf.offset:].strip(b"\0"):
                raise tarfile.ReadError(f"unreadable tar header at byte {tf.offset}")
            if len(raw) - tf.offset < tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"tar ends at byte {tf.offset} without its end-of-archive blocks")
    # tarfile/gzip/zlib/Pillow errors for truncated or garbled files (OSError covers BadGzipFile and
    # UnidentifiedImageError; ValueError covers a non-numeric .cls).
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError, SyntaxError) as e:
        raise DnasError(f"{name}: corrupt shard {path} ({one_line(e)})") from None
    if not order:
        raise DnasError(f"{name}: shard {path} holds no samples")
    xs, ys = [], []
    for key in order:
        if key not in images or key not in labels:
            raise DnasError(f"{name}: shard {path}: sample {key!r} lacks its {'.jpg' if key not in images else '.cls'} member")
        x = images[key]
        if x.shape != (32, 32, 3):
            raise DnasError(f"{name}: shard {path}: image {key!r} is {x.shape[1]}x{x.shape[0]}, expected 32x32")
        xs.append(x)
        ys.append(labels[key])
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def cache_dir() -> Path:
    """$DNAS_CACHE_DIR, default ~/.cache/dnas."""
    return Path(os.environ.get("DNAS_CACHE_DIR") or "~/.cache/dnas").expanduser()


# The decoded arrays of a split are cached as {name}-{split}-{source}-{fingerprint}.pt:
#  - fingerprint: a hash of the shards' names, sizes and full contents (not their mtimes: a shared copy of
#    the data gets fresh mtimes whenever it is re-copied, and each new mtime used to leave another
#    ~150 MB file behind). Reading and hashing the ~20 MB of shards takes tens of ms (a second or two from a
#    cold disk) on every load; decoding them takes ~20 s, and a partial hash could miss an edit.
#  - source: a hash of the shard folder's absolute path (symlinks not resolved, so a link switched to a new
#    copy of the data replaces its entry). Writing an entry removes the entries of the same
#    dataset, split and folder with another fingerprint (their data has changed), so the cache holds at most
#    one entry per split and folder; entries of other folders are kept, as two folders used in turn would
#    otherwise evict each other and decode again on every run.
_CACHE_VERSION = 2
_LEGACY_CACHE = re.compile(r"-[0-9a-f]{16}\.pt")  # version 1's {name}-{split}-{hash}.pt, keyed by mtimes


def _cache_key(name: str, split: str, files: list[Path]) -> str:
    # Only the bytes matter: two folders holding the same shards share a key (each keeps its own entry).
    entries = []
    for p in files:
        try:
            entries.append([p.name, p.stat().st_size, file_md5(p)])
        except OSError as e:
            raise DnasError(f"{name}: cannot read shard {p} ({one_line(e)})") from None
    return to_json({"v": _CACHE_VERSION, "name": name, "split": split, "files": entries})


def _cache_path(name: str, split: str, folder: Path, key: str) -> Path:
    source = hashlib.sha256(os.path.normpath(folder.absolute()).encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{split}-{source}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _prune_cache(name: str, split: str, kept: Path) -> None:
    """Remove what `kept` supersedes: the same split and folder's other entries, and version-1 entries."""
    prefix = kept.name.rpartition("-")[0]  # {name}-{split}-{source}
    stale = [p for p in kept.parent.glob(f"{prefix}-*.pt") if p != kept]
    # Version 1's entries can never be hit again (their key names the version); any folder's may go.
    stale += [p for p in kept.parent.glob(f"{name}-{split}-*.pt")
              if _LEGACY_CACHE.fullmatch(p.name[len(f"{name}-{split}"):])]
    for p in stale:
        try:
            p.unlink()
        except FileNotFoundError:  # another process pruned it first
            pass
        except OSError as e:
            warnings.warn(f"{name}: could not remove stale cache {p} ({one_line(e)})", stacklevel=3)


def _load_cache(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        x, y = d["images"], d["labels"]
        ok = (
            d["key"] == key
            and x.dtype == torch.uint8
            and x.dim() == 4
            and y.dtype == torch.int64
            and y.shape == (x.shape[0],)
        )
    # A missing cache (never written, or just pruned by another process) or an unreadable one (truncated,
    # garbage, other format) is simply rebuilt.
    except Exception:
        return None
    return (x.contiguous(), y) if ok else None


def read_shards(spec: CifarSpec, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All shards of a split as uint8 N x 3 x 32 x 32 and int64 labels, through the on-disk cache.

    The cache (in `cache_dir()`) is keyed by the shards' contents, so it is rebuilt when they change and
    not when they are only touched or re-copied; it keeps one entry per split and shard folder (see above).
    """
    assert spec.shards is not None
    files = [folder / shard_name(spec.name, split, k) for k in range(spec.shards[split])]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise DnasError(f"{spec.name}: missing shard(s) {', '.join(missing)} in {folder}")
    key = _cache_key(spec.name, split, files)
    cpath = _cache_path(spec.name, split, folder, key)
    cached = _load_cache(cpath, key)
    if cached is not None:
        return cached
    parts = [read_shard(spec.name, p) for p in files]
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate([p[0] for p in parts]).transpose(0, 3, 1, 2)))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    # Shards replaced while decoding: these arrays are not what the key describes.
    if _cache_key(spec.name, split, files) != key:
        return x, y
    try:
        atomic_torch_save(cpath, {"key": key, "images": x, "labels": y})
    except OSError as e:  # a read-only cache dir should not stop training, only make it slower next time
        warnings.warn(f"{spec.name}: could not write cache {cpath} ({one_line(e)})", stacklevel=2)
    else:
        _prune_cache(spec.name, split, cpath)
    return x, y


def load_cifar(name: str, split: str, data_dir: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor, CifarSpec]:
    """Raw images/labels of a CIFAR split (in stored order) and its spec."""
    spec = _spec(name)
    root = resolve_data_dir(name, data_dir)
    layout, folder = locate(spec, root)
    if layout == "python":
        x, y = read_python(spec, folder, split)
    else:
        x, y = read_shards(spec, folder, split)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise DnasError(f"{name}: labels in {folder} outside 0..{spec.num_classes - 1}")
    return x, y, spec


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


def _safe_extractall(tf: tarfile.TarFile, dest: str) -> None:
    """Extract refusing absolute paths, `..`, links out of `dest` and device files."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tf.extractall(dest, filter="data")
        return
    base = os.path.realpath(dest)
    for m in tf.getmembers():
        target = os.path.realpath(os.path.join(base, m.name))
        if not (m.isfile() or m.isdir()) or os.path.commonpath([base, target]) != base:
            raise tarfile.TarError(f"unsafe member {m.name!r}")
    tf.extractall(dest)


def download_cifar(name: str, root: str | os.PathLike, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch and extract the official CIFAR python archive into `root`; returns the extracted folder.

    `url` defaults to the official address and `md5` to the official checksum (a mirror serves the
    same bytes). Nothing is fetched when the folder already exists; a verified archive already in
    `root` is reused. Download and extraction go to temp names first, so an interrupted run leaves
    no half-written folder behind. Afterwards `load_dataset(name, data_dir=root)` finds the data.
    """
    spec = _spec(name)
    root = Path(root).expanduser()
    target = root / spec.folder
    if target.is_dir():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DnasError(f"{name}: cannot create {root} ({one_line(e)})") from None
    url = url or spec.url
    md5 = (md5 or spec.md5).lower()
    archive = root / spec.archive
    if not (archive.is_file() and file_md5(archive) == md5):
        fetch(name, url, md5, archive)
    tmpdir = tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=root)
    try:
        with tarfile.open(archive, mode="r:gz") as tf:
            _safe_extractall(tf, tmpdir)
        src = Path(tmpdir) / spec.folder
        if not src.is_dir():
            raise DnasError(f"{name}: archive {archive} has no {spec.folder}/ folder")
        os.replace(src, target)
    except DnasError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DnasError(f"{name}: cannot extract {archive} ({one_line(e)})") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target
