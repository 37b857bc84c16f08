"""Weight-sharing supernets: ``ArchState`` -> mixing weights -> mixed ops -> cells -> macro networks."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn

from ..errors import DnasError
from ..spaces import Space
from .arch_state import ACTIVATIONS, ArchState
from .darts import DartsSupernet
from .fast import build_fast
from .nb201 import Nb201Network, Nb201Supernet

DEFAULT_CELLS = {"nb201": 5, "darts": 8}


def build_supernet(space: Space, *, channels: int = 16, cells: int | None = None, num_classes: int = 10,
                   in_channels: int = 3, activation: str = "softmax", arch: ArchState | None = None,
                   impl: str = "fast", node_bn: bool = False) -> nn.Module:
    """Build the search supernet of ``space``.

    ``cells`` follows each space's convention: NB201's N (cells per stage, 3 stages); the DARTS spaces'
    total layer count (reduction cells at L//3 and 2L//3). ``impl``: "fast" (default; fused, tested
    equal to the reference, same state_dict) or "reference" (the readable per-op loop; for per-op hooks).
    ``node_bn`` (DARTS spaces): a non-affine BN on every intermediate node, as DARTS-PRIME's search network.
    """
    if channels < 1 or num_classes < 2:
        raise DnasError(f"impossible supernet size: channels={channels}, classes={num_classes}")
    cells = DEFAULT_CELLS[space.family] if cells is None else cells
    if cells < 1:
        raise DnasError(f"--cells must be >= 1, got {cells}")
    if space.family == "darts" and channels % 2:
        raise DnasError(f"DARTS-space supernets need an even channel count (FactorizedReduce), got {channels}")
    check_node_bn(space, node_bn)
    if arch is not None and arch.space != space:  # its α columns would weight another op list
        raise DnasError(f"the ArchState is for space {arch.space.name}, the supernet for {space.name}")
    arch = arch or ArchState(space, activation)
    if impl not in IMPLS:
        raise DnasError(f"unknown supernet implementation {impl!r} (known: {', '.join(IMPLS)})")
    return IMPLS[impl](space, arch, channels, cells, num_classes, in_channels, node_bn=node_bn)


def _reference(space: Space, arch: ArchState, channels: int, cells: int, num_classes: int,
               in_channels: int, node_bn: bool = False) -> nn.Module:
    if space.family == "nb201":
        return Nb201Supernet(arch, channels, cells, num_classes, in_channels)
    return DartsSupernet(arch, channels, cells, num_classes, in_channels, node_bn=node_bn)


IMPLS = {"reference": _reference, "fast": build_fast}


def check_resolution(resolution: int | None) -> None:
    """Inputs must be a multiple of 4 px: every network here halves its map twice with layers whose two
    paths only agree on even sizes (NB201's residual reductions, DARTS's FactorizedReduce)."""
    if resolution is not None and (resolution < 4 or resolution % 4):
        raise DnasError(f"--resolution must be a multiple of 4 (the networks halve the map twice), got {resolution}")


def check_bn_batches(resolution: int, batch_size: int, sizes: dict[str, int]) -> None:
    """At resolution 4 the last stage's maps are 1 x 1, so a train-mode BatchNorm there sees one value per
    channel when a batch holds one image, and torch raises mid-epoch. Refuse such splits up front."""
    if resolution > 4:  # 8 px ends at 2 x 2, enough for one image
        return
    for name, n in sizes.items():
        if min(batch_size, n) == 1 or n % batch_size == 1:
            raise DnasError(f"resolution {resolution}: the {name} split ({n} images, batch size {batch_size}) has a "
                            f"1-image batch, which BatchNorm cannot train on at the last stage's 1 x 1 maps; use "
                            f"--resolution 8 or more, or another --batch-size / --subset")


def check_node_bn(space: Space, node_bn: bool) -> None:
    """Node BN is DARTS-PRIME's change to the DARTS-space cell; NB201 cells have no such option."""
    if node_bn and space.family != "darts":
        raise DnasError(f"--node-bn is a DARTS-space option (DARTS-PRIME's search network), not for {space.name}")


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The network weights w (everything except α)."""
    arch_ids = {id(p) for p in model.arch.parameters()}
    return [p for p in model.parameters() if id(p) not in arch_ids]


@contextmanager
def frozen_weights(params: list[nn.Parameter]) -> Iterator[None]:
    """Weights out of the graph for a step that only needs ∇α (build the loss and backpropagate inside).

    The mirror of ``ArchState.frozen()``: autograd's own ops skip gradients nobody asked for, but a
    custom op only sees ``requires_grad`` (the fast DARTS path's 5x5 depthwise weight gradient would be
    computed and thrown away: 11% of a DARTS α step).
    """
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


__all__ = ["ACTIVATIONS", "ArchState", "DEFAULT_CELLS", "DartsSupernet", "IMPLS", "Nb201Network", "Nb201Supernet",
           "build_supernet", "check_bn_batches", "check_node_bn", "check_resolution", "frozen_weights", "weight_parameters"]
