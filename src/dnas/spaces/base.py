"""What every search space is: cell types, an edge list, candidate ops per edge, and a discretisation rule.

A space is data. Supernets and stand-alone networks are built from it in ``dnas.supernet`` and
``dnas.evaluate``; genotypes (the selected architectures) are immutable values defined per space family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import torch

from ..errors import DnasError

Edge = tuple[int, int]  # (source node, destination node)


class Genotype(Protocol):
    """A discrete architecture: immutable, hashable, with an exact text round-trip."""

    def __str__(self) -> str: ...
    def to_json(self) -> Any: ...


@dataclass(frozen=True)
class CellSpec:
    """One cell type: its edges (in α-row order) and each edge's candidate ops (α columns)."""

    edges: tuple[Edge, ...]
    ops: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.ops):
            raise ValueError("one op list per edge")
        if len({len(o) for o in self.ops}) != 1:
            raise ValueError("every edge needs the same number of candidate ops (α is a matrix)")

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def num_ops(self) -> int:
        return len(self.ops[0])

    def op_index(self, edge: int, name: str) -> int:
        return self.ops[edge].index(name)


@dataclass(frozen=True)
class Space:
    """A cell-based search space.

    ``family`` says which macro network and genotype type apply ("nb201" or "darts"); the rest is data,
    so NB201, DARTS and RobustDARTS S1-S4 differ only in these fields.
    """

    name: str
    family: str
    cells: Mapping[str, CellSpec]  # cell type -> spec ("cell" for NB201; "normal"/"reduce" for DARTS)
    description: str = ""

    @property
    def cell_types(self) -> tuple[str, ...]:
        return tuple(self.cells)

    def alpha_shapes(self) -> dict[str, tuple[int, int]]:
        return {t: (c.num_edges, c.num_ops) for t, c in self.cells.items()}

    # The family modules attach behaviour through these functions, looked up by family, to keep Space plain data.
    def parse(self, text: str) -> Genotype:
        return _family(self.family).parse(self, text)

    def from_json(self, obj: Any) -> Genotype:
        return _family(self.family).from_json(self, obj)

    def discretize(self, scores: Mapping[str, torch.Tensor]) -> Genotype:
        """The space's standard rule: higher score = stronger op / edge. NaN scores are refused (argmax and
        sorting would pick an arbitrary op); -inf is allowed (an op that must not be picked)."""
        for ct, s in scores.items():
            t = torch.as_tensor(s)
            if bool(torch.isnan(t).any()):
                e = int(torch.isnan(t).any(1).nonzero()[0])
                raise DnasError(f"space {self.name}: cannot discretise NaN scores ({ct} edge {e}: {t[e].tolist()})")
        return _family(self.family).discretize(self, scores)

    def genotype_mask(self, genotype: Genotype) -> dict[str, torch.Tensor]:
        """0/1 matrix per cell type with a 1 at every (edge, op) the genotype keeps."""
        return _family(self.family).genotype_mask(self, genotype)

    def validate(self, genotype: Genotype) -> Genotype:
        return _family(self.family).validate(self, genotype)


class _Family(Protocol):
    def parse(self, space: Space, text: str) -> Genotype: ...
    def from_json(self, space: Space, obj: Any) -> Genotype: ...
    def discretize(self, space: Space, scores: Mapping[str, torch.Tensor]) -> Genotype: ...
    def genotype_mask(self, space: Space, genotype: Genotype) -> dict[str, torch.Tensor]: ...
    def validate(self, space: Space, genotype: Genotype) -> Genotype: ...


_FAMILIES: dict[str, _Family] = {}


def register_family(name: str, impl: _Family) -> None:
    _FAMILIES[name] = impl


def _family(name: str) -> _Family:
    return _FAMILIES[name]
