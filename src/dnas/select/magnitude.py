"""Magnitude selection (the DARTS baseline): the space's standard rule applied to the mixing weights.

NB201: argmax per edge, ``none`` included. DARTS spaces: the strongest non-``none`` op per edge, then
the two incoming edges per node whose chosen op weighs most. Edges already fixed by a selector count
as one-hot.
"""
from __future__ import annotations

import time

import torch

from ..supernet import ArchState
from .base import Selection, scores_to_json


def select_magnitude(arch: ArchState) -> Selection:
    t0 = time.time()
    with torch.no_grad():
        scores = {ct: arch.base_weights(ct).detach().cpu() for ct in arch.cell_types}
    genotype = arch.space.discretize(scores)
    return Selection(method="magnitude", space=arch.space.name, genotype=genotype, scores=scores_to_json(scores),
                     cost={"seconds": time.time() - t0, "forward_passes": 0, "finetune_epochs": 0})
