"""``dnas train``: train a genotype from scratch with its space's published protocol (resumable, DDP-ready)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an architecture from scratch (NB201 / DARTS protocols)",
                       description="Train a genotype from scratch into --out (config.json, metrics.jsonl, "
                                   "checkpoint.pt, result.json with the final test accuracy). Defaults follow "
                                   "the space's protocol; every option overrides it. Runs under "
                                   "`torchrun --nproc_per_node K -m dnas -- train ...` with DDP (--batch-size is the "
                                   "global batch; the `--` keeps torchrun from reading --run as its own --run-path).")
    p.add_argument("--space", help="nb201, darts, s1..s5 (required with --arch; taken from --run when given)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", "--genotype", dest="arch", help="NB201 arch string or DARTS Genotype(...)")
    which.add_argument("--run", help="a search run directory: use its result.json genotype")
    p.add_argument("--selection", help="with --run: the genotype of result.json's selections[METHOD]")
    p.add_argument("--dataset", help="cifar10 (default, or the run's), cifar100, svhn, digits, synthetic")
    p.add_argument("--out", required=True, help="run directory to create (or --resume)")
    g = p.add_argument_group("protocol overrides (default: the preset of space and dataset)")
    for flag, typ, what in (("--epochs", int, "epochs"), ("--batch-size", int, "global batch size"),
                            ("--lr", float, "initial learning rate"), ("--lr-min", float, "final cosine lr"),
                            ("--momentum", float, "SGD momentum"), ("--weight-decay", float, "weight decay"),
                            ("--grad-clip", float, "gradient-norm clip, 0 = off"),
                            ("--channels", int, "initial channels C"),
                            ("--layers", int, "NB201 cells per stage / DARTS total cells"),
                            ("--auxiliary-weight", float, "auxiliary head loss weight, 0 = no head"),
                            ("--drop-path", float, "final drop-path probability"),
                            ("--cutout", int, "cutout square side, 0 = off"),
                            ("--subset", int, "class-balanced train subset size"),
                            ("--test-subset", int, "class-balanced test subset size"),
                            ("--resolution", int, "resize images to R x R"),
                            ("--eval-every", int, "test every k epochs (always after the last)")):
        g.add_argument(flag, type=typ, help=what)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    p.add_argument("--seed", type=int, default=0,
                   help="the training's own seed, not the search's, -2**63 .. 2**63 - 1 (default 0)")
    p.add_argument("--data-dir", help="dataset folder (default $DNAS_DATA_DIR)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto; torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (a finished one is left as it is)")
    p.add_argument("--force", action="store_true",
                   help="start over: an existing --out is deleted once the new run's first epoch has finished (a "
                        "failed or interrupted start keeps it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DnasError
    from ..evaluate.distributed import init_distributed, shutdown_distributed
    from ..evaluate.train import genotype_from_run, make_config, train_network
    from ..io import to_json
    from ..rundir import run_finished
    from . import say_finished

    if args.selection and not args.run:
        raise DnasError("--selection needs --run")
    if args.run:
        found = genotype_from_run(args.run, args.selection)
        if args.space and args.space != found["space"]:
            raise DnasError(f"--space {args.space} disagrees with the run's space {found['space']}")
        space, arch, source = found["space"], found["genotype"], found["source"]
        dataset = args.dataset or found["dataset"] or "cifar10"
        if args.data_dir is None and dataset == found["dataset"]:  # the run's data, where the run read it
            args.data_dir = found["data_dir"]
    else:
        if not args.space:
            raise DnasError("--space is required with --arch/--genotype")
        space, arch, source, dataset = args.space, args.arch, None, args.dataset or "cifar10"
    names = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "channels", "layers",
             "auxiliary_weight", "drop_path", "cutout", "subset", "test_subset", "resolution", "eval_every",
             "nesterov")
    config = make_config(space, arch, dataset, seed=args.seed, data_dir=args.data_dir, device=args.device,
                         quiet=args.quiet, source=source, **{k: getattr(args, k) for k in names})
    finished = args.resume and run_finished(args.out)
    ctx = init_distributed(args.device)
    try:
        result = train_network(config, args.out, resume=args.resume, force=args.force, ctx=ctx)
    finally:
        shutdown_distributed(ctx)
    if ctx.is_main:
        if finished:
            say_finished(args.out, "the training")
        print(to_json({k: result.get(k) for k in ("space", "genotype_str", "dataset", "epochs", "test_acc",
                                                     "params_M", "flops_M", "seconds")}))
    return 0
