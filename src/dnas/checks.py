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


# Seeds reach torch as 64-bit generator seeds (some streams add a small offset first). torch takes -2**63 ..
# 2**64 - 1 and fails with a traceback beyond; it also treats -1 and 2**64 - 1 as one seed. The signed range
# keeps every seed distinct and every offset stream in torch's range.
SEED_MIN, SEED_MAX = -2**63, 2**63 - 1


def check_seed(name: str, value: object, minimum: int = SEED_MIN) -> int:
    """A seed: a whole number (not a bool) from ``minimum`` to 2**63 - 1; returned as is."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= SEED_MAX:
        low = "-2**63" if minimum == SEED_MIN else str(minimum)
        raise DnasError(f"{name} must be a whole number from {low} to 2**63 - 1, got {value!r}")
    return value


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """No NaN/inf in any of ``tensors`` (one host sync for all of them)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return not flags or bool(torch.stack(flags).all())
