"""dnas analyze: supernet ranking quality, op strength vs ground truth, search-dynamics plots, cell drawings."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyse a supernet: ranking vs ground truth, op strength, plots",
                       description="Analyse a search run directory (results go to RUN/analysis/).")
    sp = p.add_subparsers(dest="analysis", required=True, parser_class=type(p))

    r = sp.add_parser("ranking", help="rank sampled architectures with inherited weights vs the benchmark",
                      description="Evaluate K architectures with the supernet's weights (BN recalibrated) and "
                                  "compare with ground truth: Kendall tau, Spearman rho, top-k, percentile.")
    r.add_argument("run", help="search run directory")
    r.add_argument("--samples", type=int, default=100,
                   help="architectures to sample (default 100; with --archs: the first K of the list)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed, 0 .. 2**63 - 1 (default 0)")
    r.add_argument("--archs", help="file with one architecture per line instead of sampling")
    r.add_argument("--bn-recalibrate", type=int, default=10, metavar="B",
                   help="training batches to re-estimate BN statistics per architecture (default 10; 0: keep the "
                        "supernet's)")
    r.add_argument("--bn-batch-size", type=int, help="batch size for recalibration (default: the search's)")
    r.add_argument("--valid-batches", type=int, help="evaluate on only this many validation batches")
    r.add_argument("--device", help="cpu, cuda or auto (default: the run's)")
    r.add_argument("--force", action="store_true",
                   help="discard earlier ranking records of this run (once the first new one is computed)")
    _table_args(r)
    _common(r)
    r.set_defaults(func=_ranking)

    o = sp.add_parser("ops", help="per-edge op scores of each selection method vs the benchmark's op strength")
    o.add_argument("run", help="search run directory with selections/*.json")
    _table_args(o)
    _common(o)
    o.set_defaults(func=_ops)

    pl = sp.add_parser("plots", help="alpha per edge, supernet accuracy, PT decisions, selected cells (PNG)")
    pl.add_argument("run", help="search run directory")
    pl.add_argument("--out", help="output folder (default RUN/analysis)")
    pl.add_argument("--engine", default="auto", choices=("auto", "graphviz", "matplotlib"),
                    help="cell drawings: graphviz when installed, else matplotlib (default auto)")
    pl.set_defaults(func=_plots)

    g = sp.add_parser("genotype", help="draw one genotype as a PNG")
    g.add_argument("genotype", help="NB201 arch string or DARTS Genotype(...) text")
    g.add_argument("--space", default="nb201", help="the genotype's search space (default nb201)")
    g.add_argument("--out", required=True, help="PNG path")
    g.add_argument("--engine", default="auto", choices=("auto", "graphviz", "matplotlib"),
                   help="graphviz when installed, else matplotlib (default auto)")
    g.set_defaults(func=_genotype)

    t = sp.add_parser("tensorboard", help="export metrics and fine-tuning logs to TensorBoard event files")
    t.add_argument("run", help="run directory")
    t.set_defaults(func=_tensorboard)


def _table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="ground-truth CSV (default $DNAS_NB201_TABLE); NB201 table or any CSV")
    p.add_argument("--arch-column", help="architecture column (default arch_str / genotype)")
    p.add_argument("--acc-column", help="accuracy column (default: the run's data set's <dataset>_test / _valid; "
                                          "cifar10_test / cifar10_valid for CIFAR-10 and toy data)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-plot", action="store_true", help="write the JSON only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _plot_wanted(a: argparse.Namespace) -> bool:
    from ..analysis._mpl import have_matplotlib
    if a.no_plot:
        return False
    if not have_matplotlib():
        sys.stderr.write("dnas: matplotlib is not installed; writing JSON only (pip install 'dnas[plots]')\n")
        return False
    return True


def _print(obj: Any) -> None:
    from ..io import to_json
    print(to_json(obj, indent=1))


def _ranking(a: argparse.Namespace) -> int:
    from ..analysis import RankingSettings, rank_run
    s = RankingSettings(samples=a.samples, seed=a.seed, table=a.table, arch_column=a.arch_column,
                        acc_column=a.acc_column, archs_file=a.archs, bn_batches=a.bn_recalibrate,
                        bn_batch_size=a.bn_batch_size, valid_batches=a.valid_batches)
    res = rank_run(a.run, s, device=a.device, force=a.force, quiet=a.quiet, plot=_plot_wanted(a))
    _print({k: res[k] for k in ("evaluated", "population", "kendall_tau", "spearman_rho", "top_k", "bottom_k",
                                "supernet_top1", "seconds_per_arch") if k in res})
    return 0


def _ops(a: argparse.Namespace) -> int:
    from ..analysis import analyze_ops
    res = analyze_ops(a.run, table_path=a.table, arch_column=a.arch_column, acc_column=a.acc_column,
                      plot=_plot_wanted(a))
    _print({m: {k: v[k] for k in ("spearman_mean", "kendall_all_cells", "best_op_agreement", "genotype_truth")
                if k in v} for m, v in res["methods"].items()})
    return 0


def _plots(a: argparse.Namespace) -> int:
    from ..analysis.plots import plot_run
    for p in plot_run(a.run, a.out, engine=a.engine):
        print(p)
    return 0


def _genotype(a: argparse.Namespace) -> int:
    from ..analysis.cells import draw_genotype
    from ..spaces import get_space
    space = get_space(a.space)
    print(draw_genotype(space, space.parse(a.genotype), a.out, engine=a.engine))
    return 0


def _tensorboard(a: argparse.Namespace) -> int:
    from ..tensorboard import export_run
    from ..errors import DnasError
    target = export_run(a.run)
    if target is None:
        raise DnasError("tensorboard is not installed: pip install 'dnas[tensorboard]'")
    print(target)
    return 0
