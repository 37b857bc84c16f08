"""`load_dataset`: one entry point for every dataset, with seeded shuffling, subsets and resizing."""
from __future__ import annotations

import os

import torch

from ..errors import DnasError, memory_limits
from . import svhn
from .builtin import SYNTHETIC_RESOLUTION, load_digits_split, load_synthetic_split
from .cifar import load_cifar
from .core import ImageDataset, balanced_subset, generator, resize_images

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "svhn")
SPLITS = ("train", "test")


def native_resolution(name: str) -> int:
    """The side of a dataset's images as stored (synthetic: as generated without `resolution`)."""
    return {"digits": 8, "synthetic": SYNTHETIC_RESOLUTION}.get(name, 32)


# Stream ids keep the train shuffle independent of other uses of the same seed.
_SHUFFLE_STREAM = 0x5F1E


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    resolution: int | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load a dataset split into memory.

    The train split comes back in a random order seeded by `seed` (the CIFAR shards are stored
    round-robin by class, and `split_indices` takes a prefix). `subset=N` keeps N class-balanced
    images chosen with `seed`; `resolution=R` resizes every image once to R x R. CIFAR and SVHN
    read `data_dir`, else $DNAS_DATA_DIR.
    """
    if name not in DATASETS:
        raise DnasError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    if split not in SPLITS:
        raise DnasError(f"{name}: unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if resolution is not None and (not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 4):
        raise DnasError(f"{name}: resolution must be an integer >= 4, got {resolution!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DnasError(f"{name}: seed must be an integer, got {seed!r}")

    # The images are held in memory, resized once: a large --resolution (or data set) can exceed it.
    sizes = {"resolution": resolution or native_resolution(name), "subset": subset}
    with memory_limits(f"loading the {split} split of {name}", sizes, "--resolution or --subset"):
        if name == "digits":
            images, labels, mean, std = load_digits_split(split)
            num_classes, pad, flip = 10, 1, False
        elif name == "synthetic":
            images, labels, mean, std = load_synthetic_split(split, resolution)  # generated at `resolution`
            num_classes, pad, flip = 10, 0, False
        elif name == "svhn":
            images, labels = svhn.load_svhn(split, data_dir)
            num_classes, mean, std, pad, flip = svhn.NUM_CLASSES, svhn.MEAN, svhn.STD, 4, True  # as darts-pt
        else:
            images, labels, spec = load_cifar(name, split, data_dir)
            num_classes, mean, std, pad, flip = spec.num_classes, spec.mean, spec.std, 4, True

        if split == "train":
            perm = torch.randperm(len(labels), generator=generator(seed, _SHUFFLE_STREAM))
            images, labels = images[perm], labels[perm]
        if subset is not None:
            keep = balanced_subset(labels, subset, num_classes, seed, name)
            images, labels = images[keep], labels[keep]
        if resolution is not None:
            images = resize_images(images, resolution, name)
    return ImageDataset(
        name=name,
        images=images.contiguous(),
        labels=labels.contiguous(),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        pad=pad,
        flip=flip,
    )
