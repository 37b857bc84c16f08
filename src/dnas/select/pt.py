"""Perturbation-based selection (DARTS-PT, Wang et al. ICLR 2021), as the official code does it.

For an undecided edge (seeded random order) and each candidate op, zero that op's mixing weight (no
renormalisation) and measure the supernet's accuracy on the whole validation split with BN in train
mode (batch statistics), without gradients. Keep the op whose removal hurts most (lowest accuracy;
``criterion=loss``: highest loss; ties go to the lower op index, as the code's strict comparison),
fix the edge one-hot, and fine-tune ``proj_intv`` epochs before the next decision (schedule and
optimiser handling in ``progressive.py``). DARTS spaces: after the 14 op decisions per cell type, for
nodes 3-5 in random order drop the input edge whose removal hurts least (highest accuracy; ties to the
later edge, as the code) until two inputs remain. As in the code, the edges already dropped at a node
stay in the network while its remaining inputs are compared; they are removed together at the end.

Differences from the released code, all deliberate:
- candidates are evaluated on the α half without augmentation in a fixed order (the code reuses the
  augmented, shuffled ``valid_queue``), in batches of the search batch size (``eval_batch_size``);
- BN running statistics are restored after every candidate evaluation (the code lets them drift; in
  train mode they never affect a decision, in ``bn_mode=eval`` they would);
- the trace of every decision (edge, per-op accuracy and loss, chosen op) is kept in ``decisions``;
- tuning's random draws (SPOS paths, SDARTS-RS noise) continue the search's stream (``tune_rng=continue``);
  the released projection scripts re-seed a new process, which replays the search's first SDARTS noise
  (``tune_rng=restart``; see ``progressive.py``).
Selection scores: per (edge, op) ``1 - acc`` with the op removed (``criterion=acc``) or the loss with it
removed (``criterion=loss``); higher = the removal hurts more; NaN on edges never op-decided. The genotype
is the space's standard parse of the projected weights (one-hot decided edges, removed edges zero), so in S3
an edge where PT kept ``none`` falls back to its first non-``none`` op, as in the code.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import DnasError
from .base import Selection
from .common import EvalResult, current_weights, evaluate_weights, method_options, positive_int, scoring_loader
from .progressive import SCHEDULE_CHOICES, SCHEDULE_DEFAULTS, Schedule, run_progressive
from .run import Method, register_method

if TYPE_CHECKING:
    from ..search import SearchRun
    from .run import SelectionContext

DEFAULTS: dict[str, Any] = {
    **SCHEDULE_DEFAULTS,
    "criterion": "acc",         # acc: lowest accuracy without the op wins; loss: highest loss
    "bn_mode": "train",         # BN during candidate evaluation: train (batch stats, as the code) or eval
    "max_batches": None,        # None: the whole validation split
    "eval_batch_size": None,    # None: the search batch size
}
SHAPING = ("criterion", "bn_mode", "max_batches", "eval_batch_size")  # besides the schedule: checked on resume
CHOICES = {**SCHEDULE_CHOICES, "criterion": ("acc", "loss"), "bn_mode": ("train", "eval")}


class PtDecider:
    """Evaluates the supernet with one op (or one edge) zeroed; see the module docstring."""

    def __init__(self, run: "SearchRun", opts: dict[str, Any]):
        self.run, self.model, self.arch = run, run.model, run.model.arch
        self.loader = scoring_loader(run, opts["eval_batch_size"], bn_train=opts["bn_mode"] == "train",
                                     max_batches=opts["max_batches"])
        self.criterion = opts["criterion"]
        self.bn_train = opts["bn_mode"] == "train"
        self.max_batches = opts["max_batches"]
        self.forward_passes = 0

    def _eval(self, ct: str, zero: tuple[int, int | None]) -> EvalResult:
        """Zero entry (edge, op) of ``ct``'s current weights, or the whole edge row when op is None."""
        weights = current_weights(self.arch)
        e, o = zero
        if o is None:
            weights[ct][e] = 0.0
        else:
            weights[ct][e, o] = 0.0
        r = evaluate_weights(self.model, self.loader, weights, bn_train=self.bn_train, max_batches=self.max_batches)
        self.forward_passes += r.batches
        return r

    def _key(self, r: EvalResult) -> float:
        """Higher = the removal hurts more. Accuracy compares exact counts, so ties are real ties."""
        return -r.correct if self.criterion == "acc" else r.loss_sum

    def op(self, ct: str, edge: int) -> tuple[int, dict[str, Any]]:
        names = self.run.space.cells[ct].ops[edge]
        # Ops already removed from the supernet (masked: crb pruning, an earlier remove_op) cannot be kept.
        live = [o for o in range(len(names)) if float(self.arch.mask(ct)[edge, o]) > 0] or list(range(len(names)))
        results = {o: self._eval(ct, (edge, o)) for o in live}
        best = live[0]
        for o in live[1:]:  # strict: ties keep the lower index, as darts-pt
            if self._key(results[o]) > self._key(results[best]):
                best = o
        return best, {"candidates": {names[o]: r.to_json() for o, r in results.items()}}

    def topology(self, ct: str, node: int, edges: list[int]) -> tuple[list[int], dict[str, Any]]:
        remaining, removed, rounds = list(edges), [], []
        # An input whose ops were all removed before (crb pruning) is no input any more: removing it changes
        # nothing, so without this a live input whose removal helps would be dropped in its place and the
        # genotype would name a removed op. Such inputs go first (the later edge first), unevaluated.
        live = self.arch.live(ct)
        dead = [e for e in edges if not bool(live[e].any())]
        while len(remaining) > 2 and dead:
            drop = dead.pop()
            rounds.append({"candidates": {}, "dropped": drop, "no_live_op": True})
            remaining.remove(drop)
            removed.append(drop)
        while len(remaining) > 2:
            results = {e: self._eval(ct, (e, None)) for e in remaining}
            drop = None
            for e in remaining:  # non-strict: ties drop the later edge, as darts-pt
                if drop is None or self._key(results[e]) <= self._key(results[drop]):
                    drop = e
            rounds.append({"candidates": {str(e): r.to_json() for e, r in results.items()}, "dropped": drop})
            remaining.remove(drop)
            removed.append(drop)
        return removed, {"rounds": rounds}


