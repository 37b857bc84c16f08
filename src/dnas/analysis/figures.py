"""The analysis figures (matplotlib, optional): ranking scatter, op-strength heat maps, search dynamics."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..spaces import Space
from ._mpl import new_figure, save, short_op


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def ranking_scatter(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], path: str | Path) -> Path:
    """Supernet accuracy (inherited weights) against ground truth, the supernet's top-1 starred."""
    truth = np.array([r["truth"] for r in records], dtype=float)
    pred = np.array([r["supernet_acc"] for r in records], dtype=float) * 100
    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    ax.scatter(truth, pred, s=10, alpha=0.6, edgecolors="none")
    best = int(np.argmax(pred))
    ax.scatter([truth[best]], [pred[best]], marker="*", s=160, color="tab:red", label="supernet top-1")
    ax.set_xlabel(f"ground truth ({summary.get('table', {}).get('acc_column', 'accuracy')}, %)")
    ax.set_ylabel("supernet accuracy, inherited weights (%)")
    ax.set_title(f"Kendall τ = {_fmt(summary.get('kendall_tau'))}, Spearman ρ = {_fmt(summary.get('spearman_rho'))}"
                 f" (K = {len(records)})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def edge_labels(space: Space) -> list[str]:
    """Row labels of a space's (cell type, edge) pairs, in α order."""
    many = len(space.cells) > 1
    return [f"{ct[0] + ' ' if many else ''}{src}→{dst}" for ct, spec in space.cells.items()
            for src, dst in spec.edges]


def ops_heatmap(space: Space, truth: Mapping[str, np.ndarray], methods: Mapping[str, Mapping[str, np.ndarray]],
                stats: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """One panel per method plus the truth: edges x ops, per-edge best op outlined."""
    panels = [("ground truth (Δ acc, points)", truth, None)] + [(m, s, stats.get(m)) for m, s in methods.items()]
    rows = edge_labels(space)
    spec0 = next(iter(space.cells.values()))
    uniform = all(spec.ops == (spec0.ops[0],) * spec.num_edges for spec in space.cells.values())
    cols = [short_op(o) for o in spec0.ops[0]] if uniform else [f"op {k}" for k in range(spec0.num_ops)]
    n = len(panels)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig = new_figure(3.6 * ncol, (0.28 * len(rows) + 1.6) * nrow)
    for i, (title, table, st) in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        data = np.concatenate([np.asarray(table[ct], dtype=float) for ct in space.cells])
        im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=ax, shrink=0.8)
        for r in range(data.shape[0]):
            if np.isfinite(data[r]).any():
                c = int(np.nanargmax(data[r]))
                ax.add_patch(_rect(c, r))
            if data.size <= 60:
                for c in range(data.shape[1]):
                    if np.isfinite(data[r, c]):
                        ax.text(c, r, f"{data[r, c]:.3g}", ha="center", va="center", fontsize=5.5, color="w")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        if st is not None:
            title = f"{title}\nρ/edge = {_fmt(st.get('spearman_mean'))}, τ = {_fmt(st.get('kendall_all_cells'))}"
        ax.set_title(title, fontsize=9)
    return save(fig, path)


def _rect(c: int, r: int) -> Any:
    from matplotlib.patches import Rectangle
    return Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)


def alpha_figure(space: Space, cell_type: str, epochs: Sequence[int], alphas: Sequence[Sequence[Sequence[float]]],
                 path: str | Path) -> Path:
    """Mixing weights of every op on every edge of one cell type, over the search epochs."""
    spec = space.cells[cell_type]
    a = np.asarray(alphas, dtype=float)  # epochs x edges x ops
    ncol = 3 if spec.num_edges <= 6 else 4
    nrow = math.ceil(spec.num_edges / ncol)
    fig = new_figure(3.2 * ncol, 2.3 * nrow + 0.6)
    x = np.asarray(epochs) + 1
    for e in range(spec.num_edges):
        ax = fig.add_subplot(nrow, ncol, e + 1)
        for k, op in enumerate(spec.ops[e]):
            ax.plot(x, a[:, e, k], label=short_op(op), marker="." if len(x) < 30 else None)
        src, dst = spec.edges[e]
        ax.set_title(f"edge {src}→{dst}", fontsize=9)
        ax.grid(alpha=0.3)
        if e % ncol == 0:
            ax.set_ylabel("mixing weight")
        if e >= spec.num_edges - ncol:
            ax.set_xlabel("epoch")
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{space.name} {cell_type}: mixing weights per epoch", fontsize=10)
    return save(fig, path)


def accuracy_figure(search: Sequence[Mapping[str, Any]], tunes: Mapping[str, Sequence[Mapping[str, Any]]],
                    path: str | Path) -> Path:
    """Supernet train / valid accuracy per search epoch; selection fine-tuning continues to the right."""
    fig = new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    ep = [r["epoch"] + 1 for r in search]
    ax.plot(ep, [r.get("train_acc") for r in search], label="train (w half, augmented)", marker=".")
    valid = [(r["epoch"] + 1, r["valid_acc"]) for r in search if r.get("valid_acc") is not None]
    if valid:
        ax.plot(*zip(*valid), label="valid (α half)", marker=".")
    last = max(ep, default=0)
    for name, rows in tunes.items():
        if rows:
            ax.plot([last + r["epoch"] + 1 for r in rows], [r.get("train_acc") for r in rows], linestyle="--",
                    label=f"{name} fine-tuning (train)")
    if tunes and any(tunes.values()):
        ax.axvline(last + 0.5, color="grey", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("supernet accuracy", fontsize=10)
    return save(fig, path)


def pt_decisions_figure(space: Space, decisions: Sequence[Mapping[str, Any]], path: str | Path,
                        criterion: str = "acc") -> Path:
    """For each PT op decision: validation accuracy (or loss, with ``criterion="loss"``) with each op
    removed, the kept op in red. Ops removed before the decision were not scored and are left out."""
    loss = criterion == "loss"
    ops = [d for d in decisions if d.get("kind") == "op"]
    ncol = min(len(ops), 3) or 1
    nrow = max(1, math.ceil(len(ops) / ncol))
    fig = new_figure(3.4 * ncol, 2.6 * nrow + 0.5)
    for i, d in enumerate(ops):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        spec = space.cells[d["cell_type"]]
        names = [n for n in spec.ops[d["edge"]] if n in d["candidates"]]
        raw = [d["candidates"][n]["loss" if loss else "acc"] for n in names]  # null: a NaN / inf loss
        acc = [math.nan if v is None else v * (1 if loss else 100) for v in raw]
        colors = ["tab:red" if n == d.get("chosen") else "tab:blue" for n in names]
        ax.bar(range(len(names)), acc, color=colors)
        shown = [v for v in acc if math.isfinite(v)] or [0.0]
        lo = min(shown)
        ax.set_ylim(max(0.0, lo - 0.15 * (max(shown) - lo + 1)), max(shown) + 0.5)
        ax.set_xticks(range(len(names)), [short_op(n) for n in names], rotation=45, ha="right", fontsize=7)
        src, dst = spec.edges[d["edge"]]
        ct = "" if len(space.cells) == 1 else f"{d['cell_type']} "
        ax.set_title(f"#{i + 1}: {ct}edge {src}→{dst} (tune ep {d.get('epoch', '?')})", fontsize=8)
        if i % ncol == 0:
            ax.set_ylabel("valid loss without op" if loss else "valid acc without op (%)", fontsize=7)
    fig.suptitle("DARTS-PT decisions: " + ("highest loss" if loss else "lowest accuracy")
                 + " after removal = op kept (red)", fontsize=9)
    return save(fig, path)
