"""A deterministic, resumable mini-batch iterator with vectorised crop/flip augmentation."""
from __future__ import annotations

from typing import Iterator

import torch

from ..errors import DnasError
from .core import ImageDataset, generator

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchLoader:
    """Deterministic, resumable mini-batch iterator over an in-memory ImageDataset.

    The order and augmentation of an epoch depend only on (seed, stream, epoch), so a resumed run
    replays exactly the same batches without saving iterator state. `stream` separates loaders
    that share a seed (e.g. the weight and the architecture loaders of a DARTS search).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        indices: torch.Tensor | None,
        batch_size: int,
        *,
        augment: bool,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        stream: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        cutout: int = 0,
    ) -> None:
        n_all = len(dataset)
        if indices is None:
            idx = torch.arange(n_all, dtype=torch.int64)
        else:
            idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_all):
                raise DnasError(f"{dataset.name}: loader indices must lie in 0..{n_all - 1}")
        if idx.numel() == 0:
            raise DnasError(f"{dataset.name}: loader has no samples")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DnasError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(cutout, int) or cutout < 0:
            raise DnasError(f"cutout must be a non-negative integer, got {cutout!r}")
        if world_size < 1 or not (0 <= rank < world_size):
            raise DnasError(f"rank {rank} is not in 0..{world_size - 1} (world_size={world_size})")
        self.dataset = dataset
        self.indices = idx
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.stream = stream
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.cutout = cutout if augment else 0
        # Like DistributedSampler: pad the epoch so every rank gets the same number of samples.
        self.per_rank = -(-idx.numel() // world_size)
        self.total = self.per_rank * world_size
        if drop_last and self.per_rank < batch_size:
            raise DnasError(
                f"{dataset.name}: batch_size {batch_size} exceeds the {self.per_rank} samples per rank and drop_last=True leaves no batch"
            )
        # Everything lives on the device once; a batch is then a gather, with no host copies.
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)
        self._mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def _plan(self, epoch: int) -> tuple[torch.Tensor | None, ...]:
        """This rank's sample indices, per-sample crop offsets, flips and cutout centres for `epoch` (CPU)."""
        g = generator(self.seed, self.stream, epoch)
        n = self.indices.numel()
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.total > n:
            order = order.repeat(-(-self.total // n))[: self.total]
        oy = ox = flips = None
        ds = self.dataset
        if self.augment:
            # Drawn for the whole padded epoch, then strided, so a sample's augmentation does not
            # depend on which rank serves it.
            if ds.pad > 0:
                oy = torch.randint(0, 2 * ds.pad + 1, (self.total,), generator=g)
                ox = torch.randint(0, 2 * ds.pad + 1, (self.total,), generator=g)
            if ds.flip:
                flips = torch.rand(self.total, generator=g) < 0.5
        cy = cx = None
        if self.cutout:
            h, w = self._images.shape[-2:]
            cy = torch.randint(0, h, (self.total,), generator=g)
            cx = torch.randint(0, w, (self.total,), generator=g)
        sl = slice(self.rank, self.total, self.world_size)
        return (self.indices[order[sl]], *(None if t is None else t[sl] for t in (oy, ox, flips, cy, cx)))

    def _augment(self, x: torch.Tensor, oy: torch.Tensor | None, ox: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
        """Zero-pad, crop each sample at its own offset and flip it, as two gathers on the uint8 batch."""
        b, c, h, w = x.shape
        p = self.dataset.pad
        dev = x.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if flips is not None:
            cols = torch.where(flips.to(dev)[:, None], (w - 1) - cols, cols)
        if p > 0 and oy is not None and ox is not None:
            x = torch.nn.functional.pad(x, (p, p, p, p))
            rows = rows + oy.to(dev)[:, None]
            cols = cols + ox.to(dev)[:, None]
        x = torch.gather(x, 2, rows[:, None, :, None].expand(b, c, h, x.shape[3]))
        return torch.gather(x, 3, cols[:, None, None, :].expand(b, c, h, w))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield (x, y) batches of `epoch`: x float32 normalised N x C x H x W on the device, y int64."""
        idx, oy, ox, flips, cy, cx = self._plan(epoch)
        augment = oy is not None or flips is not None
        stop = len(self) * self.batch_size
        for s in range(0, stop, self.batch_size):
            e = min(s + self.batch_size, idx.numel())
            bidx = idx[s:e].to(self.device)
            x = self._images[bidx]
            if augment:
                x = self._augment(
                    x,
                    None if oy is None else oy[s:e],
                    None if ox is None else ox[s:e],
                    None if flips is None else flips[s:e],
                )
            x = x.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)
            if cy is not None and cx is not None:  # after normalisation, as DARTS's Cutout transform
                x = cut_holes(x, self.cutout, cy[s:e], cx[s:e])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self._labels[bidx]

    def cycle(self, start_epoch: int = 0) -> Iterator[Batch]:
        """Endless batches: epoch(start_epoch), epoch(start_epoch + 1), ..."""
        e = start_epoch
        while True:
            yield from self.epoch(e)
            e += 1


def cut_holes(x: torch.Tensor, length: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square (clipped at the border) centred at (cy[i], cx[i]) in image i."""
    _, _, h, w = x.shape
    cy, cx = cy.to(x.device).unsqueeze(1), cx.to(x.device).unsqueeze(1)
    half = length // 2
    rows = torch.arange(h, device=x.device).unsqueeze(0)
    cols = torch.arange(w, device=x.device).unsqueeze(0)
    in_y = (rows >= cy - half) & (rows < cy + half)
    in_x = (cols >= cx - half) & (cols < cx + half)
    keep = ~(in_y.unsqueeze(2) & in_x.unsqueeze(1))
    return x * keep.unsqueeze(1).to(x.dtype)
