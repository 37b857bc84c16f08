"""JSON output helpers shared by the analysis writers."""
from __future__ import annotations

import math
from typing import Any


def jsonable(x: Any) -> Any:
    """NaN/inf become null and numpy scalars plain numbers, so the files stay standard JSON."""
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x
