"""The reference mixed op: a readable loop over candidate ops, skipping every op whose weight is 0.

``none`` contributes exactly 0 and is never computed; masked ops (weight exactly 0) are skipped too,
so a supernet after PT decisions or under a SPOS one-hot sample computes only the live paths.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class MixedOp(nn.Module):
    def __init__(self, names: Sequence[str], ops: Sequence[nn.Module]):
        super().__init__()
        self.names = tuple(names)
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, w: torch.Tensor, live: Sequence[bool]) -> torch.Tensor | None:
        """Σ_k w[k]·op_k(x) over live, non-``none`` ops; ``None`` when nothing contributes."""
        out = None
        for k, op in enumerate(self.ops):
            if not live[k] or self.names[k] == "none":
                continue
            y = w[k] * op(x)
            out = y if out is None else out + y
        return out


def live_ops(weights: torch.Tensor) -> list[list[bool]]:
    """Which (edge, op) weights are non-zero: one host sync per cell type and forward, not one per op."""
    return (weights != 0).tolist()
