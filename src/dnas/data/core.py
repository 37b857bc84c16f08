"""The in-memory dataset type and the dataset-independent helpers (seeding, subsets, resizing, splits)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DnasError


# eq=False: the generated __eq__ would compare tensors (ambiguous truth value) and
# frozen+eq would make the hash depend on tensor ids anyway; identity is what we want.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole image dataset held in memory as uint8, plus its normalisation and augmentation settings."""

    name: str
    images: torch.Tensor  # uint8, N x C x H x W, contiguous
    labels: torch.Tensor  # int64, N
    num_classes: int
    mean: tuple[float, ...]  # per channel, [0,1] units
    std: tuple[float, ...]
    pad: int  # zero padding before the random crop
    flip: bool  # random horizontal flip

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if imgs.dtype != torch.uint8 or imgs.dim() != 4:
            raise DnasError(f"{self.name}: images must be a uint8 N x C x H x W tensor, got {imgs.dtype} {tuple(imgs.shape)}")
        if labels.dtype != torch.int64 or labels.shape != (imgs.shape[0],):
            raise DnasError(f"{self.name}: labels must be int64 of shape ({imgs.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
        if len(self.mean) != imgs.shape[1] or len(self.std) != imgs.shape[1]:
            raise DnasError(f"{self.name}: mean/std need {imgs.shape[1]} values (one per channel)")
        if self.pad < 0:
            raise DnasError(f"{self.name}: pad must be >= 0, got {self.pad}")

    @property
    def channels(self) -> int:
        """Number of image channels (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        """Image height (images are square)."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed, so that (seed, stream, epoch) triples do not collide the way sums would.

    numpy's SeedSequence ignores trailing zeros, so (s, t) and (s, t, 0) give the same seed: each stream is
    always derived with the same number of parts (and a resumed drop-path stream adds its epoch, >= 1)."""
    words = [int(p) & 0xFFFF_FFFF_FFFF_FFFF for p in parts]  # SeedSequence refuses negatives
    hi, lo = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: int) -> torch.Generator:
    """A CPU torch.Generator seeded from `parts` (CPU so results do not depend on the device)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images, in [0,1] units."""
    x = images.to(torch.float64).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def balanced_quotas(counts: list[int], n: int, gen: torch.Generator) -> list[int]:
    """How many samples to take per class so the total is `n` and the classes are as equal as possible.

    Classes that run out are filled to their size and the rest is shared among the others
    (water filling); the last few leftover units go to randomly chosen classes.
    """
    quotas = [0] * len(counts)
    remaining = n
    while remaining > 0:
        open_ = [k for k, c in enumerate(counts) if quotas[k] < c]
        if not open_:
            break
        share = remaining // len(open_)
        if share == 0:
            pick = torch.randperm(len(open_), generator=gen)[:remaining].tolist()
            for j in pick:
                quotas[open_[j]] += 1
            break
        for k in open_:
            take = min(share, counts[k] - quotas[k])
            quotas[k] += take
            remaining -= take
    return quotas


def balanced_subset(labels: torch.Tensor, n: int, num_classes: int, seed: int, name: str = "dataset") -> torch.Tensor:
    """Indices (ascending, so the dataset's own order is kept) of a seeded class-balanced subset of size `n`."""
    total = int(labels.numel())
    if not isinstance(n, int) or isinstance(n, bool):
        raise DnasError(f"{name}: subset must be an integer, got {n!r}")
    if n > total:
        raise DnasError(f"{name}: subset={n} is larger than the split ({total} images)")
    if n < num_classes:
        raise DnasError(f"{name}: subset={n} is smaller than the number of classes ({num_classes})")
    gen = generator(seed, 0x5B5E7)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    quotas = balanced_quotas(counts, n, gen)
    # A random permutation decides which members of each class are kept.
    perm = torch.randperm(total, generator=gen)
    perm_labels = labels[perm]
    chosen = [perm[perm_labels == k][:q] for k, q in enumerate(quotas) if q > 0]
    return torch.cat(chosen).sort().values


def resize_images(images: torch.Tensor, resolution: int, name: str = "dataset") -> torch.Tensor:
    """Resize uint8 N x C x H x W images to resolution x resolution (bilinear, antialiased), once, in chunks."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 4:
        raise DnasError(f"{name}: resolution must be an integer >= 4, got {resolution!r}")
    n, c, h, w = images.shape
    if (h, w) == (resolution, resolution):
        return images
    out = torch.empty((n, c, resolution, resolution), dtype=torch.uint8)
    chunk = 2048  # bounds the float32 working memory (upsampling 50k images at once would need GBs)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].to(torch.float32)
        y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        out[s : s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def split_indices(n: int, portion: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DARTS-style split: the first floor(portion*n) indices train the weights, the rest train the alphas.

    No shuffling here: load_dataset already returns the train split in a seeded random order.
    """
    if not isinstance(n, int) or n < 0:
        raise DnasError(f"split_indices: n must be a non-negative integer, got {n!r}")
    if not (0.0 <= float(portion) <= 1.0):
        raise DnasError(f"split_indices: portion must be in [0, 1], got {portion}")
    # The epsilon keeps e.g. 0.29*100 = 28.999999999999996 from flooring to 28.
    k = min(n, math.floor(float(portion) * n + 1e-9))
    idx = torch.arange(n, dtype=torch.int64)
    return idx[:k], idx[k:]
