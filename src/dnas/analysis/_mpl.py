"""matplotlib as an optional dependency: figures are built with the object API (no pyplot state)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DnasError


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` not tied to any GUI backend; a clear error when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DnasError("plots need matplotlib: pip install 'dnas[plots]' (or pip install matplotlib)") from None
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure atomically (PNG by the path's suffix)."""
    import io as _io

    from ..io import atomic_write_bytes
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    known = fig.canvas.get_supported_filetypes()
    if fmt not in known:
        raise DnasError(f"{path}: cannot write a figure as .{fmt} (known: {', '.join(sorted(known))})")
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def short_op(name: str) -> str:
    """Compact op labels for axes and cell drawings."""
    return {"none": "none", "skip_connect": "skip", "nor_conv_1x1": "conv1x1", "nor_conv_3x3": "conv3x3",
            "avg_pool_3x3": "avgpool", "max_pool_3x3": "maxpool", "sep_conv_3x3": "sep3x3",
            "sep_conv_5x5": "sep5x5", "dil_conv_3x3": "dil3x3", "dil_conv_5x5": "dil5x5"}.get(name, name)
