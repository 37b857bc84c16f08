"""Search spaces: op sets, cell topologies, genotype types and their text formats."""
from __future__ import annotations

from ..errors import DnasError
from .base import CellSpec, Genotype, Space
from .darts import DARTS, DARTS_EDGES, S1, S2, S3, S4, S5, DartsGenotype
from .nb201 import NB201, NB201_EDGES, Nb201Genotype

SPACES: dict[str, Space] = {s.name: s for s in (NB201, DARTS, S5, S1, S2, S3, S4)}


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except KeyError:
        raise DnasError(f"unknown space {name!r} (known: {', '.join(SPACES)})") from None


__all__ = ["CellSpec", "DARTS", "DARTS_EDGES", "DartsGenotype", "Genotype", "NB201", "NB201_EDGES",
           "Nb201Genotype", "S1", "S2", "S3", "S4", "S5", "SPACES", "Space", "get_space"]
