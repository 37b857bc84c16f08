"""Training-free selection by connection sensitivity (ZEROS / FreeDARTS, Zhang, Huang, Wang; arXiv 2106.11542).

Confirmed (released FreeDARTS notebooks, "oneshot"): build the supernet at initialisation with α used
linearly (m̄_e = Σ_o α_{e,o}·o(x), α ~ 1e-3·N(0,1)); replace every tensor of the state dict by its
absolute value (weights and BN buffers, SynFlow's linearisation); feed one all-ones image; R = Σ logits;
S(e,o) = |α_{e,o} · ∂R/∂α_{e,o}|; NB201: argmax per edge (``none`` included); DARTS spaces: best
non-``none`` op per edge, top-2 inputs per node by that score. ``rounds=1`` is exactly this.
Confirmed (v4 abstract): ZEROS is used "iteratively and data-agnostically".
Our reading of "iteratively" (the v4 text was not reachable; it is SynFlow's own wording): over T
rounds, score, then mask the lowest-scoring remaining op(s) of every edge, and rescore, until one op per
edge is left; the default T = |ops| - 1 removes one op per edge per round. With fewer rounds, after
round t every edge keeps |ops| - round((|ops| - 1)·t/T) ops. Ties remove the lower op index.
Masked ops have mixing weight 0, so they are skipped in the forward pass and score 0.

α's sign: the DARTS-space notebook keeps α out of the state dict (α keeps its sign), the NB201 one
makes α a parameter (|α|); ``abs_alpha`` defaults to that per-family behaviour.
Numerics: float64 by default. The released NB201 notebook printed NaN gradients, so if the scores are
not finite with train-mode BN we rescore the whole procedure with eval-mode BN (``bn_mode=auto``), and a
genotype is never built from non-finite scores (DnasError). No data and no training: with a search run
only its space, sizes, input shape and class count are used; the weights are fresh (at init).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import DnasError, memory_limits
from ..spaces import Space, get_space
from ..supernet import ArchState, build_supernet
from .base import Selection
from .common import frozen_buffers, method_options, positive_int, seed_option
from .run import Method, register_method

if TYPE_CHECKING:
    from ..search import SearchRun
    from .run import SelectionContext

# Search-network sizes per family when there is no run (NB201: C=16, N=5; DARTS: C=16, 8 cells), CIFAR input.
SIZES = {"nb201": {"channels": 16, "cells": 5}, "darts": {"channels": 16, "cells": 8}}
DEFAULTS: dict[str, Any] = {
    "rounds": None,         # None: |ops| - 1 (one op per edge removed per round); 1: the released one-shot
    "dtype": "float64",
    "bn_mode": "auto",      # auto: train-mode BN, eval mode if that gives non-finite scores
    "abs_alpha": None,      # None: per family, as the released notebooks (NB201 |α|, DARTS signed α)
    "seed": None,           # α / weight init seed; None: the run's seed, else 0
    # run-less only: the supernet to build
    "space": None,
    "channels": None,
    "cells": None,
    "resolution": 32,
    "num_classes": 10,
    "in_channels": 3,
    "device": "cpu",
}
RUNLESS = ("space", "channels", "cells", "resolution", "num_classes", "in_channels", "device")
CHOICES = {"dtype": ("float64", "float32"), "bn_mode": ("auto", "train", "eval"), "abs_alpha": (None, True, False)}


def init_supernet(space: Space, *, channels: int, cells: int, num_classes: int, in_channels: int,
                  dtype: torch.dtype, seed: int, abs_alpha: bool, device: torch.device | str = "cpu",
                  node_bn: bool = False) -> nn.Module:
    """The supernet at init with linear α, every float state tensor replaced by its absolute value.

    ``node_bn``: the run's network has a BN on every node (DARTS-PRIME's), so score that network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        arch = ArchState(space, "linear")
        model = build_supernet(space, channels=channels, cells=cells, num_classes=num_classes,
                               in_channels=in_channels, activation="linear", arch=arch, impl="reference",
                               node_bn=node_bn)
    model = model.to(device=device, dtype=dtype)
    with torch.no_grad():
        signed = {ct: a.detach().clone() for ct, a in arch.alphas.items()}
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.abs_()
        if not abs_alpha:
            for ct, a in arch.alphas.items():
                a.copy_(signed[ct])
    return model


