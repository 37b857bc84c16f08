"""Training a genotype from scratch: the NB201 and DARTS protocols, resumable, single process or DDP.

Protocols (``preset``; every field can be overridden):

* NB201: C=16, N=5, 200 epochs, batch 256, SGD nesterov momentum 0.9, lr 0.1 cosine to 0, wd 5e-4.
* DARTS spaces: 20 cells, C=36, 600 epochs, batch 96, SGD momentum 0.9, lr 0.025 cosine to 0, wd 3e-4,
  grad-clip 5, auxiliary head weight 0.4, cutout 16, drop-path 0.2 (raised linearly from 0 over the epochs,
  as in DARTS). RobustDARTS S1-S4 on CIFAR-100 / SVHN: 8 cells, C=16 (darts-pt's ``eval-c100/svhn.sh``).
* The presets use cutout on CIFAR-type data only (a 16-pixel hole would wipe out the 8x8 built-in sets),
  and DARTS's auxiliary head only at the input sizes it is built for (32, 36, 40 px; asking for it at
  others is refused).

``batch_size`` is the global batch: under ``torchrun`` with K processes each rank takes batch/K samples, so
the optimisation is the same as one process with the whole batch (BN statistics are per rank, as usual in
DDP). The learning rate is set per epoch from the epoch number; the data order, augmentation and cutout of
an epoch depend only on (seed, epoch), and checkpoints carry model, optimizer, epoch and every rank's RNG
state, so a resumed run continues exactly.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..bench import lookup_nb201
from ..checks import all_finite, check_seed, check_sgd
from ..data import BatchLoader, ImageDataset, load_dataset
from ..data.core import derive_seed
from ..data.load import native_resolution
from ..errors import DnasError, memory_limits
from ..rundir import (CHECKPOINT, CONFIG, METRICS, RESULT, BeforeFirstWrite, does_not_fit, environment, fitting,
                      holds_files, load_checkpoint, log_metrics, prepare_run_dir, read_config, read_metrics, read_result,
                      rng_state, run_lock, save_checkpoint, seed_everything, set_rng_state, truncate_metrics,
                      update_result)
from ..schema import check_fields
from ..spaces import get_space
from ..supernet import check_bn_batches, check_resolution
from ..tensorboard import tb_log
from .counts import count_flops, count_params
from .darts_net import auxiliary_fits, check_darts_size
from .distributed import DistContext, init_distributed
from .networks import DEFAULT_SIZE, build_network

TRAIN_STREAM, MODEL_STREAM = 0x7A1, 0xD809
CIFAR_LIKE = ("cifar10", "cifar100", "svhn")


@dataclass
class TrainConfig:
    """Everything that shapes a training run (saved as config.json; resume checks it)."""

    space: str
    genotype: str  # text form: NB201 arch string or DARTS Genotype(...)
    dataset: str = "cifar10"
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.1
    lr_min: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 0.0  # 0 = off
    channels: int = 16
    layers: int = 5  # NB201: cells per stage; DARTS spaces: total cells
    auxiliary_weight: float = 0.0  # 0 = no auxiliary head
    drop_path: float = 0.0
    cutout: int = 0  # side of the cutout square; 0 = off
    seed: int = 0
    subset: int | None = None  # class-balanced train subset
    test_subset: int | None = None
    resolution: int | None = None
    data_dir: str | None = None
    eval_every: int = 1  # test every k epochs (and always after the last)
    device: str = "auto"
    quiet: bool = False
    source: str | None = None  # where the genotype came from (RUN[:METHOD]), informational


def preset(space: str, dataset: str, resolution: int | None = None) -> dict[str, Any]:
    """The published training protocol of ``space`` on ``dataset`` (see the module docstring); at an
    input size DARTS's auxiliary head cannot take (anything but ~32 px) the preset has no auxiliary head."""
    family = get_space(space).family
    cifar = dataset in CIFAR_LIKE
    if family == "nb201":
        c, n = DEFAULT_SIZE["nb201"]
        return dict(epochs=200, batch_size=256, lr=0.1, lr_min=0.0, momentum=0.9, nesterov=True,
                    weight_decay=5e-4, grad_clip=0.0, channels=c, layers=n, auxiliary_weight=0.0, drop_path=0.0,
                    cutout=0)
    c, n = DEFAULT_SIZE["darts"]
    if space in ("s1", "s2", "s3", "s4") and dataset in ("cifar100", "svhn"):
        c, n = 16, 8
    return dict(epochs=600, batch_size=96, lr=0.025, lr_min=0.0, momentum=0.9, nesterov=False, weight_decay=3e-4,
                grad_clip=5.0, channels=c, layers=n,
                auxiliary_weight=0.4 if auxiliary_fits(resolution or native_resolution(dataset)) else 0.0,
                drop_path=0.2, cutout=16 if cifar else 0)


