"""NAS-Bench-201 macro network, shared by the supernet and by stand-alone architectures.

stem conv3x3 + BN -> N cells (C) -> ResNet basic block (stride 2) -> N cells (2C) -> block -> N cells (4C)
-> BN-ReLU -> global average pool -> linear. Supernet cells mix ops with non-affine BN (as the NB201
search code); stand-alone cells hold one op per edge with affine BN (the benchmark's networks).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..spaces import NB201_EDGES, CellSpec, Nb201Genotype
from ..spaces.ops import AvgPool2d, ReLUConvBN, build_nb201_op
from .arch_state import ArchState
from .mixed import MixedOp, live_ops


class ResNetBasicBlock(nn.Module):
    """NB201's reduction block: two ReLU-Conv-BN 3x3 (first strided) plus avgpool + 1x1 conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        if stride == 2:
            # The library's pool: on CUDA its backward for channels-last maps runs the NCHW kernel (see AvgPool2d).
            self.downsample: nn.Module = nn.Sequential(AvgPool2d(2, 2, 0), nn.Conv2d(c_in, c_out, 1, bias=False))
        elif c_in != c_out:
            self.downsample = ReLUConvBN(c_in, c_out, 1, 1, 0)
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def _sum_or_zeros(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if not parts:  # every incoming op is none / masked: the node is exactly zero
        return torch.zeros_like(like)
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


class Nb201SearchCell(nn.Module):
    """Reference supernet cell: node i = Σ_{j<i} mixed_op_{j->i}(node j); output node 3."""

    def __init__(self, c: int, spec: CellSpec):
        super().__init__()
        self.edges = spec.edges
        self.mixed = nn.ModuleList(
            MixedOp(names, [build_nb201_op(n, c, affine=False) for n in names]) for names in spec.ops)

    def forward(self, x: torch.Tensor, w: torch.Tensor, live: list[list[bool]]) -> torch.Tensor:
        nodes = [x]
        for i in range(1, 4):
            parts = []
            for e, (src, dst) in enumerate(self.edges):
                if dst == i:
                    y = self.mixed[e](nodes[src], w[e], live[e])
                    if y is not None:
                        parts.append(y)
            nodes.append(_sum_or_zeros(parts, x))
        return nodes[3]


class Nb201GenotypeCell(nn.Module):
    """Stand-alone cell: one op per edge (NB201's InferCell)."""

    def __init__(self, c: int, genotype: Nb201Genotype):
        super().__init__()
        self.names = genotype.ops
        self.ops = nn.ModuleList(build_nb201_op(n, c, affine=True) for n in genotype.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, 4):
            parts = [self.ops[e](nodes[src]) for e, (src, dst) in enumerate(NB201_EDGES)
                     if dst == i and self.names[e] != "none"]
            nodes.append(_sum_or_zeros(parts, x))
        return nodes[3]


class Nb201Macro(nn.Module):
    """The NB201 macro skeleton around any cell factory ``make_cell(channels) -> nn.Module``."""

    def __init__(self, make_cell: Callable[[int], nn.Module], channels: int, cells_per_stage: int,
                 num_classes: int, in_channels: int = 3):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        layers: list[nn.Module] = []
        self.is_cell: list[bool] = []
        for stage, width in enumerate((c, 2 * c, 4 * c)):
            if stage > 0:
                layers.append(ResNetBasicBlock(width // 2, width, 2))
                self.is_cell.append(False)
            for _ in range(cells_per_stage):
                layers.append(make_cell(width))
                self.is_cell.append(True)
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * c), nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * c, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.lastact(x)).flatten(1))


class Nb201Network(Nb201Macro):
    """A stand-alone NAS-Bench-201 architecture (the network the benchmark trained).

    Its activations are channels-last (``memory_format``; ``torch.contiguous_format`` runs NCHW): on the
    CPU a training step is ~1.5x faster (benchmarks/README.md, ``train_step.py``). The input is converted
    once, at the stem (and the stem's output: a 1-channel input is both layouts, and conv answers NCHW);
    parameters and ``state_dict`` keep their NCHW layout, so checkpoints are unchanged.
    """

    memory_format = torch.channels_last

    def __init__(self, genotype: Nb201Genotype, channels: int = 16, cells_per_stage: int = 5,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__(lambda c: Nb201GenotypeCell(c, genotype), channels, cells_per_stage, num_classes,
                         in_channels)
        self.genotype = genotype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = self.memory_format
        x = self.stem(x.contiguous(memory_format=fmt)).contiguous(memory_format=fmt)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class Nb201Supernet(Nb201Macro):
    """Weight-sharing NB201 supernet; all cells share one α (cell type ``cell``) read through ``arch``."""

    def __init__(self, arch: ArchState, channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
                 in_channels: int = 3, make_cell: Callable[[int], nn.Module] | None = None):
        spec = arch.space.cells["cell"]
        super().__init__(make_cell or (lambda c: Nb201SearchCell(c, spec)), channels, cells_per_stage,
                         num_classes, in_channels)
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.arch.weights("cell")
        live = live_ops(w)
        x = self.stem(x)
        for layer, is_cell in zip(self.layers, self.is_cell):
            x = layer(x, w, live) if is_cell else layer(x)
        return self.head(x)
