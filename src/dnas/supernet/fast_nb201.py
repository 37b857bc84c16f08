"""Fast NAS-Bench-201 supernet: the reference cell's modules, one shared ReLU and pool per source node."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces import CellSpec
from ..spaces.ops import Identity, ReLUConvBN, Zero
from .arch_state import ArchState
from .fast_ops import (CHANNELS_LAST, MixingWeights, accumulate, batch_norm, conv, fan_out, inverse_counts,
                       sum_pool3x3)
from .nb201 import Nb201SearchCell, Nb201Supernet


def _kind(op: nn.Module) -> str:
    """What an NB201 op needs from its source node."""
    if isinstance(op, Zero):
        return "none"
    if isinstance(op, Identity):
        return "skip"
    if isinstance(op, ReLUConvBN):
        return "conv"
    if (isinstance(op, nn.AvgPool2d) and op.kernel_size in (3, (3, 3)) and op.stride in (1, (1, 1))
            and op.padding in (1, (1, 1)) and not op.count_include_pad and not op.ceil_mode
            and op.divisor_override is None):
        return "avg3x3"  # = 3x3 window sums / in-image pixel counts
    return "module"


class FastNb201Cell(Nb201SearchCell):
    """Same modules as :class:`Nb201SearchCell`; the forward walks source nodes instead of edges."""

    def __init__(self, c: int, spec: CellSpec):
        super().__init__(c, spec)
        self.kinds = tuple(tuple(_kind(op) for op in mixed.ops) for mixed in self.mixed)
        # Source node -> its outgoing (edge, destination) pairs, in edge order.
        self.outgoing = tuple(tuple((e, d) for e, (s, d) in enumerate(spec.edges) if s == j) for j in range(3))

    def forward(self, x: torch.Tensor, mw: MixingWeights) -> torch.Tensor:
        live = mw.live
        acc: list[torch.Tensor | None] = [x, None, None, None]
        for j in range(3):
            xj = acc[j]
            if xj is None:  # every input of node j is none / masked: the node is exactly zero
                xj = acc[j] = torch.zeros_like(x)
            convs: list[tuple[int, int, int]] = []
            others: list[tuple[str, int, int, int]] = []
            for e, dst in self.outgoing[j]:
                for k, kind in enumerate(self.kinds[e]):
                    if not live[e][k] or kind == "none":
                        continue
                    if kind == "conv":
                        convs.append((e, k, dst))
                    else:
                        others.append((kind, e, k, dst))
            if convs:
                relu = F.relu(xj)
                for e, k, dst in convs:
                    op = self.mixed[e].ops[k]
                    accumulate(acc, dst, batch_norm(conv(relu, op[1]), op[2], mw.vector(e, k, op[2].num_features)))
            # After the convs, so a node's sum usually starts from a BN output rather than from zeros.
            terms = []
            pooled = None
            for kind, e, k, dst in others:
                if kind == "skip":
                    terms.append((dst, xj, mw.scalar(e, k), None))
                elif kind == "avg3x3":
                    if pooled is None:  # once per node; a depthwise conv beats avg_pool2d fw + bw
                        pooled = sum_pool3x3(xj)
                    terms.append((dst, pooled, mw.scalar(e, k), inverse_counts(xj)))
                else:
                    terms.append((dst, self.mixed[e].ops[k](xj), mw.scalar(e, k), None))
            fan_out(acc, terms)
        out = acc[3]
        return torch.zeros_like(x) if out is None else out



class FastNb201Supernet(Nb201Supernet):
    """Drop-in for :class:`Nb201Supernet` (same constructor, ``state_dict`` and outputs), in channels-last."""

    def __init__(self, arch: ArchState, channels: int = 16, cells_per_stage: int = 5, num_classes: int = 10,
                 in_channels: int = 3):
        spec = arch.space.cells["cell"]
        super().__init__(arch, channels, cells_per_stage, num_classes, in_channels,
                         make_cell=lambda c: FastNb201Cell(c, spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mw = MixingWeights(self.arch.weights("cell"))
        x = self.stem(x.contiguous(memory_format=CHANNELS_LAST)).contiguous(memory_format=CHANNELS_LAST)
        for layer, is_cell in zip(self.layers, self.is_cell):
            x = layer(x, mw) if is_cell else layer(x)
        return self.head(x)

