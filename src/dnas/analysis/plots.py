"""``dnas analyze plots``: search dynamics and selected cells of a run directory, as PNGs in RUN/analysis/."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DnasError
from ..rundir import read_config, read_metrics, read_selection
from ..spaces import get_space
from .cells import draw_genotype
from .figures import accuracy_figure, alpha_figure, pt_decisions_figure


def _metrics(path: Path) -> list[dict[str, Any]]:
    return read_metrics(path) if path.exists() else []


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, *, engine: str = "auto") -> list[Path]:
    """α per edge over epochs, train/valid accuracy, PT decisions, and a drawing per selected genotype."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise DnasError(f"{run_dir}: not a run directory (no config.json)")
    space = get_space(read_config(run_dir)["space"])
    out = Path(out_dir) if out_dir else run_dir / "analysis"
    written: list[Path] = []
    rows = _metrics(run_dir / "metrics.jsonl")
    with_alpha = [r for r in rows if "alpha" in r]
    for ct in space.cell_types:
        spec = space.cells[ct]
        for r in with_alpha:  # the types are checked as the file is read; the shape is the space's
            a = r["alpha"].get(ct)
            if a is None or len(a) != spec.num_edges or any(len(row) != spec.num_ops for row in a):
                raise DnasError(f"{run_dir / 'metrics.jsonl'}: epoch {r['epoch']}: alpha.{ct} is not "
                                f"{spec.num_edges} x {spec.num_ops} (edges x ops of {space.name})")
        if with_alpha:
            written.append(alpha_figure(space, ct, [r["epoch"] for r in with_alpha],
                                        [r["alpha"][ct] for r in with_alpha], out / f"alpha_{ct}.png"))
    sel_dir = run_dir / "selections"
    tunes = {p.name[: -len(".tune.jsonl")]: _metrics(p) for p in sorted(sel_dir.glob("*.tune.jsonl"))}
    if rows:
        written.append(accuracy_figure(rows, tunes, out / "accuracy.png"))
    if (sel_dir / "pt.json").exists():
        pt = read_selection(sel_dir / "pt.json")
        decisions = pt.get("decisions", [])
        if any(d.get("kind") == "op" for d in decisions):
            criterion = (pt.get("options") or {}).get("criterion", "acc")
            written.append(pt_decisions_figure(space, decisions, out / "pt_decisions.png", criterion))
    for p in sorted(sel_dir.glob("*.json")) if sel_dir.is_dir() else []:
        d = read_selection(p)
        if d.get("genotype"):
            method = d.get("method", p.stem)
            written.append(draw_genotype(space, space.parse(d["genotype"]), out / f"genotype_{method}.png",
                                         title=f"{method}: {d['genotype']}", engine=engine))
    if not written:
        raise DnasError(f"{run_dir}: nothing to plot (no metrics.jsonl or selections)")
    return written
