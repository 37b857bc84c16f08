"""Supernet analysis: ranking quality against a benchmark, op strength, search-dynamics figures.

Submodules import matplotlib only when a figure is drawn, so the package loads without it.
"""
from .metrics import (average_ranks, bottom_k_overlap, kendall_tau, percentile_of, spearman_rho, top_k_overlap,
                      top_k_size)
from .ops import analyze_ops, true_op_strength
from .ranking import RankingSettings, evaluate_genotype, preserved_bn, rank_run, recalibrate_bn, summarize
from .table import TruthTable, load_truth

__all__ = ["RankingSettings", "TruthTable", "analyze_ops", "average_ranks", "bottom_k_overlap", "evaluate_genotype",
           "kendall_tau", "load_truth", "percentile_of", "preserved_bn", "rank_run", "recalibrate_bn", "spearman_rho",
           "summarize", "top_k_overlap", "top_k_size", "true_op_strength"]
