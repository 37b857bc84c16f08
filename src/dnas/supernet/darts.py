"""DARTS-space supernet (also RobustDARTS S1-S4): stem, L cells with reductions at L/3 and 2L/3.

Each cell preprocesses its two inputs (ReLU-Conv1x1-BN, or FactorizedReduce after a reduction cell),
then node k (2..5) sums mixed ops from all earlier nodes; the output concatenates nodes 2..5.
All search BNs are non-affine, as in the DARTS search code. ``node_bn`` adds a non-affine BN on every
intermediate node's sum, as DARTS-PRIME's search network does (``model_admm_hard_statebn.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import DnasError
from ..spaces import DARTS_EDGES, CellSpec
from ..spaces.ops import FactorizedReduce, ReLUConvBN, build_darts_op
from .arch_state import ArchState
from .mixed import MixedOp, live_ops

STEPS, MULTIPLIER, STEM_MULTIPLIER = 4, 4, 3


def reduction_layers(layers: int) -> tuple[int, int]:
    return layers // 3, 2 * layers // 3


def check_layers(layers: int) -> None:
    if layers < 3:
        raise DnasError(f"DARTS-space networks need at least 3 cells (reductions at L/3 and 2L/3), got {layers}")


class DartsSearchCell(nn.Module):
    def __init__(self, spec: CellSpec, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool,
                 node_bn: bool = False):
        super().__init__()
        self.reduction = reduction
        self.node_bns = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for _ in range(STEPS)) if node_bn else None
        self.pre0 = FactorizedReduce(c_pp, c, affine=False) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0,
                                                                                               affine=False)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.mixed = nn.ModuleList()
        for (src, _), names in zip(DARTS_EDGES, spec.ops):
            stride = 2 if reduction and src < 2 else 1
            self.mixed.append(MixedOp(names, [build_darts_op(n, c, stride, affine=False, pool_bn=True)
                                              for n in names]))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor, live: list[list[bool]]) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for k in range(STEPS):
            out = None
            for j in range(2 + k):
                y = self.mixed[e](states[j], w[e], live[e])
                e += 1
                if y is not None:
                    out = y if out is None else out + y
            if out is None:  # all inputs removed: a zero node of the cell's output size
                ref = states[1]
                if self.reduction:
                    ref = ref[:, :, ::2, ::2]
                out = torch.zeros_like(ref)
            states.append(out if self.node_bns is None else self.node_bns[k](out))
        return torch.cat(states[-MULTIPLIER:], dim=1)


class DartsSupernet(nn.Module):
    """Weight-sharing DARTS supernet; α per cell type (``normal``/``reduce``) read through ``arch``."""

    def __init__(self, arch: ArchState, channels: int = 16, layers: int = 8, num_classes: int = 10,
                 in_channels: int = 3, cell_cls: type[nn.Module] = DartsSearchCell, node_bn: bool = False):
        super().__init__()
        check_layers(layers)
        self.arch = arch
        c_curr = STEM_MULTIPLIER * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        red = reduction_layers(layers)
        for i in range(layers):
            reduction = i in red
            if reduction:
                c_curr *= 2
            spec = arch.space.cells["reduce" if reduction else "normal"]
            self.cells.append(cell_cls(spec, c_pp, c_p, c_curr, reduction, reduction_prev, node_bn))
            reduction_prev = reduction
            c_pp, c_p = c_p, MULTIPLIER * c_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {ct: self.arch.weights(ct) for ct in ("normal", "reduce")}
        live = {ct: live_ops(w) for ct, w in weights.items()}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            ct = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, weights[ct], live[ct])
        return self.classifier(self.pool(s1).flatten(1))
