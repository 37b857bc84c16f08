"""``dnas query``: print benchmark ground truth and parameter/FLOP counts of one architecture as JSON."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("query", help="ground truth (NB201 table) and params/FLOPs of one architecture",
                       description="Print one JSON object: NB201 table row (test accuracies, iso class, rank, "
                                   "percentile) plus params_M / flops_M of the CIFAR-10 network; for DARTS-space "
                                   "genotypes the network's params_M, params_with_aux_M, flops_M and madds_M.")
    p.add_argument("--space", default="nb201", help="nb201, darts, s1..s5 (default nb201)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", "--genotype", dest="arch",
                       help="NB201 arch string or DARTS Genotype(...) text / JSON")
    which.add_argument("--index", type=int, help="NB201 arch index (0..15624)")
    p.add_argument("--table", help="NB201 table (.csv/.csv.gz) or official benchmark file; "
                                   "default $DNAS_NB201_TABLE")
    p.add_argument("--iso", action="store_true",
                   help="report the row of the isomorphism class representative (isomorphic archs agree)")
    p.add_argument("--channels", type=int, help="network width C (default: NB201 16, DARTS 36)")
    p.add_argument("--layers", type=int, help="NB201 cells per stage (5) or DARTS total cells (20)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier size for the counts (default 10)")
    p.add_argument("--resolution", type=int, default=32, help="input size for the FLOPs (default 32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.query import query_architecture
    from ..io import to_json

    out = query_architecture(args.space, args.arch, index=args.index, table=args.table, iso=args.iso,
                             channels=args.channels, layers=args.layers, num_classes=args.num_classes,
                             resolution=args.resolution)
    print(to_json(out, indent=2))
    return 0
