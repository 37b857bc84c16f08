"""``dnas query``: everything known about one architecture (benchmark ground truth, size, FLOPs)."""
from __future__ import annotations

import os
from typing import Any

from ..bench import open_benchmark
from ..errors import DnasError
from ..spaces import get_space
from .networks import network_counts


def query_architecture(space_name: str, arch: str | None = None, *, index: int | None = None,
                       table: str | os.PathLike | None = None, iso: bool = False, channels: int | None = None,
                       layers: int | None = None, num_classes: int = 10, resolution: int = 32) -> dict[str, Any]:
    """One JSON-able record: for NB201 the table row (needs ``table`` or ``$DNAS_NB201_TABLE``) plus the
    CIFAR-10 network's ``params_M`` / ``flops_M``; for the DARTS spaces the network's counts."""
    space = get_space(space_name)
    if (arch is None) == (index is None):
        raise DnasError("give exactly one of --arch/--genotype or --index")
    out: dict[str, Any] = {"space": space.name}
    if space.family == "nb201":
        row = open_benchmark(table).lookup(index if index is not None else arch, iso=iso)
        genotype = space.parse(row["arch_str"])
        out.update(row)
    else:
        if index is not None:
            raise DnasError(f"--index applies to NB201 only; give a {space.name} genotype with --genotype")
        genotype = space.parse(arch)
        out["genotype"] = str(genotype)
    out.update(network_counts(space, genotype, channels=channels, layers=layers, num_classes=num_classes,
                              resolution=resolution))
    return out
