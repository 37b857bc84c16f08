"""Optional TensorBoard event files (``pip install 'dnas[tensorboard]'``); everything is a no-op without it.

Live logging from a loop: ``tb_log(run_dir, record, epoch, prefix="search")`` (one line, writer cached
per run directory; a resumed run drops the events after its restart step). After the fact:
``export_run(run_dir)`` turns metrics.jsonl and the selections' fine-tuning logs into event files.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

TB_DIR = "tensorboard"
_WRITERS: dict[tuple[str, str], Any] = {}


def maybe_writer(run_dir: str | Path, name: str = "", purge_step: int | None = None) -> Any | None:
    """A ``SummaryWriter`` logging to RUN/tensorboard[/name], or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises this when the tensorboard package is missing
        return None
    log_dir = Path(run_dir) / TB_DIR / name if name else Path(run_dir) / TB_DIR
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def log_epoch(writer: Any | None, metrics: Mapping[str, Any], epoch: int, prefix: str = "search",
              op_names: Mapping[str, Iterable[Iterable[str]]] | None = None) -> None:
    """Every numeric field as ``prefix/field``; an ``alpha`` field (cell type -> edges x ops) as
    ``alpha/<cell type>/edge<e>/<op>``. ``op_names``: per cell type, the op names of each edge."""
    if writer is None:
        return
    for key, value in metrics.items():
        if key in ("epoch", "alpha"):
            continue
        v = _number(value)
        if v is not None:
            writer.add_scalar(f"{prefix}/{key}", v, epoch)
    for ct, table in (metrics.get("alpha") or {}).items():
        names = [list(n) for n in op_names[ct]] if op_names and ct in op_names else None
        for e, row in enumerate(table):
            for k, v in enumerate(row):
                op = names[e][k] if names else f"op{k}"
                writer.add_scalar(f"alpha/{ct}/edge{e}/{op}", float(v), epoch)
    writer.flush()


def tb_log(run_dir: str | Path, metrics: Mapping[str, Any], epoch: int, prefix: str = "search",
           op_names: Mapping[str, Iterable[Iterable[str]]] | None = None) -> None:
    """One-line hook for training loops: log to RUN/tensorboard/<prefix> if tensorboard is installed."""
    key = (str(Path(run_dir).resolve()), prefix)
    if key not in _WRITERS:
        _WRITERS[key] = maybe_writer(run_dir, prefix, purge_step=epoch)
    if _WRITERS[key] is not None and op_names is None and "alpha" in metrics:
        op_names = _run_op_names(Path(run_dir))
    log_epoch(_WRITERS[key], metrics, epoch, prefix, op_names)


def _run_op_names(run_dir: Path) -> dict[str, Any] | None:
    """Op names per cell type from the run's config.json (None when there is none)."""
    from .rundir import read_config
    from .spaces import get_space
    if not (run_dir / "config.json").exists():
        return None
    space = get_space(read_config(run_dir)["space"])
    return {ct: spec.ops for ct, spec in space.cells.items()}


def close_all() -> None:
    for w in _WRITERS.values():
        if w is not None:
            w.close()
    _WRITERS.clear()


def export_run(run_dir: str | Path) -> Path | None:
    """Write RUN/tensorboard/export/ from metrics.jsonl and selections/*.tune.jsonl; None without tensorboard."""
    from .rundir import read_metrics
    run_dir = Path(run_dir)
    target = run_dir / TB_DIR / "export"
    if _tensorboard_missing():
        return None
    shutil.rmtree(target, ignore_errors=True)
    op_names = _run_op_names(run_dir)
    w = maybe_writer(run_dir, "export")
    metrics = run_dir / "metrics.jsonl"
    offset = 0
    if metrics.exists():
        for r in read_metrics(metrics):
            log_epoch(w, r, int(r.get("epoch", 0)), "search", op_names)
            offset = max(offset, int(r.get("epoch", 0)) + 1)
    for p in sorted((run_dir / "selections").glob("*.tune.jsonl")):
        method = p.name[: -len(".tune.jsonl")]
        for r in read_metrics(p):  # tuning continues after the search epochs
            log_epoch(w, r, offset + int(r.get("epoch", 0)), f"select_{method}", op_names)
    w.close()
    return target


def _tensorboard_missing() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return True
    return False