def connection_sensitivity(model: nn.Module, resolution: int, in_channels: int, *, bn_train: bool,
                           seed: int) -> dict[str, torch.Tensor]:
    """|α ⊙ ∂R/∂α| per cell type for R = Σ logits of one all-ones image; the model is left unchanged."""
    arch = model.arch
    p = next(model.parameters())
    x = torch.ones(1, in_channels, resolution, resolution, dtype=p.dtype, device=p.device)
    alphas = [arch.alphas[ct] for ct in arch.cell_types]
    with torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else []), frozen_buffers(model):
        torch.manual_seed(seed)  # S4's noise op draws random numbers
        model.train(bn_train)
        try:
            r = model(x).sum()
        except ValueError as e:  # train-mode BN on a 1x1 map of a batch of one
            raise DnasError(f"zeros: input resolution {resolution} is too small for this supernet ({e})") from None
        grads = torch.autograd.grad(r, alphas, allow_unused=True)
    model.train()
    return {ct: (a.detach() * (torch.zeros_like(a) if g is None else g)).abs().double().cpu()
            for ct, a, g in zip(arch.cell_types, alphas, grads)}


def keep_counts(num_ops: int, rounds: int) -> list[int]:
    """Ops left per edge after each round: from num_ops down to 1 in ``rounds`` even steps."""
    return [num_ops - round((num_ops - 1) * t / rounds) for t in range(1, rounds + 1)]


def iterative_prune(model: nn.Module, resolution: int, in_channels: int, *, rounds: int, bn_train: bool,
                    seed: int) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, Any]]]:
    """Score, mask the weakest ops of every edge, rescore. Returns the last round's scores (None as soon
    as a round's scores are not finite) and one log entry per completed round; masks go to ``model.arch``."""
    arch = model.arch
    log = []
    scores: dict[str, torch.Tensor] = {}
    for t, keep in enumerate(keep_counts(arch.space.cells[arch.cell_types[0]].num_ops, rounds)):
        scores = connection_sensitivity(model, resolution, in_channels, bn_train=bn_train, seed=seed)
        alive = {ct: arch.mask(ct).detach().cpu() > 0 for ct in arch.cell_types}
        if not all(bool(torch.isfinite(scores[ct][alive[ct]]).all()) for ct in arch.cell_types):
            return None, log
        removed = {}
        for ct in arch.cell_types:
            names = arch.space.cells[ct].ops
            removed[ct] = []
            for e in range(scores[ct].shape[0]):
                live = [k for k in range(scores[ct].shape[1]) if alive[ct][e, k]]
                for k in sorted(live, key=lambda k: (float(scores[ct][e, k]), k))[: max(0, len(live) - keep)]:
                    arch.remove_op(ct, e, k)
                    removed[ct].append([e, names[e][k]])
        log.append({"kind": "round", "round": t, "keep": keep,
                    "scores": {ct: s.tolist() for ct, s in scores.items()}, "removed": removed})
    return scores, log


Scores = dict[str, torch.Tensor]


def _final(model: nn.Module, scores: Scores) -> tuple[Scores, Scores]:
    """(genotype scores: survivors' S, removed ops below any S >= 0; reported scores: removed ops NaN)."""
    arch = model.arch
    alive = {ct: arch.mask(ct).detach().cpu() > 0 for ct in arch.cell_types}
    rank = {ct: torch.where(alive[ct], s, torch.full_like(s, -1.0)) for ct, s in scores.items()}
    shown = {ct: torch.where(alive[ct], s, torch.full_like(s, float("nan"))) for ct, s in scores.items()}
    return rank, shown