def make_config(space: str, genotype: str, dataset: str = "cifar10", **overrides: Any) -> TrainConfig:
    """The preset of (space, dataset) with ``overrides`` (None values are ignored) on top."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise DnasError(f"unknown training settings: {', '.join(unknown)}")
    sp = get_space(space)
    text = str(sp.parse(genotype)) if isinstance(genotype, str) else str(sp.validate(genotype))
    values = {**preset(space, dataset, overrides.get("resolution")),
              **{k: v for k, v in overrides.items() if v is not None}}
    cfg = TrainConfig(space=sp.name, genotype=text, dataset=dataset, **values)
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    checks = [(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
              (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
              (0 <= cfg.drop_path < 1, f"--drop-path must be in [0, 1), got {cfg.drop_path}"),
              (cfg.cutout >= 0, f"--cutout must be >= 0, got {cfg.cutout}"),
              (cfg.auxiliary_weight >= 0, f"--auxiliary-weight must be >= 0, got {cfg.auxiliary_weight}"),
              (cfg.eval_every >= 1, f"--eval-every must be >= 1, got {cfg.eval_every}")]
    for ok, msg in checks:
        if not ok:
            raise DnasError(msg)
    check_sgd(lr=cfg.lr, lr_min=cfg.lr_min, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
              grad_clip=cfg.grad_clip)
    check_seed("--seed", cfg.seed)
    if cfg.channels < 1 or cfg.layers < 1:
        raise DnasError(f"--channels and --layers must be >= 1, got {cfg.channels} and {cfg.layers}")
    darts = get_space(cfg.space).family != "nb201"
    if darts:
        check_darts_size(cfg.channels, cfg.layers)
    elif cfg.auxiliary_weight > 0:  # build_network refuses it too, but only after --force has cleared --out
        raise DnasError(f"--auxiliary-weight {cfg.auxiliary_weight}: NB201 networks have no auxiliary head; "
                        f"pass --auxiliary-weight 0")
    check_resolution(cfg.resolution)
    side = cfg.resolution or native_resolution(cfg.dataset)
    if darts and cfg.auxiliary_weight > 0 and not auxiliary_fits(side):
        raise DnasError(f"--auxiliary-weight {cfg.auxiliary_weight}: DARTS's auxiliary head needs 32, 36 or 40 px "
                        f"inputs, got {side} px; pass --auxiliary-weight 0")


def genotype_from_run(run: str | Path, selection: str | None = None) -> dict[str, Any]:
    """Space, genotype text and dataset of a search run: ``RUN/result.json`` (``genotype``, or
    ``selections[METHOD]["genotype"]``) and ``RUN/config.json`` (``dataset``)."""
    from ..search import SearchConfig
    run = Path(run)
    if not (run / RESULT).exists():
        if (run / CONFIG).exists():  # a search writes result.json when it ends
            raise DnasError(f"{run}: its search has not finished; complete it with `dnas search ... --resume` first")
        raise DnasError(f"{run / RESULT}: file not found")
    result = read_result(run)
    config = read_config(run, SearchConfig) if (run / CONFIG).exists() else {}
    space_name = result.get("space") or config.get("space")
    if not space_name:
        raise DnasError(f"{run}: result.json names no space")
    space = get_space(space_name)
    selections = result.get("selections") or {}
    if selection is not None:
        if selection not in selections:
            known = ", ".join(sorted(selections)) or "none"
            raise DnasError(f"{run}: no selection {selection!r} (available: {known})")
        entry = selections[selection]
        obj = entry.get("genotype") if isinstance(entry, dict) else None
    else:
        obj = result.get("genotype")
        if obj is None:
            known = ", ".join(sorted(selections)) or "none"
            raise DnasError(f"{run}: result.json has no genotype; pick one with --selection (available: {known})")
    if obj is None:
        raise DnasError(f"{run}: selection {selection!r} has no genotype")
    try:
        genotype = space.from_json(obj)
    except DnasError as e:
        raise DnasError(f"{run / RESULT}: {e}") from None
    return {"space": space.name, "genotype": str(genotype), "dataset": config.get("dataset"),
            "data_dir": config.get("data_dir"), "source": f"{run}" + (f":{selection}" if selection else "")}


# -- one epoch ----------------------------------------------------------------------------------------------

def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Cosine from ``lr`` (epoch 0) towards ``lr_min``, one value per epoch."""
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def train_one_epoch(model: nn.Module, batches: Any, optimizer: torch.optim.Optimizer, ctx: DistContext, *,
                    aux_weight: float = 0.0, grad_clip: float = 0.0,
                    progress: tqdm | None = None) -> dict[str, float]:
    """One pass over ``batches``; returns the main head's mean loss and accuracy over all ranks."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    seen = 0
    for x, y in batches:
        out = model(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = F.cross_entropy(logits, y)
        total = loss if aux is None or aux_weight == 0 else loss + aux_weight * F.cross_entropy(aux, y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        # Accumulated on the device: no host sync per step.
        loss_sum += loss.detach().double() * y.numel()
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.numel()
        if progress is not None:
            progress.update(1)
    s_loss, s_correct, s_seen = ctx.sum([float(loss_sum), float(correct), float(seen)])
    return {"loss": s_loss / max(s_seen, 1), "acc": 100.0 * s_correct / max(s_seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader | None, ctx: DistContext) -> dict[str, float]:
    """Mean loss and top-1 accuracy (%) over the whole split; each rank scores its own share (``None``: this
    rank has none, it adds zeros to the sums)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader.epoch(0) if loader is not None else ():
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += y.numel()
    s_loss, s_correct, s_seen = ctx.sum([loss_sum, float(correct), float(seen)])
    return {"loss": s_loss / max(s_seen, 1), "acc": 100.0 * s_correct / max(s_seen, 1)}


