"""Fast DARTS-space supernet (DARTS, S1-S5): the reference cell's modules, shared work per source node."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spaces import DARTS_EDGES, CellSpec
from ..spaces.ops import FactorizedReduce, stride2_grid
from . import fast_ops
from .arch_state import ArchState
from .darts import MULTIPLIER, STEPS, DartsSearchCell, DartsSupernet
from .fast_ops import (CHANNELS_LAST, MixingWeights, accumulate, batch_norm, can_group, cat_channels, conv,
                       depthwise, fan_out, shared_batch_norm)

_KIND = {"none": "none", "noise": "noise", "skip_connect": "skip", "max_pool_3x3": "max", "avg_pool_3x3": "avg",
         "sep_conv_3x3": "sep", "sep_conv_5x5": "sep", "dil_conv_3x3": "dil", "dil_conv_5x5": "dil"}


def to_phases(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (4B, C, H/2, W/2): the four 2x2 polyphase components, stacked on the batch axis.

    A dilation-2 convolution is a plain convolution on each component; oneDNN has fast depthwise
    kernels for plain convolutions only (its dilated depthwise backward is several times slower).
    """
    b, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).permute(2, 4, 0, 1, 3, 5)
    return y.reshape(4 * b, h // 2, w // 2, c).permute(0, 3, 1, 2)  # channels-last storage


def from_phases(y: torch.Tensor, b: int) -> torch.Tensor:
    """Inverse of :func:`to_phases`."""
    _, c, h2, w2 = y.shape
    x = y.permute(0, 2, 3, 1).reshape(2, 2, b, h2, w2, c).permute(2, 3, 0, 4, 1, 5)
    return x.reshape(b, 2 * h2, 2 * w2, c).permute(0, 3, 1, 2)


class _NodeInput:
    """What the ops leaving one node share, computed on first use: its ReLU and that ReLU's polyphase / even grid."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self._cache: dict[str, torch.Tensor] = {}

    def get(self, key: str, make) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def relu(self) -> torch.Tensor:
        return self.get("relu", lambda: F.relu(self.x))

    def grid(self, offset: int) -> torch.Tensor:
        """The ReLU's even (0) or odd (1) stride-2 grid, dense."""
        return self.get(f"grid{offset}", lambda: stride2_grid(self.relu, offset))


def _depthwise(node: _NodeInput, layer: torch.nn.Conv2d) -> torch.Tensor:
    """A depthwise conv of the node's ReLU; dilation-2 ones run as plain convs on polyphase components."""
    k, d, p, s = layer.kernel_size[0], layer.dilation[0], layer.padding[0], layer.stride[0]
    dilated_depthwise = (_square(layer) and d == 2 and p == k - 1 and layer.bias is None
                         and layer.groups == layer.in_channels)
    if dilated_depthwise and fast_ops.rewrite_pays(node.x):
        x = node.relu
        if s == 1 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0:
            phases = node.get("phases", lambda: to_phases(x))
            return from_phases(depthwise(phases, layer.weight, 1, (k - 1) // 2), x.shape[0])
        if s == 2:  # stride 2 + dilation 2 only reads the even grid
            return depthwise(node.grid(0), layer.weight, 1, (k - 1) // 2)
    return _dw(node.relu, layer)


def _dw(x: torch.Tensor, layer: torch.nn.Conv2d) -> torch.Tensor:
    if layer.groups == layer.in_channels == layer.out_channels and layer.bias is None and _square(layer):
        return depthwise(x, layer.weight, layer.stride[0], layer.padding[0], layer.dilation[0])
    return conv(x, layer)


def _square(layer: torch.nn.Conv2d) -> bool:
    return (layer.kernel_size[0] == layer.kernel_size[1] and layer.stride[0] == layer.stride[1]
            and layer.padding[0] == layer.padding[1] and layer.dilation[0] == layer.dilation[1])


def _sep(relu: torch.Tensor, op: torch.nn.Module, scale: torch.Tensor) -> torch.Tensor:
    """SepConv on an already rectified input: two (depthwise, pointwise, BN) blocks, ReLU between."""
    a, b = op[0], op[1]
    y = F.relu(batch_norm(conv(_dw(relu, a[1]), a[2]), a[3]))
    return batch_norm(conv(_dw(y, b[1]), b[2]), b[3], scale)


def _factorized_reduce(node: _NodeInput, fr: FactorizedReduce, scale: torch.Tensor | None) -> torch.Tensor:
    """The node's FactorizedReduce; its two grids are shared by every one leaving the node."""
    return batch_norm(cat_channels(list(fr.halves(node.grid(0), node.grid(1)))), fr.bn, scale)


class FastDartsCell(DartsSearchCell):
    """Same modules as :class:`DartsSearchCell`; the forward walks source nodes instead of edges."""

    def __init__(self, spec: CellSpec, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool,
                 node_bn: bool = False):
        super().__init__(spec, c_pp, c_p, c, reduction, reduction_prev, node_bn)
        self.kinds = tuple(tuple(_KIND[n] for n in names) for names in spec.ops)
        self.outgoing = tuple(tuple((e, d) for e, (s, d) in enumerate(DARTS_EDGES) if s == j)
                              for j in range(1 + STEPS))
        self.has_noise = any("noise" in kinds for kinds in self.kinds)

    def _noise(self, like: torch.Tensor, live: list[list[bool]]) -> dict[tuple[int, int], torch.Tensor]:
        """All ``noise`` outputs of the cell, drawn in the reference's order (edge by edge) so RNG streams match."""
        out = {}
        for e, kinds in enumerate(self.kinds):
            for k, kind in enumerate(kinds):
                if kind == "noise" and live[e][k]:
                    op = self.mixed[e].ops[k]
                    out[e, k] = torch.randn(like.shape, dtype=like.dtype, device=like.device).mul_(op.std).add_(op.mean)
        return out

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, mw: MixingWeights) -> torch.Tensor:
        live = mw.live
        pre0 = _factorized_reduce(_NodeInput(s0), self.pre0, None) if isinstance(self.pre0, FactorizedReduce) \
            else self.pre0(s0)
        states: list[torch.Tensor | None] = [pre0, self.pre1(s1)] + [None] * STEPS
        ref = states[1][:, :, ::2, ::2] if self.reduction else states[1]
        noise = self._noise(ref, live) if self.has_noise else {}
        for j in range(2 + STEPS - 1):
            xj = states[j]
            if xj is None:  # all inputs removed: a zero node of the cell's output size
                xj = states[j] = torch.zeros_like(ref)
            if j >= 2 and self.node_bns is not None:  # the node's sum is complete here
                xj = states[j] = self.node_bns[j - 2](xj)
            node = _NodeInput(xj)
            pooled: dict[str, list[tuple[int, int, int]]] = {}
            terms: list = []  # parameter-free terms (skip, noise, shared-BN pools), added after the convs
            for e, dst in self.outgoing[j]:
                ops = self.mixed[e].ops
                for k, kind in enumerate(self.kinds[e]):
                    if not live[e][k] or kind == "none":
                        continue
                    op = ops[k]
                    if kind == "noise":
                        terms.append((dst, noise[e, k], mw.scalar(e, k), None))
                        continue
                    if kind == "skip" and not isinstance(op, FactorizedReduce):
                        terms.append((dst, xj, mw.scalar(e, k), None))
                        continue
                    if kind in ("max", "avg"):
                        pooled.setdefault(kind, []).append((e, k, dst))
                        continue
                    scale = mw.vector(e, k, xj.shape[1])
                    if kind == "dil":
                        term = batch_norm(conv(_depthwise(node, op[1]), op[2]), op[3], scale)
                    elif kind == "skip":
                        term = _factorized_reduce(node, op, scale)
                    else:
                        term = _sep(node.relu, op, scale)
                    accumulate(states, dst, term)
            for uses in pooled.values():
                self._pool_terms(xj, uses, mw, states, terms)
            fan_out(states, terms)
        last = states[-1]
        if last is None:
            states[-1] = torch.zeros_like(ref)
        if self.node_bns is not None:
            states[-1] = self.node_bns[-1](states[-1])
        return cat_channels(states[-MULTIPLIER:])

    def _pool_terms(self, x: torch.Tensor, uses: list[tuple[int, int, int]], mw: MixingWeights,
                    states: list[torch.Tensor | None], terms: list) -> None:
        """One pool kind on one node: pooled once; in training the BN output is the same for every edge
        too, and then its scaled copies join ``terms``."""
        ops = [self.mixed[e].ops[k] for e, k, _ in uses]
        pooled = ops[0][0](x)
        bns = [op[1] for op in ops]
        if len(uses) > 1 and bns[0].training and can_group(bns):
            normalised = shared_batch_norm(pooled, bns)
            terms.extend((dst, normalised, mw.scalar(e, k), None) for e, k, dst in uses)
            return
        for (e, k, dst), bn in zip(uses, bns):
            accumulate(states, dst, batch_norm(pooled, bn, mw.vector(e, k, bn.num_features)))


class FastDartsSupernet(DartsSupernet):
    """Drop-in for :class:`DartsSupernet` (same constructor, ``state_dict`` and outputs), in channels-last."""

    def __init__(self, arch: ArchState, channels: int = 16, layers: int = 8, num_classes: int = 10,
                 in_channels: int = 3, node_bn: bool = False):
        super().__init__(arch, channels, layers, num_classes, in_channels, cell_cls=FastDartsCell, node_bn=node_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {ct: MixingWeights(self.arch.weights(ct)) for ct in ("normal", "reduce")}
        s0 = s1 = self.stem(x.contiguous(memory_format=CHANNELS_LAST)).contiguous(memory_format=CHANNELS_LAST)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights["reduce" if cell.reduction else "normal"])
        return self.classifier(self.pool(s1).flatten(1))
