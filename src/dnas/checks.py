"""Value checks shared by the search and training settings: each bad value is one line naming its flag."""
from __future__ import annotations

import math

from typing import Iterable

import torch

from .errors import DnasError


# The optimisers apply these factors to float32 tensors: a larger one is an overflow error mid-step, after the
# run directory was created (and, with --force, the old run deleted).
FLOAT32_MAX = 3.4028234663852886e38


def finite_positive(flag: str, value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= FLOAT32_MAX):
        raise DnasError(f"{flag} must be a finite number > 0 (at most {FLOAT32_MAX:.3g}), got {value}")


def finite_non_negative(flag: str, value: float, note: str = "") -> None:
    if not (math.isfinite(value) and 0 <= value <= FLOAT32_MAX):
        raise DnasError(f"{flag} must be a finite number >= 0{note} (at most {FLOAT32_MAX:.3g}), got {value}")


def check_sgd(*, lr: float, lr_min: float, momentum: float, weight_decay: float, grad_clip: float) -> None:
    """SGD with a cosine schedule from ``lr`` to ``lr_min``, as the search's w and ``dnas train`` use it."""
    finite_positive("--lr", lr)
    if not (math.isfinite(lr_min) and 0 <= lr_min <= lr):
        raise DnasError(f"--lr-min must be a finite number in [0, --lr], got {lr_min}")
    if not 0 <= momentum < 1:
        raise DnasError(f"--momentum must be in [0, 1), got {momentum}")
    finite_non_negative("--weight-decay", weight_decay)
    finite_non_negative("--grad-clip", grad_clip, " (0: off)")


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """No NaN/inf in any of ``tensors`` (one host sync for all of them)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return not flags or bool(torch.stack(flags).all())