def _check_finite(model: nn.Module, record: dict[str, Any], epoch: int, config: "TrainConfig") -> None:
    """Stop before a diverged epoch is saved: NaN weights still give an "accuracy" (argmax of NaN logits),
    which result.json would report as the architecture's test accuracy. Losses are summed over the ranks and
    DDP keeps the weights equal, so every rank stops at the same epoch."""
    bad = [k for k in ("train_loss", "test_loss") if k in record and not math.isfinite(record[k])]
    if not all_finite(model.parameters()):
        bad.append("weights")
    if bad:
        raise DnasError(f"training diverged in epoch {epoch + 1} (non-finite {', '.join(bad)}; lr {record['lr']:g}, "
                        f"grad clip {config.grad_clip:g}); nothing of this epoch was saved: lower --lr and start again")


# -- the run ------------------------------------------------------------------------------------------------

def _on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; its result (or its DnasError) reaches every rank."""
    result: Any = None
    error = None
    if ctx.is_main:
        try:
            result = fn()
        except DnasError as e:
            error = str(e)
    if ctx.distributed:
        import torch.distributed as dist
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise DnasError(error)
    return result


def _ground_truth(family: str, genotype: Any) -> dict[str, Any] | None:
    """The NB201 table row when a table is configured; a table problem must not stop a training run."""
    if family != "nb201":
        return None
    try:
        return lookup_nb201(genotype)
    except DnasError as e:
        return {"error": str(e)}


def _may_leave_parameters_unused(family: str, genotype: Any) -> bool:
    """Whether some parameters get no gradient, so DDP must look for unused parameters (asking when none are
    costs a graph traversal per step and a warning from every rank). NB201: see ``_nb201_unused``. DARTS
    spaces (their genotypes hold no ``none``): nodes left out of ``concat``, and S4's ``noise`` op, whose
    output does not depend on its input (a cell input read only by noise edges)."""
    if family == "nb201":
        return _nb201_unused(genotype)
    if any(op == "noise" for ct in ("normal", "reduce") for op, _ in getattr(genotype, ct)):
        return True
    return any(set(range(2, 6)) - set(getattr(genotype, f"{ct}_concat")) for ct in ("normal", "reduce"))


def _nb201_unused(genotype: Any) -> bool:
    """NB201: an op with parameters on an edge into a node with no path of non-``none`` edges to the cell's
    output (node 3) gets no gradient; a cell with no such path from its input outputs the same for every
    input, so the stem and the cells before the last get none."""
    from ..spaces import NB201_EDGES
    from ..spaces.ops import build_nb201_op
    edges = [(src, dst, op) for (src, dst), op in zip(NB201_EDGES, genotype.ops) if op != "none"]
    feeds = {3}  # the nodes that reach the output; an edge only goes to a higher node
    for node in (2, 1, 0):
        if any(src == node and dst in feeds for src, dst, _ in edges):
            feeds.add(node)
    dead = {op for _, dst, op in edges if dst not in feeds}  # ops whose output never reaches the cell's output
    return 0 not in feeds or any(list(build_nb201_op(op, 1, affine=True).parameters()) for op in dead)


def _data(cfg: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    train = load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir, resolution=cfg.resolution,
                         subset=cfg.subset, seed=cfg.seed)
    test = load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir, resolution=cfg.resolution,
                        subset=cfg.test_subset, seed=cfg.seed)
    return train, test


def train_network(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, force: bool = False,
                  callback: Callable[[dict[str, Any]], None] | None = None,
                  ctx: DistContext | None = None) -> dict[str, Any]:
    """Train ``config.genotype`` from scratch into the run directory ``out_dir``; return result.json's content.

    Writes config.json, metrics.jsonl (one line per epoch), checkpoint.pt (every epoch) and result.json
    (final test accuracy, params_M, flops_M, genotype). ``resume`` continues a stopped run exactly (a finished
    one: nothing changes, its result.json is returned); ``force`` starts over. ``callback(record)`` is called
    on every rank after each epoch's checkpoint. Under ``torchrun`` (``WORLD_SIZE`` > 1) the model runs in
    DistributedDataParallel and only rank 0 writes. Training that diverges (NaN/inf loss or weights) raises
    DnasError before that epoch is saved.
    """
    check_config(config)
    ctx = ctx or init_distributed(config.device)
    get_space(config.space).parse(config.genotype)  # a bad genotype fails before any work
    if config.batch_size % ctx.world_size:
        raise DnasError(f"--batch-size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    run = Path(out_dir)
    cfg_dict = asdict(config)
    _on_main(ctx, lambda: prepare_run_dir(run, resume=resume, force=force, config=cfg_dict, check_only=True,
                                          settings=TrainConfig))
    if resume:
        done = _on_main(ctx, lambda: read_result(run))
        if done.get("finished") and done.get("epochs") == config.epochs:
            return done  # nothing left to do
    train_set, test_set = _data(config)  # before the directory is touched: a failed start keeps the old run
    # One training per --out (rank 0 writes): a second would interleave metrics.jsonl and checkpoints.
    # Rank 0 takes the lock; a refusal reaches every rank as the same DnasError (none is left in a collective).
    with contextlib.ExitStack() as held:
        _on_main(ctx, lambda: held.enter_context(run_lock(run)))
        with memory_limits("training the network", _sizes(config, train_set, ctx), TRAIN_SIZES):
            return _train(config, run, ctx, train_set, test_set, resume=resume, force=force, callback=callback)


TRAIN_SIZES = "--channels, --layers, --batch-size or --resolution"  # the flags that set a training's memory use
# checkpoint.pt of a training, besides its rng: checked on --resume before anything is loaded or written
TRAIN_STATE: dict[str, Any] = {"model": dict, "optimizer": dict, "epoch": int, "elapsed": float,
                               "rank_rng": list[dict] | None}


def _sizes(config: TrainConfig, train_set: ImageDataset, ctx: DistContext) -> dict[str, Any]:
    """What the network's memory use grows with, as out-of-memory errors name it."""
    return {"space": config.space, "channels": config.channels, "layers": config.layers, "batch": config.batch_size,
            "resolution": train_set.resolution, "device": str(ctx.device)}


