"""dnas search: train a supernet, select by magnitude (and optionally other methods)."""
from __future__ import annotations

import argparse

from ..data import DATASETS
from ..io import to_json
from ..search import MODES, SearchConfig, run_search
from ..search.modes import make_config
from ..spaces import SPACES
from . import parse_options, say_finished

# The embedded default and other file-free datasets get a small supernet that trains in minutes on a CPU.
SMALL = {"channels": 8, "cells": {"nb201": 1, "darts": 3}, "epochs": 20}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="train a weight-sharing supernet and select an architecture",
                       description="Train a supernet (bilevel DARTS-family search) into a run directory.")
    p.add_argument("--space", default="nb201", help=f"search space: {', '.join(SPACES)} (default nb201)")
    p.add_argument("--dataset", default="digits", help=f"{', '.join(DATASETS)} (default digits, embedded)")
    p.add_argument("--data-dir", help="dataset folder (default $DNAS_DATA_DIR)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--epochs", type=int,
                   help="search epochs (default: NB201 100, DARTS spaces 50; spos 1000; digits/synthetic 20)")
    p.add_argument("--batch-size", type=int, help="default 64 (spos: NB201 256, DARTS spaces 128)")
    p.add_argument("--channels", type=int,
                   help="initial channels C (default 16; spos on the DARTS spaces 36; digits/synthetic 8)")
    p.add_argument("--cells", type=int,
                   help="NB201: cells per stage N (default 5); DARTS spaces: total cells, >= 3 (default 8; spos 20); "
                        "digits/synthetic: 1 / 3")
    p.add_argument("--subset", type=int, help="use N training images (class-balanced, seeded)")
    p.add_argument("--resolution", type=int,
                   help="resize images to R x R, a multiple of 4 (default: the data's own size)")
    p.add_argument("--mode", default="darts1", help=f"training mode: {', '.join(MODES)} (default darts1)")
    g = p.add_argument_group("optimiser and split (default: the mode's paper settings; see README)")
    for flag, typ, what in (("--lr", float, "w: initial SGD learning rate (0.025; spos on NB201 0.1)"),
                            ("--lr-min", float, "w: final cosine learning rate (0.001; spos 0, per mini-batch)"),
                            ("--momentum", float, "w: SGD momentum (0.9)"),
                            ("--weight-decay", float, "w: weight decay (3e-4; spos on NB201 5e-4)"),
                            ("--grad-clip", float, "w: gradient-norm clip, 0 = off (5)"),
                            ("--arch-lr", float, "α: Adam learning rate (3e-4)"),
                            ("--arch-weight-decay", float, "α: Adam weight decay (1e-3)"),
                            ("--train-portion", float,
                             "share of the training set for w, the rest for α (0.5; prime: 1 - 1/(1+schedfreq) "
                             "unless --option prime_split=false)"),
                            ("--eval-every", int, "accuracy on the α split every k epochs, 0 = never (1)")):
        g.add_argument(flag, type=typ, help=what)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="w: Nesterov momentum (off; spos on NB201: on)")
    p.add_argument("--activation", help="mixing-weight activation: softmax (default), sigmoid, crb")
    p.add_argument("--impl", help="supernet implementation: fast (default) or reference (the per-op loop)")
    p.add_argument("--node-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="DARTS spaces: BN on every node's sum (DARTS-PRIME's network; the prime mode's default)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of everything random in the search, -2**63 .. 2**63 - 1 (default 0; README: Seeds)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--select", default="",
                   help="comma-separated selection methods to run afterwards, with their default options "
                        "(others: dnas select RUN --method M --option ...)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="mode option (e.g. schedfreq=10); repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (a finished one is left as it is; with --select: selectors "
                        "that finished are not rerun)")
    p.add_argument("--force", action="store_true",
                   help="start over: an existing dnas run directory is deleted once the new run's first epoch has "
                        "finished (a failed or interrupted start keeps it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=_run)


def config_from_args(a: argparse.Namespace) -> SearchConfig:
    from ..spaces import get_space
    family = get_space(a.space).family
    small = a.dataset in ("digits", "synthetic")
    fields: dict = dict(space=a.space, dataset=a.dataset, data_dir=a.data_dir, out=a.out, seed=a.seed,
                        device=a.device)
    if small:
        fields.update(channels=SMALL["channels"], cells=SMALL["cells"][family], epochs=SMALL["epochs"])
    for name in ("epochs", "batch_size", "channels", "cells", "subset", "resolution", "activation", "impl",
                 "node_bn"):
        v = getattr(a, name)
        if v is not None:
            fields[name] = v
    for flag, name in (("lr", "w_lr"), ("lr_min", "w_lr_min"), ("momentum", "w_momentum"), ("weight_decay", "w_wd"),
                       ("nesterov", "w_nesterov"), ("grad_clip", "grad_clip"), ("arch_lr", "arch_lr"),
                       ("arch_weight_decay", "arch_wd"), ("train_portion", "train_portion"),
                       ("eval_every", "eval_every")):
        v = getattr(a, flag)
        if v is not None:
            fields[name] = v
    return make_config(a.mode, options=parse_options(a.option), **fields)


def _check_table(space: str) -> None:
    """A configured NB201 table is read now: a bad one must fail before the search, not after it."""
    import os

    from ..bench.nb201 import TABLE_ENV, open_benchmark
    from ..spaces import get_space
    if get_space(space).family == "nb201" and os.environ.get(TABLE_ENV):
        open_benchmark()


def _epoch_line(epochs: int):
    def say(r: dict) -> None:
        acc = f" valid_acc={r['valid_acc']:.4f}" if "valid_acc" in r else ""
        print(f"epoch {r['epoch'] + 1}/{epochs} train_acc={r['train_acc']:.4f}{acc} ({r['seconds']:.1f}s) "
              f"{r['genotype']}", flush=True)
    return say


def _run(a: argparse.Namespace) -> int:
    from ..rundir import run_finished
    from ..select.run import ground_truth_hook, parse_methods, run_selections
    cfg = config_from_args(a)
    # the search itself selects by magnitude (selections/magnitude.json), which a rerun would refuse to replace
    methods = [m for m in parse_methods(a.select) if m != "magnitude"]
    _check_table(cfg.space)
    finished = a.resume and run_finished(cfg.out)
    result = run_search(cfg, resume=a.resume, force=a.force, quiet=a.quiet, on_selection=ground_truth_hook(),
                        on_epoch=None if a.quiet else _epoch_line(cfg.epochs))
    if finished:
        say_finished(cfg.out, "the search")
    if methods:
        result = run_selections(cfg.out, methods, resume=a.resume, quiet=a.quiet)
    print(to_json({"run": cfg.out, "space": result["space"], "genotype": result["genotype"],
                      "selections": {m: s.get("genotype") for m, s in result.get("selections", {}).items()}}))
    return 0
