"""SVHN (cropped digits, 32x32) from the official MATLAB files, and a downloader.

The DARTS family (RobustDARTS, SDARTS, darts-pt) uses SVHN's ``train`` (73,257 images) and ``test``
(26,032) splits, not ``extra``; train with a pad-4 random crop and a horizontal flip, normalised with
mean (0.4377, 0.4438, 0.4728) and std (0.1980, 0.2010, 0.1970). The files store label 10 for the
digit 0; it is read as class 0.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DnasError
from .files import fetch, one_line, resolve_data_dir

NAME = "svhn"
NUM_CLASSES = 10
MEAN = (0.4377, 0.4438, 0.4728)
STD = (0.1980, 0.2010, 0.1970)
URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {"train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
         "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")}


def locate(root: Path, split: str) -> Path:
    """The split's file in `root` or in `root/svhn`."""
    fname = FILES[split][0]
    for folder in (root, root / NAME):
        if (folder / fname).is_file():
            return folder / fname
    raise DnasError(f"{NAME}: no {fname} in {root} or {root / NAME} (`download_svhn` fetches the official files)")


def read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One official file as uint8 N x 3 x 32 x 32 images and int64 labels 0..9."""
    from scipy.io import loadmat  # scipy comes with scikit-learn

    try:
        d = loadmat(str(path), variable_names=("X", "y"))
    # A truncated or foreign file makes loadmat raise ValueError, OSError, TypeError, KeyError, ...
    except Exception as e:
        raise DnasError(f"{NAME}: cannot read {path} ({one_line(e)})") from None
    if "X" not in d or "y" not in d:
        raise DnasError(f"{NAME}: {path} lacks the X and y variables of the official format")
    x, y = np.asarray(d["X"]), np.asarray(d["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8 or y.shape != (x.shape[3],):
        raise DnasError(f"{NAME}: {path} has X of shape {x.shape} ({x.dtype}) and {y.size} labels "
                        "(expected 32 x 32 x 3 x N uint8 and N labels)")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DnasError(f"{NAME}: labels in {path} outside 1..10")
    labels = torch.from_numpy(np.where(y == 10, 0, y).astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
    return images, labels


def load_svhn(split: str, data_dir: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images and labels of an SVHN split, in stored order."""
    if split not in FILES:
        raise DnasError(f"{NAME}: unknown split {split!r} (choose from {', '.join(FILES)})")
    return read_mat(locate(resolve_data_dir(NAME, data_dir), split))


def download_svhn(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "test"), url: str | None = None,
                  md5: dict[str, str] | None = None) -> Path:
    """Fetch the official files of `splits` into `root` (md5-checked; present files are kept); returns `root`.

    `url` is the folder to fetch from (default: the official one; a mirror serves the same bytes);
    `md5` maps a split to the checksum to expect instead of the official one.
    Each file is written under a temp name and renamed, so an interrupted download leaves nothing
    half-written. Afterwards `load_dataset("svhn", data_dir=root)` finds the data.
    """
    root = Path(root).expanduser()
    unknown = [s for s in splits if s not in FILES]
    if unknown:
        raise DnasError(f"{NAME}: unknown split(s) {', '.join(unknown)} (choose from {', '.join(FILES)})")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DnasError(f"{NAME}: cannot create {root} ({one_line(e)})") from None
    base = url or URL
    for split in splits:
        fname, official = FILES[split]
        if not (root / fname).is_file():
            fetch(NAME, base.rstrip("/") + "/" + fname, (md5 or {}).get(split, official).lower(), root / fname)
    return root
