"""Operation strength: do the selectors' per-(edge, op) scores agree with the benchmark?

The "true" strength of op o on edge e is the mean ground-truth accuracy of all the table's
architectures with o on e, minus the mean of those means over the edge's ops. For NAS-Bench-201 that
is every one of the 15,625 rows (each (edge, op) pair appears in 3,125 of them); for a sampled table
(e.g. the NAS-Bench-301 sample) it is the same estimate from the rows there are, NaN where an op never
appears on an edge.

Method scores come from ``RUN/selections/<method>.json`` ``scores``, which every selector writes with
higher = stronger (magnitude: the mixing weights; pt: 1 - accuracy with the op removed, so a bigger
accuracy drop is a stronger op; ostr: its loss-increase estimate). ``SCORE_SIGN`` flips a method whose
file says otherwise. Iteratively pruned methods (zeros) store NaN for the ops they pruned; for them the
score is the elimination order (pruned in round t -> t, survivors -> the number of rounds), and their
first round's full score table is compared too, as ``<method>_round0`` (the one-shot variant).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DnasError
from ..io import atomic_write_json
from ..rundir import read_config, read_selection
from ..spaces import Space, get_space
from . import metrics as M
from .table import TruthTable, load_truth

# Multiply a method's stored scores by this so that higher = stronger (all current selectors: +1).
SCORE_SIGN: dict[str, float] = {}
SUMMARY, FIGURE = "ops.json", "ops.png"


def true_op_strength(table: TruthTable) -> dict[str, np.ndarray]:
    """Per cell type an (edges x ops) array: mean accuracy with the op on the edge minus the edge's mean."""
    space = table.space
    out = {}
    masks = _masks(table)
    for ct, spec in space.cells.items():
        m = masks[ct]  # rows x edges x ops, 0/1
        count = m.sum(0)
        total = np.einsum("r,reo->eo", table.acc, m)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        edge_mean = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in mean])
        out[ct] = mean - edge_mean[:, None]
    return out


def _masks(table: TruthTable) -> dict[str, np.ndarray]:
    """0/1 (rows x edges x ops) per cell type; NB201 directly from op indices (15,625 masks in one step)."""
    space = table.space
    if space.family == "nb201":
        spec = space.cells["cell"]
        idx = np.array([[spec.op_index(e, op) for e, op in enumerate(g.ops)] for g in table.genotypes])
        return {"cell": np.eye(spec.num_ops)[idx]}
    masks = [space.genotype_mask(g) for g in table.genotypes]
    return {ct: np.stack([mk[ct].numpy() for mk in masks]).astype(np.float64) for ct in space.cells}


def load_method_scores(run_dir: Path, space: Space) -> dict[str, dict[str, Any]]:
    """method -> {"scores": {ct: edges x ops array, higher = stronger}, "genotype": str} for every selection file."""
    sel_dir = run_dir / "selections"
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(sel_dir.glob("*.json")) if sel_dir.is_dir() else []:
        d = read_selection(path)
        if "scores" not in d:
            continue
        method = d.get("method", path.stem)
        sign = SCORE_SIGN.get(method, 1.0)
        scores = {ct: sign * _table(d["scores"], ct, space, path) for ct in space.cells}
        rounds = [r for r in d.get("decisions", []) if r.get("kind") == "round" and "scores" in r]
        if rounds and any(np.isnan(s).any() for s in scores.values()):
            # Iterative pruning (zeros) reports only the survivors' scores; its ranking of all ops is the
            # elimination order, and its first round is the one-shot score table.
            out[method] = {"scores": elimination_scores(rounds, space, path), "genotype": d.get("genotype")}
            out[f"{method}_round0"] = {"scores": {ct: sign * _table(rounds[0]["scores"], ct, space, path)
                                                  for ct in space.cells}, "genotype": None}
        else:
            out[method] = {"scores": scores, "genotype": d.get("genotype")}
    return out


def _table(scores: dict[str, Any], ct: str, space: Space, path: Path) -> np.ndarray:
    spec = space.cells[ct]
    if not isinstance(scores, dict):
        raise DnasError(f"{path}: scores must be a JSON object (cell type -> edges x ops), got {type(scores).__name__}")
    s = np.array(scores.get(ct, []), dtype=np.float64)  # null (how the files write NaN) is NaN again
    if s.shape != (spec.num_edges, spec.num_ops):
        raise DnasError(f"{path}: scores for {ct} have shape {s.shape}, expected {(spec.num_edges, spec.num_ops)}")
    return s


