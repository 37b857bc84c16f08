"""Datasets that need no files: scikit-learn's digits and a synthetic template+noise set for tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import channel_stats

# Fixed seeds: the datasets (and the digits train/test split) must not depend on the user's seed,
# which only changes the order of the train split.
_DIGITS_SPLIT_SEED = 1797
_SYNTHETIC_SEED = 20240807

DIGITS_TRAIN = 1437
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN = 640
SYNTHETIC_TEST = 160
SYNTHETIC_RESOLUTION = 8


def _digits_all() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float64)  # 1797 x 8 x 8, values 0..16
    images = (x * (255.0 / 16.0)).round_().clamp_(0, 255).to(torch.uint8).unsqueeze(1).contiguous()
    labels = torch.as_tensor(d.target, dtype=torch.int64)
    return images, labels


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    """Digits images (uint8 N x 1 x 8 x 8), labels and the train split's mean/std; fixed 1437/360 split."""
    images, labels = _digits_all()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    train_idx, test_idx = perm[:DIGITS_TRAIN], perm[DIGITS_TRAIN:]
    mean, std = channel_stats(images[train_idx])
    idx = train_idx if split == "train" else test_idx
    return images[idx].contiguous(), labels[idx].contiguous(), mean, std


def _synthetic_all(resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    # Smooth templates (a random 4x4 colour grid upsampled) survive crops and pooling better than
    # per-pixel noise, so a tiny network learns them in a few steps.
    grid = torch.rand((SYNTHETIC_CLASSES, 3, 4, 4), generator=g)
    templates = F.interpolate(grid, size=(resolution, resolution), mode="bilinear", align_corners=False)
    templates = 40.0 + 175.0 * templates

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n, dtype=torch.int64) % SYNTHETIC_CLASSES
        noise = torch.randn((n, 3, resolution, resolution), generator=g) * 25.0
        x = (templates[labels] + noise).round_().clamp_(0, 255).to(torch.uint8)
        return x.contiguous(), labels

    xtr, ytr = make(SYNTHETIC_TRAIN)
    xte, yte = make(SYNTHETIC_TEST)
    return xtr, ytr, xte, yte


def load_synthetic_split(
    split: str, resolution: int | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    """Synthetic images generated natively at `resolution` (default 8), labels, and train mean/std."""
    xtr, ytr, xte, yte = _synthetic_all(resolution or SYNTHETIC_RESOLUTION)
    mean, std = channel_stats(xtr)
    if split == "train":
        return xtr, ytr, mean, std
    return xte, yte, mean, std
