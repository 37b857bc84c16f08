"""Operation-strength selection (OStr-DARTS, Yang et al., arXiv 2409.14433).

Confirmed (abstract): selection only, on a supernet trained exactly as DARTS; an operation's
importance is estimated by its effect on the final loss, replacing the magnitude of α.

Our reading (the paper's formula and procedure were not reachable): for edge e and op o,

    S(e, o) = E_batches [ - Σ_{cells c sharing α} < ∂L/∂m̄_{c,e} , w_{e,o} · o(x_{c,e}) > ]

the first-order Taylor estimate of the increase of the (batch-mean) validation loss if o's contribution
were removed from edge e in every cell that shares α: L(m̄ - w·o(x)) - L(m̄) ≈ -<∂L/∂m̄, w·o(x)>. Note the
minus sign: the plain inner product is the estimated *decrease*, and keeping its argmax would keep
the most harmful op. ``none`` gets S = 0 exactly, as do ops whose weight is 0. Batches are weighted
by their size. BN uses its running statistics (``bn_mode=eval``, the default): with batch statistics
the loss is invariant to rescaling whatever feeds a BN, so the first-order effect of removing an op
that is (nearly) the only contributor to a node nearly vanishes and its sign is noise (the tests
show it); ``bn_mode=train`` is available (running statistics are restored afterwards either way).

Selection (the reconstruction in the method notes): the best non-``none`` op per edge; DARTS spaces
then keep the two inputs per node whose op scores highest (the standard DARTS rule on S). Option
``include_none=true`` lets ``none`` (S = 0) win an NB201 edge where removing every other op would
lower the loss; that was this module's first reading, and on the nb201-cpu supernets it chose
``none`` for all three inputs of the output node on every seed (a cell that computes nothing).
Options: ``weighted=false`` drops the mixing weight from the score, S(e, o) = -Σ_cells <∂L/∂m̄, o(x)>
(= -∂L/∂w_{e,o}, the loss gradient of o's mixing weight; whether the paper's score includes p_{e,o} is
one of the open choices the method notes list); ``abs=true`` uses |Σ_cells <...>| per batch (the usual
Taylor-pruning magnitude; the spec's reconstruction puts the absolute value inside the expectation);
``progressive=true`` fixes one edge at a time with DARTS-PT's fine-tuning schedule (``progressive.py``),
scoring the supernet as it is at each decision; topology then keeps, per node, the two inputs whose
chosen op has the largest S.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import BatchLoader
from ..errors import DnasError
from .base import Selection, scores_to_json
from .common import frozen_buffers, method_options, mixed_sites, positive_int, reference_model, scoring_loader
from .progressive import SCHEDULE_CHOICES, SCHEDULE_DEFAULTS, Schedule, run_progressive
from .run import Method, register_method

if TYPE_CHECKING:
    from ..search import SearchRun
    from .run import SelectionContext

DEFAULTS: dict[str, Any] = {
    "batches": None,            # None: the whole validation split
    "eval_batch_size": None,    # None: the search batch size
    "abs": False,
    "weighted": True,           # S includes the mixing weight w_{e,o} (False: the bare inner product)
    "bn_mode": "eval",
    "progressive": False,
    "include_none": False,      # NB201: may ``none`` be chosen (it scores 0)?
    **SCHEDULE_DEFAULTS,        # progressive only, as pt
}
CHOICES = {**SCHEDULE_CHOICES, "abs": (True, False), "weighted": (True, False), "bn_mode": ("train", "eval"),
           "progressive": (True, False), "include_none": (True, False)}


def operation_strength(model: nn.Module, loader: BatchLoader, *, bn_train: bool = False,
                       max_batches: int | None = None, absolute: bool = False,
                       weighted: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """S per cell type (edges x ops, float64 on the CPU) and the number of forward+backward passes.

    ``weighted=False`` leaves out the mixing weight w_{e,o} (ops with weight 0 are not computed and score 0)."""
    arch = model.arch
    sites = mixed_sites(model)
    op_out: dict[tuple[int, int], torch.Tensor] = {}
    edge_out: dict[int, torch.Tensor] = {}
    hooks = []
    for s, (_, _, mixed) in enumerate(sites):
        hooks.append(mixed.register_forward_hook(
            lambda mod, inp, out, s=s: edge_out.__setitem__(s, out) if out is not None else None))
        for k, op in enumerate(mixed.ops):
            hooks.append(op.register_forward_hook(
                lambda mod, inp, out, s=s, k=k: op_out.__setitem__((s, k), out)))
    total = {ct: torch.zeros(arch.space.cells[ct].num_edges, arch.space.cells[ct].num_ops, dtype=torch.float64)
             for ct in arch.cell_types}
    seen, batches = 0, 0
    try:
        with frozen_buffers(model):
            model.train(bn_train)
            for x, y in loader.epoch(0):
                if max_batches is not None and batches >= max_batches:
                    break
                op_out.clear()
                edge_out.clear()
                with torch.no_grad():
                    weights = {ct: arch.weights(ct).detach().double().cpu() for ct in arch.cell_types}
                loss = F.cross_entropy(model(x), y)
                if not edge_out:
                    raise DnasError("ostr: no mixed op ran in the forward pass (a fast supernet? use reference_model)")
                keys = list(edge_out)
                grads = {s: g for s, g in zip(keys, torch.autograd.grad(loss, [edge_out[s] for s in keys],
                                                                         allow_unused=True)) if g is not None}
                batch = {ct: torch.zeros_like(t) for ct, t in total.items()}
                for (s, k), out in op_out.items():
                    ct, e, mixed = sites[s]
                    if s not in grads or mixed.names[k] == "none":
                        continue  # ``none`` is never computed; an edge that does not reach the loss scores 0
                    inner = float((grads[s].detach() * out.detach()).sum().double())
                    batch[ct][e, k] -= inner * weights[ct][e, k] if weighted else inner
                for ct in total:
                    total[ct] += (batch[ct].abs() if absolute else batch[ct]) * len(y)
                seen += len(y)
                batches += 1
    finally:
        for h in hooks:
            h.remove()
        model.train()
    return {ct: t / max(seen, 1) for ct, t in total.items()}, batches


class OstrDecider:
    """Progressive OStr: score the supernet as it is, fix one edge / one node's inputs at a time."""

    def __init__(self, model: nn.Module, loader: BatchLoader, opts: dict[str, Any]):
        self.model, self.loader, self.opts = model, loader, opts
        self.forward_passes = 0

    def _scores(self, ct: str) -> torch.Tensor:
        s, n = operation_strength(self.model, self.loader, bn_train=self.opts["bn_mode"] == "train",
                                  max_batches=self.opts["batches"], absolute=self.opts["abs"],
                                  weighted=self.opts["weighted"])
        self.forward_passes += n
        return s[ct]

    def op(self, ct: str, edge: int) -> tuple[int, dict[str, Any]]:
        s = self._scores(ct)
        names = self.model.arch.space.cells[ct].ops[edge]
        none_ok = self.opts["include_none"] and self.model.arch.space.family == "nb201"  # DARTS: never
        cand = [k for k, n in enumerate(names) if n != "none" or none_ok]
        mask = self.model.arch.mask(ct)[edge]
        cand = [k for k in cand if float(mask[k]) > 0] or cand  # removed ops cannot be kept
        best = max(cand, key=lambda k: (float(s[edge, k]), -k))  # ties: lower index
        return best, {"candidates": {n: {"ostr": float(s[edge, k])} for k, n in enumerate(names)}}

    def topology(self, ct: str, node: int, edges: list[int]) -> tuple[list[int], dict[str, Any]]:
        s = self._scores(ct)
        arch = self.model.arch
        fixed = arch.fixed(ct).tolist()
        names, live = arch.space.cells[ct].ops, arch.live(ct)
        # An input with no live op left (crb pruning removed them all) is not computed: its S is exactly 0,
        # which must not beat a live input whose S < 0. It is kept only when fewer than two are live.
        dead = {e for e in edges if not any(live[e, k] and n != "none" for k, n in enumerate(names[e]))}
        strength = {e: float(s[e, fixed[e]]) if fixed[e] >= 0 else float(s[e].max()) for e in edges}
        keep = sorted(edges, key=lambda e: (e in dead, -strength[e], e))[:2]
        return [e for e in edges if e not in keep], {"candidates": {str(e): {"ostr": v} for e, v in strength.items()}}


