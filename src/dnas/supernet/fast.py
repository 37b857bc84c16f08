"""The fast supernet path: the reference modules (same ``state_dict``), a faster forward.

The fast models subclass the reference ones and keep every parameter and buffer where the reference
keeps it, so checkpoints are interchangeable and ``fast.load_state_dict(ref.state_dict())`` just works.
Only the cell forward differs; it computes what the per-op loop computes:

- the network runs in channels-last memory (pooling, BN and depthwise convolutions are much faster);
- ReLU and pooling are computed once per source node, not once per edge; NB201's 3x3 average pool is
  a depthwise window sum times a constant 1/count map; in training, the DARTS pools' BNs (identical
  outputs for every edge leaving a node) normalise once and update every module's statistics;
- the mixing weight is folded into the (non-affine) BatchNorm as its per-channel scale, skip and pool
  terms are one fused multiply-add, node sums are accumulated in place;
- DARTS dilated depthwise convs run as plain ones on the 2x2 polyphase components (oneDNN's dilated
  depthwise backward is slow) and 5x5 depthwise weight gradients are four 3x3 ones;
- on the CPU, training-mode BatchNorm and NB201's 3x3 window sums run through dnas's own kernels for
  channels-last float32 maps (``native``: built on first use; ATen's where they cannot be built);
- ops whose mixing weight is exactly 0 and ``none`` are never computed (same rule as the reference, so
  the same BN running statistics are updated and the same gradients exist, ``None`` where it is None).

Ideas measured and dropped are listed in ``benchmarks/README.md``.
"""
from __future__ import annotations

import torch.nn as nn

from ..spaces import Space
from .arch_state import ArchState
from .fast_darts import FastDartsSupernet
from .fast_nb201 import FastNb201Supernet


def build_fast(space: Space, arch: ArchState, channels: int, cells: int, num_classes: int,
               in_channels: int, node_bn: bool = False) -> nn.Module:
    """``IMPLS`` entry: same arguments and result contract as the reference builder."""
    if space.family == "nb201":
        return FastNb201Supernet(arch, channels, cells, num_classes, in_channels)
    return FastDartsSupernet(arch, channels, cells, num_classes, in_channels, node_bn=node_bn)
