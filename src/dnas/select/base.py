"""One result type for every selection method."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..spaces import Genotype, Space


@dataclass
class Selection:
    """What a selector decided and why.

    ``scores``: per cell type, an (edges x ops) table of the numbers that decided the genotype (higher =
    stronger; NaN where an op was never scored). ``decisions``: the order in which edges / nodes were
    decided, each with the per-candidate numbers seen at that moment. ``cost``: seconds, forward passes,
    fine-tuning epochs.
    """

    method: str
    space: str
    genotype: Genotype
    scores: dict[str, list[list[float]]]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "space": self.space, "genotype": str(self.genotype),
                "genotype_json": self.genotype.to_json(), "scores": self.scores, "decisions": self.decisions,
                "cost": self.cost, "options": self.options}

    @classmethod
    def from_json(cls, space: Space, d: dict[str, Any]) -> "Selection":
        return cls(method=d["method"], space=d["space"], genotype=space.parse(d["genotype"]), scores=d["scores"],
                   decisions=d.get("decisions", []), cost=d.get("cost", {}), options=d.get("options", {}))


def scores_to_json(scores: dict[str, torch.Tensor]) -> dict[str, list[list[float]]]:
    return {ct: s.detach().double().cpu().tolist() for ct, s in scores.items()}
