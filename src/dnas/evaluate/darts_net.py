"""Stand-alone DARTS-space network for training from scratch (DARTS's ``NetworkCIFAR``).

stem conv3x3 (3 -> 3C) + BN, L cells (reductions at L//3 and 2L//3, channels doubling there), an optional
auxiliary head after cell 2L//3, global average pooling and a linear classifier. Each cell preprocesses its
two inputs (FactorizedReduce after a reduction cell, else ReLU-Conv1x1-BN), applies the genotype's 8 ops
with affine BN (pools without BN) and concatenates the ``concat`` nodes. Drop-path zeroes whole samples of
non-identity op outputs during training, with a probability set per epoch through ``drop_path_prob``.

The network runs in channels-last memory format (``memory_format``): the input is converted once at the
stem, and every op keeps the layout. On the CPU, oneDNN's channels-last conv, BN, depthwise and pool
kernels make a training step ~1.5x faster (benchmarks/README.md, ``train_step.py``). Parameters stay NCHW,
so ``state_dict``s and checkpoints are the same as before; the pools are the library's ``AvgPool2d`` /
``MaxPool2d``, whose CUDA avg-pool backward for channels-last maps takes the NCHW kernel (torch 2.11 bug).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import DnasError
from ..spaces import DartsGenotype
from ..spaces.ops import AvgPool2d, FactorizedReduce, Identity, ReLUConvBN, build_darts_op
from ..supernet.darts import check_layers, reduction_layers

STEM_MULTIPLIER = 3


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero each sample with probability ``drop_prob`` and rescale the survivors (stochastic depth)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x.div(keep).mul_(mask)  # = x / keep * mask, one full-size temporary less (forward and backward alike)


class DartsEvalCell(nn.Module):
    def __init__(self, gene: tuple[tuple[str, int], ...], concat: tuple[int, ...], c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool, op_affine: bool = True):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.inputs = tuple(j for _, j in gene)
        self.concat = tuple(concat)
        self.ops = nn.ModuleList(
            build_darts_op(op, c, 2 if reduction and j < 2 else 1, affine=op_affine, pool_bn=False) for op, j in gene)
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for k in range(len(self.ops) // 2):
            node = None
            for e in (2 * k, 2 * k + 1):
                op = self.ops[e]
                h = op(states[self.inputs[e]])
                # As in DARTS: identity edges are never dropped, every other op output may be.
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node = h if node is None else node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


def check_darts_size(channels: int, layers: int) -> None:
    check_layers(layers)
    if channels < 2 or channels % 2:
        raise DnasError(f"DARTS networks need an even channel count >= 2 (FactorizedReduce), got {channels}")


def auxiliary_fits(resolution: int) -> bool:
    """Whether DARTS's auxiliary head works on inputs of ``resolution`` px: it sits after the second
    reduction (an r/4 map; r is a multiple of 4), and its 5/3 pool and 2x2 conv leave the 1x1 its
    linear layer expects only for maps of 8-10 px, i.e. r = 32, 36 or 40."""
    return resolution % 4 == 0 and 8 <= resolution // 4 <= 10


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier for an 8x8 input: ReLU, avgpool 5/3, conv1x1 128, conv2x2 768, linear."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """A DARTS-space genotype as a CIFAR network. ``forward`` returns logits, or (logits, aux logits) while
    training with an auxiliary head. Parameter names of the head contain ``auxiliary`` (excluded from counts).

    ``op_affine=False`` gives the cell ops' BNs no scale/shift (preprocessing and stem BNs keep theirs): the
    network whose parameter count NAS-Bench-301's ``params_M`` reports (C=32, 8 cells).

    ``memory_format`` is the activations' layout (channels-last; ``torch.contiguous_format`` runs NCHW).
    """

    memory_format = torch.channels_last

    def __init__(self, genotype: DartsGenotype, channels: int = 36, layers: int = 20, num_classes: int = 10,
                 auxiliary: bool = False, in_channels: int = 3, op_affine: bool = True):
        super().__init__()
        check_darts_size(channels, layers)
        self.genotype = genotype
        self.drop_path_prob = 0.0
        c_stem = STEM_MULTIPLIER * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, c = c_stem, c_stem, channels
        reductions = reduction_layers(layers)
        self.aux_after = reductions[1]
        self.cells = nn.ModuleList()
        reduction_prev = False
        c_aux = c_p
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c *= 2
            ct = "reduce" if reduction else "normal"
            cell = DartsEvalCell(genotype.cell(ct), getattr(genotype, f"{ct}_concat"), c_pp, c_p, c, reduction,
                                 reduction_prev, op_affine)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c
            if i == self.aux_after:
                c_aux = c_p
        self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        aux = None
        # The input is converted once. A 1-channel input is NCHW and channels-last at once, and conv then
        # answers NCHW: the stem's output is converted too (free when it already is channels-last).
        fmt = self.memory_format
        s0 = s1 = self.stem(x.contiguous(memory_format=fmt)).contiguous(memory_format=fmt)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_after and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.pool(s1).flatten(1))
        return logits if aux is None else (logits, aux)