def elimination_scores(rounds: list[dict[str, Any]], space: Space, path: Path) -> dict[str, np.ndarray]:
    """Score = the round in which an op was pruned (survivors: the number of rounds), ties within a round
    broken by that round's score, as a fraction below 1 so rounds never overlap."""
    out = {}
    for ct, spec in space.cells.items():
        removed_in = np.full((spec.num_edges, spec.num_ops), len(rounds), dtype=np.int64)
        for t, r in enumerate(rounds):
            for e, name in r.get("removed", {}).get(ct, []):
                removed_in[e, spec.op_index(e, name)] = t
        last = {t: _table(r["scores"], ct, space, path) for t, r in enumerate(rounds)}
        score = removed_in.astype(np.float64)
        for e in range(spec.num_edges):
            for t in set(removed_in[e].tolist()):
                ops = np.flatnonzero(removed_in[e] == t)
                within = last[min(t, len(rounds) - 1)][e, ops]
                order = np.argsort(np.argsort(np.nan_to_num(within, nan=-np.inf), kind="mergesort"))
                score[e, ops] += order / (len(ops) + 1)
        out[ct] = score
    return out


def _finite_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def compare(scores: dict[str, np.ndarray], truth: dict[str, np.ndarray], space: Space) -> dict[str, Any]:
    """Spearman ρ per edge (mean over edges), Kendall τ over all (edge, op) cells, best-op agreement."""
    per_edge, agree = {}, []
    xs, ys = [], []
    for ct, spec in space.cells.items():
        rhos = []
        for e in range(spec.num_edges):
            a, b = _finite_pairs(scores[ct][e], truth[ct][e])
            rho = M.spearman_rho(a, b) if a.size >= 2 else math.nan
            rhos.append(rho)
            if a.size >= 2:
                agree.append(float(np.argmax(a) == np.argmax(b)))
        per_edge[ct] = rhos
        a, b = _finite_pairs(scores[ct].ravel(), truth[ct].ravel())
        xs.append(a)
        ys.append(b)
    flat = [r for rs in per_edge.values() for r in rs if math.isfinite(r)]
    x, y = np.concatenate(xs), np.concatenate(ys)
    return {"spearman_per_edge": per_edge,
            "spearman_mean": float(np.mean(flat)) if flat else math.nan,
            "kendall_all_cells": M.kendall_tau(x, y) if x.size >= 2 else math.nan,
            "cells": int(x.size),
            "best_op_agreement": float(np.mean(agree)) if agree else math.nan}


def analyze_ops(run_dir: str | Path, *, table_path: str | None = None, arch_column: str | None = None,
                acc_column: str | None = None, plot: bool = True) -> dict[str, Any]:
    """Compare every selection's scores with the table's op strengths; writes analysis/ops.json (+ ops.png)."""
    from ..search import SearchConfig
    run_dir = Path(run_dir)
    cfg = read_config(run_dir, SearchConfig)
    space = get_space(cfg["space"])
    methods = load_method_scores(run_dir, space)
    if not methods:
        raise DnasError(f"{run_dir}: no selections with scores (run `dnas select` first)")
    table = load_truth(table_path, space, arch_column, acc_column, dataset=cfg.get("dataset"))
    truth = true_op_strength(table)
    result: dict[str, Any] = {"run": str(run_dir), "space": space.name, "table": table.describe(),
                              "truth": {ct: t.tolist() for ct, t in truth.items()},
                              "ops": {ct: list(map(list, spec.ops)) for ct, spec in space.cells.items()},
                              "methods": {}}
    for name, m in methods.items():
        entry = compare(m["scores"], truth, space)
        genotype = m.get("genotype")
        if genotype:
            acc = table.lookup(space.parse(genotype))
            entry.update(genotype=genotype, genotype_truth=acc)
        result["methods"][name] = entry
    out = run_dir / "analysis"
    if plot:
        from .figures import ops_heatmap
        ops_heatmap(space, truth, {k: v["scores"] for k, v in methods.items()}, result["methods"], out / FIGURE)
        result["figure"] = FIGURE
    atomic_write_json(out / SUMMARY, result)
    return result
