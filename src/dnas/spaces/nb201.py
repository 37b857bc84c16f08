"""NAS-Bench-201: one cell type, 4 nodes, 6 edges, 5 ops; genotypes are the official architecture strings."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import DnasError
from .base import CellSpec, Space, register_family
from .ops import NB201_OPS

# Edge order of the official string and of α rows: node 1 <- 0; node 2 <- 0, 1; node 3 <- 0, 1, 2.
NB201_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


@dataclass(frozen=True)
class Nb201Genotype:
    """Six op names in edge order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2)."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != 6:
            raise DnasError(f"NB201 genotype needs 6 ops, got {len(self.ops)}")
        for op in self.ops:
            if op not in NB201_OPS:
                raise DnasError(f"unknown NB201 op {op!r} (known: {', '.join(NB201_OPS)})")

    def __str__(self) -> str:
        o = self.ops
        return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"

    def to_json(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, text: str) -> "Nb201Genotype":
        text = text.strip()
        nodes = text.split("+")
        if len(nodes) != 3:
            raise DnasError(f"NB201 arch string needs 3 nodes separated by '+', got {len(nodes)}: {text!r}")
        ops: list[str] = []
        for i, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
                raise DnasError(f"NB201 arch string: node {i} must look like |op~j|...|, got {node!r}")
            items = node[1:-1].split("|")
            if len(items) != i:
                raise DnasError(f"NB201 arch string: node {i} needs {i} input edge(s), got {len(items)} in {node!r}")
            for j, item in enumerate(items):
                m = re.fullmatch(r"([A-Za-z0-9_]+)~(\d+)", item)
                if not m:
                    raise DnasError(f"NB201 arch string: malformed edge {item!r} (expected op~index)")
                op, src = m.group(1), int(m.group(2))
                if src != j:
                    raise DnasError(f"NB201 arch string: node {i} edge {item!r} has input {src}, expected {j}")
                if op not in NB201_OPS:
                    raise DnasError(f"unknown NB201 op {op!r} (known: {', '.join(NB201_OPS)})")
                ops.append(op)
        return cls(tuple(ops))


class _Nb201Family:
    def parse(self, space: Space, text: str) -> Nb201Genotype:
        return Nb201Genotype.parse(text)

    def from_json(self, space: Space, obj: Any) -> Nb201Genotype:
        if not isinstance(obj, str):
            raise DnasError("NB201 genotype JSON must be an architecture string")
        return Nb201Genotype.parse(obj)

    def validate(self, space: Space, genotype: Any) -> Nb201Genotype:
        if not isinstance(genotype, Nb201Genotype):
            raise DnasError(f"space {space.name} expects an NB201 architecture, got {type(genotype).__name__}")
        return genotype

    def discretize(self, space: Space, scores: Mapping[str, torch.Tensor]) -> Nb201Genotype:
        """Argmax per edge, ``none`` included (NB201 convention)."""
        s = scores["cell"]
        ops = space.cells["cell"].ops
        return Nb201Genotype(tuple(ops[e][int(torch.argmax(s[e]))] for e in range(6)))

    def genotype_mask(self, space: Space, genotype: Any) -> dict[str, torch.Tensor]:
        g = self.validate(space, genotype)
        spec = space.cells["cell"]
        m = torch.zeros(spec.num_edges, spec.num_ops)
        for e, op in enumerate(g.ops):
            m[e, spec.op_index(e, op)] = 1.0
        return {"cell": m}


register_family("nb201", _Nb201Family())

NB201 = Space(
    name="nb201",
    family="nb201",
    cells={"cell": CellSpec(NB201_EDGES, tuple(NB201_OPS for _ in NB201_EDGES))},
    description="NAS-Bench-201 cell: 4 nodes, 6 edges, 5 ops",
)