def score_table(run: "SearchRun", decisions: list[dict[str, Any]], criterion: str) -> dict[str, list[list[float]]]:
    """Per (edge, op): 1 - accuracy (or the loss) with the op removed, from the op decisions; NaN elsewhere
    (ops removed before the decision were not scored)."""
    scores = {ct: [[math.nan] * spec.num_ops for _ in range(spec.num_edges)] for ct, spec in run.space.cells.items()}
    for d in decisions:
        if d["kind"] != "op":
            continue
        names = run.space.cells[d["cell_type"]].ops[d["edge"]]
        for k, n in enumerate(names):
            c = d["candidates"].get(n)
            if c is not None:
                scores[d["cell_type"]][d["edge"]][k] = 1.0 - c["acc"] if criterion == "acc" else c["loss"]
    return scores


def select_pt(run: "SearchRun | None", ctx: "SelectionContext") -> Selection:
    if run is None:
        raise DnasError("pt needs a trained supernet (a search run directory)")
    opts = method_options(ctx, DEFAULTS, CHOICES)
    positive_int("pt", "max_batches", opts["max_batches"], allow_none=True)
    positive_int("pt", "eval_batch_size", opts["eval_batch_size"], allow_none=True)
    schedule = Schedule.from_options("pt", opts, run)
    result = run_progressive(run, ctx, lambda: PtDecider(run, opts), schedule, {k: opts[k] for k in SHAPING})
    arch = run.model.arch
    with torch.no_grad():
        projected = {ct: arch.base_weights(ct).detach().cpu() for ct in arch.cell_types}
    genotype = run.space.discretize(projected)
    return Selection(method="pt", space=run.space.name, genotype=genotype,
                     scores=score_table(run, result.decisions, opts["criterion"]), decisions=result.decisions,
                     cost={"seconds": result.seconds, "forward_passes": result.forward_passes,
                           "finetune_epochs": result.tune_epochs,
                           "tune_w_steps": result.tune_w_steps, "tune_arch_steps": result.tune_arch_steps},
                     options={**opts, "seed": schedule.seed})


register_method(Method("pt", select_pt, needs_run=True,
                       description="DARTS-PT perturbation-based selection with fine-tuning between decisions"))
