"""Stand-alone networks for any space's genotype, and their parameter / FLOP counts."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import DnasError
from ..spaces import DartsGenotype, Nb201Genotype, Space
from ..supernet import Nb201Network, check_resolution
from .counts import count_flops, count_params
from .darts_net import DartsNetwork

# Default (channels, layers) per space family: NB201's C=16, N=5 cells per stage; DARTS's 20 cells, C=36.
DEFAULT_SIZE = {"nb201": (16, 5), "darts": (36, 20)}


def _size(space: Space, channels: int | None, layers: int | None) -> tuple[int, int]:
    """The family's default for what is None (not for 0: a zero size is refused, not replaced)."""
    c0, l0 = DEFAULT_SIZE[space.family]
    return c0 if channels is None else channels, l0 if layers is None else layers


def build_network(space: Space, genotype: Any, *, num_classes: int = 10, in_channels: int = 3,
                  channels: int | None = None, layers: int | None = None, auxiliary: bool = False,
                  op_affine: bool = True) -> nn.Module:
    """The network that trains ``genotype`` from scratch.

    ``layers`` is NB201's cells per stage or the DARTS spaces' total cell count. ``auxiliary`` adds DARTS's
    auxiliary head; ``op_affine=False`` drops the affine BN parameters of the DARTS cell ops (NB301's count).
    """
    genotype = space.validate(genotype)
    channels, layers = _size(space, channels, layers)
    if channels < 1 or layers < 1 or num_classes < 2:
        raise DnasError(f"impossible network size: channels={channels}, layers={layers}, classes={num_classes}")
    if space.family == "nb201":
        if auxiliary:
            raise DnasError("NB201 networks have no auxiliary head")
        assert isinstance(genotype, Nb201Genotype)
        return Nb201Network(genotype, channels, layers, num_classes, in_channels)
    assert isinstance(genotype, DartsGenotype)
    return DartsNetwork(genotype, channels, layers, num_classes, auxiliary=auxiliary, in_channels=in_channels,
                        op_affine=op_affine)


def network_counts(space: Space, genotype: Any, *, channels: int | None = None, layers: int | None = None,
                   num_classes: int = 10, resolution: int = 32, in_channels: int = 3) -> dict[str, Any]:
    """Parameter and FLOP counts (millions) of ``genotype``'s network on ``resolution`` x ``resolution`` inputs.

    ``params_M`` excludes an auxiliary head; for the DARTS spaces ``params_with_aux_M`` includes it and
    ``madds_M`` gives conv + linear multiply-adds only (the FLOPs most DARTS papers report). The network
    is built on the meta device: counting needs only shapes, so no size allocates memory.
    """
    check_resolution(resolution)  # the networks halve the map twice: a bad size fails deep inside conv2d
    channels, layers = _size(space, channels, layers)
    darts = space.family == "darts"
    with torch.device("meta"):
        model = build_network(space, genotype, num_classes=num_classes, in_channels=in_channels,
                              channels=channels, layers=layers, auxiliary=darts)
    shape = (1, in_channels, resolution, resolution)
    out: dict[str, Any] = {"channels": channels, "layers": layers, "num_classes": num_classes,
                           "resolution": resolution, "params_M": round(count_params(model) / 1e6, 6)}
    if darts:
        out["params_with_aux_M"] = round(count_params(model, exclude_aux=False) / 1e6, 6)
    out["flops_M"] = round(count_flops(model, shape) / 1e6, 6)
    if darts:
        out["madds_M"] = round(count_flops(model, shape, elementwise=False) / 1e6, 6)
    return out
