"""One result type for every selection method."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..spaces import Genotype, Space


@dataclass
class Selection:
    """What a selector decided and why.

    ``scores``: per cell type, an (edges x ops) table of the numbers that decided the genotype (higher =
    stronger; NaN where an op was never scored, written as ``null``: see :func:`scores_from_json`).
    ``decisions``: the order in which edges / nodes were decided, each with the per-candidate numbers seen
    at that moment. ``cost``: seconds, forward passes, fine-tuning epochs. ``warnings``: records of genotype
    entries that name an op the supernet had already removed (a DARTS node left with fewer than two live
    inputs by crb pruning or masking: any parse must still name two inputs, so it names dead ones; see
    :func:`removed_ops_named`).
    """

    method: str
    space: str
    genotype: Genotype
    scores: dict[str, list[list[float]]]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "space": self.space, "genotype": str(self.genotype),
                "genotype_json": self.genotype.to_json(), "scores": self.scores, "decisions": self.decisions,
                "cost": self.cost, "options": self.options,
                "warnings": self.warnings}

    @classmethod
    def from_json(cls, space: Space, d: dict[str, Any]) -> "Selection":
        return cls(method=d["method"], space=d["space"], genotype=space.parse(d["genotype"]),
                   scores=scores_from_json(d["scores"]),
                   decisions=d.get("decisions", []), cost=d.get("cost", {}), options=d.get("options", {}),
                   warnings=d.get("warnings", []))


def scores_to_json(scores: dict[str, torch.Tensor]) -> dict[str, list[list[float]]]:
    return {ct: s.detach().double().cpu().tolist() for ct, s in scores.items()}


def scores_from_json(scores: dict[str, list[list[Any]]]) -> dict[str, list[list[float]]]:
    """A score table as read from a selection file: ``null`` (how standard JSON writes NaN) is NaN again.
    Files written before that hold bare ``NaN``, which ``read_json`` already reads as NaN."""
    return {ct: [[math.nan if v is None else v for v in row] for row in rows] for ct, rows in scores.items()}


def removed_ops_named(arch: Any, genotype: Genotype) -> list[dict[str, Any]]:
    """Genotype entries whose (edge, op) is masked in ``arch`` (removed before or during selection)."""
    out = []
    chosen = arch.space.genotype_mask(genotype)
    for ct in arch.cell_types:
        dead = (chosen[ct] > 0) & (arch.mask(ct).detach().cpu() == 0)
        for e, k in dead.nonzero().tolist():
            out.append({"kind": "removed_op_named", "cell_type": ct, "edge": e,
                        "op": arch.space.cells[ct].ops[e][k]})
    return out