def _progressive_table(run: "SearchRun", decisions: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    table = {ct: [[float("nan")] * spec.num_ops for _ in range(spec.num_edges)] for ct, spec in run.space.cells.items()}
    for d in decisions:
        if d["kind"] == "op":
            names = run.space.cells[d["cell_type"]].ops[d["edge"]]
            table[d["cell_type"]][d["edge"]] = [d["candidates"][n]["ostr"] for n in names]
    return table


def _pickable(run: "SearchRun", scores: dict[str, torch.Tensor], include_none: bool) -> dict[str, torch.Tensor]:
    """The scores with removed ops, the other ops of fixed edges and (unless ``include_none``) ``none`` at
    -inf, so discretising never picks them. An edge with nothing else left (removed, or fixed to ``none``):
    NB201 keeps its scores, and ``none`` wins there; DARTS spaces put the whole row at -inf, so a node takes
    such an edge only when it has fewer than two live inputs (its removed ops score exactly 0, which would
    otherwise beat a live edge whose S < 0)."""
    arch, out = run.model.arch, {}
    darts = run.space.family == "darts"
    for ct, s in scores.items():
        s = s.clone()
        live = arch.live(ct)
        for e, names in enumerate(run.space.cells[ct].ops):
            keep = [k for k, name in enumerate(names) if (include_none or name != "none") and live[e, k]]
            if keep:
                s[e, [k for k in range(len(names)) if k not in keep]] = float("-inf")
            elif darts:
                s[e] = float("-inf")
        out[ct] = s
    return out


def select_ostr(run: "SearchRun | None", ctx: "SelectionContext") -> Selection:
    if run is None:
        raise DnasError("ostr needs a trained supernet (a search run directory)")
    opts = method_options(ctx, DEFAULTS, CHOICES)
    if not opts["progressive"]:
        ignored = sorted(k for k in ctx.options if k in SCHEDULE_DEFAULTS)
        if ignored:
            raise DnasError(f"ostr: option(s) {', '.join(ignored)} only apply with progressive=true")
    if not opts["progressive"] and ctx.resume and ctx.checkpoint is not None and ctx.checkpoint.exists():
        # A one-shot --resume would finish and then delete the progressive selection's saved progress.
        raise DnasError(f"ostr: an interrupted progressive selection is saved in {ctx.checkpoint}; continue it with "
                        "--resume --option progressive=true (and its other options) or use --force to start over")
    if opts["include_none"] and run is not None and run.space.family != "nb201":
        raise DnasError("ostr: include_none only applies to NB201 (DARTS genotypes never keep none)")
    positive_int("ostr", "batches", opts["batches"], allow_none=True)
    positive_int("ostr", "eval_batch_size", opts["eval_batch_size"], allow_none=True)
    model = reference_model(run)
    loader = scoring_loader(run, opts["eval_batch_size"], bn_train=opts["bn_mode"] == "train",
                            max_batches=opts["batches"])
    if opts["progressive"]:
        schedule = Schedule.from_options("ostr", opts, run)
        ref_run = dataclasses.replace(run, model=model)  # tune the model that the hooks see
        shaping = {k: opts[k] for k in ("batches", "eval_batch_size", "abs", "weighted", "bn_mode", "include_none")}
        result = run_progressive(ref_run, ctx, lambda: OstrDecider(model, loader, opts), schedule, shaping)
        with torch.no_grad():
            projected = {ct: model.arch.base_weights(ct).detach().cpu() for ct in model.arch.cell_types}
        return Selection(method="ostr", space=run.space.name, genotype=run.space.discretize(projected),
                         scores=_progressive_table(run, result.decisions), decisions=result.decisions,
                         cost={"seconds": result.seconds, "forward_passes": result.forward_passes,
                               "finetune_epochs": result.tune_epochs,
                               "tune_w_steps": result.tune_w_steps, "tune_arch_steps": result.tune_arch_steps},
                         options={**opts, "seed": schedule.seed})
    t0 = time.time()
    scores, n = operation_strength(model, loader, bn_train=opts["bn_mode"] == "train", max_batches=opts["batches"],
                                   absolute=opts["abs"], weighted=opts["weighted"])
    # DARTS spaces drop none anyway; with include_none (NB201) removed ops and fixed edges still bind
    pickable = _pickable(run, scores, opts["include_none"])
    return Selection(method="ostr", space=run.space.name, genotype=run.space.discretize(pickable),
                     scores=scores_to_json(scores),
                     cost={"seconds": time.time() - t0, "forward_passes": n, "finetune_epochs": 0}, options=opts)


register_method(Method("ostr", select_ostr, needs_run=True,
                       description="operation strength: first-order loss increase when an op is removed"))