def select_zeros(run: "SearchRun | None", ctx: "SelectionContext") -> Selection:
    opts = method_options(ctx, DEFAULTS, CHOICES)
    if run is not None:
        runless = [k for k in RUNLESS if ctx.options.get(k) is not None]
        if runless:
            raise DnasError(f"zeros: option(s) {', '.join(runless)} apply only without a run directory")
        space = run.space
        sizes = {"channels": run.config.channels, "cells": run.config.cells,
                 "num_classes": run.dataset.num_classes, "in_channels": run.dataset.channels}
        node_bn = run.config.node_bn
        resolution, device = int(run.dataset.images.shape[-1]), run.device
        seed = seed_option("zeros", opts["seed"], run.config.seed)
    else:
        if opts["space"] is None:
            raise DnasError("zeros without a run directory needs --space")
        space = get_space(opts["space"])
        fam = SIZES[space.family]
        sizes = {"channels": fam["channels"] if opts["channels"] is None else opts["channels"],
                 "cells": fam["cells"] if opts["cells"] is None else opts["cells"],
                 "num_classes": opts["num_classes"], "in_channels": opts["in_channels"]}
        for k in sizes:
            positive_int("zeros", k, sizes[k])
        resolution = positive_int("zeros", "resolution", opts["resolution"])
        from ..rundir import resolve_device
        device = resolve_device(opts["device"])
        seed = seed_option("zeros", opts["seed"], 0)
        node_bn = False
    num_ops = next(iter(space.cells.values())).num_ops
    rounds = positive_int("zeros", "rounds", max(1, num_ops - 1) if opts["rounds"] is None else opts["rounds"])
    if rounds > max(1, num_ops - 1):
        raise DnasError(f"zeros: rounds must be at most {num_ops - 1} ({num_ops} ops per edge), got {rounds}")
    abs_alpha = (space.family == "nb201") if opts["abs_alpha"] is None else bool(opts["abs_alpha"])
    dtype = torch.float64 if opts["dtype"] == "float64" else torch.float32

    t0 = time.time()
    passes = 0
    modes = {"auto": (True, False), "train": (True,), "eval": (False,)}[opts["bn_mode"]]
    shown_sizes = {"space": space.name, "channels": sizes["channels"], "cells": sizes["cells"],
                   "resolution": resolution, "dtype": opts["dtype"], "device": str(device)}
    lower = ("the run's sizes (a search with lower --channels, --cells or --resolution)" if run is not None
             else "--option channels, cells or resolution, or use dtype=float32")
    for bn_train in modes:
        with memory_limits("scoring the supernet (zeros)", shown_sizes, lower):
            model = init_supernet(space, dtype=dtype, seed=seed, abs_alpha=abs_alpha, device=device,
                                  node_bn=node_bn, **sizes)
            scores, log = iterative_prune(model, resolution, sizes["in_channels"], rounds=rounds,
                                          bn_train=bn_train, seed=seed)
        passes += len(log) + (scores is None)
        if scores is not None:
            break
    else:
        raise DnasError(f"zeros: connection sensitivity is not finite on {space.name} in {opts['dtype']} "
                        f"(bn_mode={opts['bn_mode']}); try dtype=float64 or bn_mode=eval")
    rank, shown = _final(model, scores)
    genotype = space.discretize(rank)
    used = {**opts, **sizes, "space": space.name, "resolution": resolution, "rounds": rounds, "seed": seed,
            "abs_alpha": abs_alpha, "node_bn": node_bn, "bn_mode_used": "train" if bn_train else "eval",
            "device": str(device)}
    return Selection(method="zeros", space=space.name, genotype=genotype,
                     scores={ct: s.tolist() for ct, s in shown.items()}, decisions=log,
                     cost={"seconds": time.time() - t0, "forward_passes": passes, "finetune_epochs": 0}, options=used)


register_method(Method("zeros", select_zeros, needs_run=False,
                       description="training-free connection sensitivity at init (ZEROS / FreeDARTS), iterative"))