def _train(config: TrainConfig, run: Path, ctx: DistContext, train_set: ImageDataset, test_set: ImageDataset, *,
           resume: bool, force: bool, callback: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """``train_network`` once the data is loaded and the run directory is locked."""
    space = get_space(config.space)
    genotype = space.parse(config.genotype)
    per_rank = -(-len(train_set) // ctx.world_size)  # as BatchLoader pads the epoch over the ranks
    check_bn_batches(train_set.resolution, max(config.batch_size // ctx.world_size, 1), {"training": per_rank})
    seed_everything(config.seed)
    # Built, moved to the device and run once (the FLOP count) before the directory is prepared: a network that
    # cannot be made (memory, sizes) keeps the old run that --force would otherwise have cleared.
    with memory_limits("building the network", _sizes(config, train_set, ctx), TRAIN_SIZES):
        model = build_network(space, genotype, num_classes=train_set.num_classes, in_channels=train_set.channels,
                              channels=config.channels, layers=config.layers, auxiliary=config.auxiliary_weight > 0)
        model.to(ctx.device)
        counts = {"params_M": round(count_params(model) / 1e6, 6),
                  "flops_M": round(count_flops(model, (1, train_set.channels, train_set.resolution,
                                                       train_set.resolution)) / 1e6, 6)}
    cfg_dict = asdict(config)
    prepare = partial(prepare_run_dir, run, resume=resume, force=force, config=cfg_dict, settings=TrainConfig)
    # --force over an old run: checked again here, but cleared only by begin(), once the first epoch has run
    # (an out-of-memory error or Ctrl-C in it keeps the old run). Every rank calls begin(): rank 0 prepares.
    replacing = _on_main(ctx, lambda: force and holds_files(run))
    _on_main(ctx, lambda: prepare(check_only=replacing))
    begin = BeforeFirstWrite(lambda: _on_main(ctx, prepare), pending=replacing, kept=f"{run} still holds its old run")
    benchmark = _on_main(ctx, lambda: _ground_truth(space.family, genotype))
    # Drop-path masks and other training noise: a stream of their own per rank.
    torch.manual_seed(derive_seed(config.seed, MODEL_STREAM, ctx.rank))
    net: nn.Module = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # The network runs channels-last with NCHW parameters: a 1x1 conv's weight gradient comes back with
        # other strides on its size-1 dims than DDP's bucket view (the same memory order), and DDP would warn
        # once per process that this "may impair performance". It does not: the copy into the bucket is dense.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides",
                                category=UserWarning)
        net = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                  find_unused_parameters=_may_leave_parameters_unused(space.family, genotype))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)

    start, elapsed = 0, 0.0
    record: dict[str, Any] = {}
    if resume and (run / CHECKPOINT).exists():
        path = run / CHECKPOINT
        state = load_checkpoint(run)
        if "model" not in state or "optimizer" not in state:
            raise DnasError(f"{path}: not a training checkpoint")
        check_fields(state, TRAIN_STATE, path, required=("epoch",))
        if not 0 <= state["epoch"] <= config.epochs:
            raise DnasError(f"{path}: epoch must be between 0 and {config.epochs}, got {state['epoch']}")
        with fitting(path, does_not_fit(f"the network of {run / CONFIG}")):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        start, elapsed = state["epoch"], float(state.get("elapsed", 0.0))
        ranks = state.get("rank_rng")
        if ranks and len(ranks) == ctx.world_size:
            set_rng_state(ranks[ctx.rank], path)
        else:  # another process count: rank 0's state, then each rank its own drop-path / noise stream
            set_rng_state(state["rng"], path)
            torch.manual_seed(derive_seed(config.seed, MODEL_STREAM, ctx.rank, start))
        if ctx.is_main:
            truncate_metrics(run, start)
            # the last finished epoch's line: the result of a run stopped after its last checkpoint reports it
            rows = read_metrics(run / METRICS) if (run / METRICS).exists() else []
            record = rows[-1] if rows and rows[-1].get("epoch") == start - 1 else {}
    elif resume and ctx.is_main:  # stopped before the first checkpoint: its metric lines are redone
        truncate_metrics(run, 0)

    train_loader = BatchLoader(train_set, None, config.batch_size // ctx.world_size, augment=True, shuffle=True,
                               seed=config.seed, stream=TRAIN_STREAM, rank=ctx.rank, world_size=ctx.world_size,
                               device=ctx.device, cutout=config.cutout)
    # Each test image scored once: rank r takes every K-th from r; with fewer images than processes some take none.
    test_idx = torch.arange(len(test_set))[ctx.rank::ctx.world_size]
    test_loader = BatchLoader(test_set, test_idx, max(config.batch_size // ctx.world_size, 1), augment=False,
                              shuffle=False, device=ctx.device) if len(test_idx) else None
    quiet = config.quiet or not ctx.is_main
    bar = tqdm(total=(config.epochs - start) * len(train_loader), desc=f"train {space.name}", disable=quiet,
               dynamic_ncols=True)
    last_test: dict[str, float] | None = None
    try:
        for epoch in range(start, config.epochs):
            t0 = time.time()
            lr = lr_at(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            drop = config.drop_path * epoch / config.epochs
            if hasattr(model, "drop_path_prob"):
                model.drop_path_prob = drop
            tr = train_one_epoch(net, train_loader.epoch(epoch), optimizer, ctx, aux_weight=config.auxiliary_weight,
                                 grad_clip=config.grad_clip, progress=bar)
            record = {"epoch": epoch, "lr": lr, "drop_path": drop, "train_loss": tr["loss"], "train_acc": tr["acc"]}
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                ctx.broadcast_buffers(model)
                last_test = evaluate(model, test_loader, ctx)
                record.update(test_loss=last_test["loss"], test_acc=last_test["acc"])
            _check_finite(model, record, epoch, config)
            record["seconds"] = round(time.time() - t0, 3)
            elapsed += record["seconds"]
            bar.set_postfix(epoch=epoch, loss=f"{tr['loss']:.3f}",
                            test=f"{last_test['acc']:.2f}" if last_test else "-")
            rngs = ctx.gather(rng_state())
            begin()
            if ctx.is_main:
                log_metrics(run, record)
                tb_log(run, record, epoch, "train")
                save_checkpoint(run, {"epoch": epoch + 1, "model": model.state_dict(),
                                      "optimizer": optimizer.state_dict(), "rank_rng": rngs, "elapsed": elapsed})
            ctx.barrier()
            if callback is not None:
                callback(record)
    except KeyboardInterrupt as e:
        begin.mark(e)
        raise
    finally:
        bar.close()
    if last_test is None:  # resumed a finished run whose result.json was lost: score the final weights
        ctx.broadcast_buffers(model)
        last_test = evaluate(model, test_loader, ctx)
    result = {"space": space.name, "genotype": genotype.to_json(), "genotype_str": str(genotype),
              "dataset": config.dataset, "epochs": config.epochs, "test_acc": last_test["acc"],
              "test_loss": last_test["loss"], "train_acc": record.get("train_acc"),
              "train_loss": record.get("train_loss"), **counts, "world_size": ctx.world_size,
              "seconds": round(elapsed, 3), "source": config.source, "environment": environment(),
              "finished": True}
    if benchmark is not None:
        result["benchmark"] = benchmark
    begin()
    if ctx.is_main:
        result = update_result(run, **result)
    ctx.barrier()
    return result
