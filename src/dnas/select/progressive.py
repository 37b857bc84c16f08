"""DARTS-PT's progressive discretisation loop, shared by ``pt`` and progressive ``ostr``.

Schedule (darts-pt ``sota/cnn/projection.py``, ``nasbench201/projection.py``):
- NB201: ``tune_epochs = proj_intv * (E - 1)`` (25 for E = 6 edges, proj_intv 5); an op decision at
  epochs 0, 5, ..., 20 and at the last epoch (24): 6 decisions.
- DARTS spaces: ``tune_epochs = proj_intv * (E + T - 1) + 1`` (81 for 14 edges and T = 3 nodes with
  more than two inputs); op decisions at epochs 0, 5, ..., 65 (one edge per cell type each), topology
  decisions at 70, 75, 80 (one node per cell type each: drop its least important inputs until two remain).
- Every epoch (after the decision of that epoch, if any) tunes the supernet for one epoch with the
  search's own recipe: α steps as in the search (none for ``--mode fixed``), then w steps.
- w optimiser reset: SGD at the search lr / 10 (0.0025), momentum and weight decay as in the search.
  The released code builds a cosine scheduler but never steps it, so the lr stays 0.0025 in both
  spaces; ``lr_schedule=cosine`` anneals to ``w_lr_min`` over the tune epochs instead (§1.1's reading).
- The α optimiser is *not* reset: darts-pt resumes the search checkpoint (its ``arch_optimizer``
  state included) and keeps stepping the same Adam. We load the run checkpoint's ``a_opt`` state
  when there is one (``reset_arch_optimizer=true`` starts a fresh Adam).
- Random draws while tuning (SPOS paths, SDARTS-RS noise: the searcher's generator), option ``tune_rng``:
  ``continue`` (default) goes on from the search checkpoint's generator state, as if the search had run
  on: the reading of darts-pt as one run that the rest of this schedule takes (the search's α-optimiser
  state, data epochs after the search's), and that darts-pt's ``train_search.py --dev proj`` without
  ``--resume_epoch`` (projection in the search's process) does. darts-pt's released projection scripts
  instead start a new process with the search's ``--seed`` from a checkpoint that saves no RNG state,
  so their SDARTS noise (drawn on the CUDA generator, which nothing draws from before) replays the
  search's first noise, scaled by ε; ``restart`` does that here: the generator starts again at the
  search's seed, and the first tuning steps repeat the search's first SPOS paths / noise while the data
  epochs move on (what dnas did before this option). We take ``continue`` as the default because the
  replay is a by-product of darts-pt's checkpoint format, not part of the method, and it couples tuning
  to the search's start.
  A supernet searched in memory (no run directory, so no checkpoint) continues on a stream of its own
  (seeded from the search seed apart from the search's), which cannot replay the search's draws.
- Edge order: darts-pt draws uniformly among the undecided edges at each decision; we draw one seeded
  permutation per cell type up front (the same distribution), saved in the checkpoint.
- With ``proj_intv = 1`` darts-pt's NB201 formula gives 5 epochs for 6 decisions (the last edge would
  stay undecided); we then tune E epochs with a decision at each.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from ..data.core import derive_seed
from ..errors import DnasError
from ..tensorboard import tb_log
from ..rundir import (CHECKPOINT, CONFIG, BeforeFirstWrite, changed_settings, does_not_fit, fitting, load_checkpoint,
                      log_metrics, truncate_metrics)
from ..schema import check_fields
from ..spaces import Space
from ..spaces.darts import NODE_EDGES
from ..search import cosine_lr
from ..search.run import load_searcher_state
from .common import positive_float, positive_int, seed_option

if TYPE_CHECKING:
    from ..search import SearchRun
    from .run import SelectionContext

ORDER_SEED = 0x5E1EC7  # added to the search seed for the edge/node orders
TUNE_STREAM = 0x7E4E  # tune_rng=continue without a search checkpoint: the generator's own stream

# Options of every progressive method (pt, progressive ostr), with DARTS-PT's defaults.
SCHEDULE_DEFAULTS: dict[str, Any] = {
    "proj_intv": 5,             # tune epochs between decisions (darts-pt --proj_intv 5)
    "lr": None,                 # tuning w lr; None: search lr / 10 (0.0025)
    "lr_schedule": "constant",  # constant (what the released code does) or cosine (to w_lr_min)
    "reset_arch_optimizer": False,
    "sdarts_epsilon": 0.3,      # SDARTS-RS supernets keep their perturbation during tuning with this ε
    "seed": None,               # edge-order seed; None: the search seed
    "tune_rng": "continue",     # SPOS paths / SDARTS noise while tuning: continue the search's stream or restart it
}
SCHEDULE_CHOICES = {"lr_schedule": ("constant", "cosine"), "reset_arch_optimizer": (True, False),
                    "tune_rng": ("continue", "restart")}
LEGACY_TUNE_RNG = "restart"  # what a selection checkpoint saved before the tune_rng option did


@dataclass(frozen=True)
class Schedule:
    proj_intv: int
    lr: float
    lr_schedule: str
    reset_arch_optimizer: bool
    sdarts_epsilon: float
    seed: int
    tune_rng: str = "continue"

    @classmethod
    def from_options(cls, method: str, opts: dict[str, Any], run: "SearchRun") -> "Schedule":
        lr = positive_float(method, "lr", opts["lr"], allow_none=True)
        return cls(proj_intv=positive_int(method, "proj_intv", opts["proj_intv"]),
                   lr=run.config.w_lr / 10 if lr is None else lr, lr_schedule=opts["lr_schedule"],
                   reset_arch_optimizer=bool(opts["reset_arch_optimizer"]),
                   sdarts_epsilon=positive_float(method, "sdarts_epsilon", opts["sdarts_epsilon"]),
                   seed=seed_option(method, opts["seed"], run.config.seed), tune_rng=opts["tune_rng"])


@dataclass(frozen=True)
class Plan:
    tune_epochs: int
    steps: dict[int, str]  # tune epoch -> "op" | "topology"

    @property
    def decision_epochs(self) -> list[int]:
        return sorted(self.steps)


def topology_nodes(space: Space) -> list[int]:
    """Nodes that keep two of more than two inputs (DARTS spaces: 3, 4, 5); none for NB201."""
    if space.family != "darts":
        return []
    return [n for n, edges in NODE_EDGES.items() if len(edges) > 2]


def make_plan(space: Space, proj_intv: int) -> Plan:
    n_edges = next(iter(space.cells.values())).num_edges
    n_topo = len(topology_nodes(space))
    p = proj_intv
    if space.family == "darts":
        n_steps = n_edges + n_topo
        tune = p * (n_steps - 1) + 1
        epochs = [k * p for k in range(n_steps)]
    elif p >= 2:
        tune = p * (n_edges - 1)
        epochs = [k * p for k in range(n_edges - 1)] + [tune - 1]
    else:
        tune, epochs = n_edges, list(range(n_edges))
    return Plan(tune, {ep: ("op" if i < n_edges else "topology") for i, ep in enumerate(epochs)})


class Decider(Protocol):
    """What a progressive method decides; the driver applies it to ``ArchState`` and checkpoints."""

    forward_passes: int

    def op(self, ct: str, edge: int) -> tuple[int, dict[str, Any]]:
        """The op index to keep on ``edge`` and a JSON record of the numbers behind it."""

    def topology(self, ct: str, node: int, edges: list[int]) -> tuple[list[int], dict[str, Any]]:
        """The input edges of ``node`` to remove and a JSON record."""


@dataclass
class ProgressiveResult:
    decisions: list[dict[str, Any]]
    tune_epochs: int
    forward_passes: int
    seconds: float
    tune_w_steps: int
    tune_arch_steps: int


def _orders(run: "SearchRun", seed: int) -> dict[str, dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed + ORDER_SEED)
    arch = run.model.arch
    out = {}
    for ct in arch.cell_types:
        undecided = arch.undecided_edges(ct)
        edges = [undecided[i] for i in torch.randperm(len(undecided), generator=g).tolist()]
        nodes = topology_nodes(run.space)
        nodes = [nodes[i] for i in torch.randperm(len(nodes), generator=g).tolist()]
        out[ct] = {"edges": edges, "nodes": nodes}
    return out


# A progressive selection's checkpoint (selections/<method>.ckpt.pt), besides the method and rng that
# SelectionContext adds; checked on --resume before anything is restored or written. All are required but
# ``search`` (the run's settings), which older checkpoints lack: they still resume.
STATE_FIELDS: dict[str, Any] = {
    "fingerprint": dict, "search": dict, "searcher": dict, "orders": dict[str, dict[str, list[int]]],
    "decisions": list[dict], "tune_log": list[dict], "next_epoch": int, "next_unit": int, "seconds": float,
    "forward_passes": int}
STATE_REQUIRED = tuple(k for k in STATE_FIELDS if k != "search")


def _continue_search(searcher: Any, run_dir: Path | None, arch_optimizer: bool, rng: bool) -> None:
    """Continue the search's α optimiser (its Adam state in RUN/checkpoint.pt) and/or its random stream (the
    searcher's generator: SPOS paths, SDARTS noise), when there is a checkpoint. Without one (a supernet
    searched in memory) the generator gets a stream of its own instead of restarting the search's."""
    path = None if run_dir is None else run_dir / CHECKPOINT
    if path is None or not path.exists():
        if rng:
            searcher.generator.manual_seed(derive_seed(searcher.config.seed, TUNE_STREAM))
        return
    if not (arch_optimizer or rng):
        return
    keys = (("a_opt",) if arch_optimizer else ()) + (("generator",) if rng else ())
    saved = check_fields(load_checkpoint(run_dir)["searcher"], {"a_opt": dict, "generator": torch.Tensor}, path,
                         prefix="searcher.", required=keys)
    with fitting(path, does_not_fit(f"the supernet of {run_dir / CONFIG}")):
        if arch_optimizer:
            searcher.a_opt.load_state_dict(saved["a_opt"])
    if rng:
        with fitting(path, "searcher.generator is not a torch generator state"):
            searcher.generator.set_state(saved["generator"])


def run_progressive(run: "SearchRun", ctx: "SelectionContext", decider_factory: Callable[[], Decider],
                    schedule: Schedule, fingerprint: dict[str, Any] | None = None) -> ProgressiveResult:
    """Decide edges (and DARTS topology) one at a time with fine-tuning in between; resumable.

    ``fingerprint``: the method options that shape the result besides ``schedule``; a resume with
    other values is refused.
    """
    sch = schedule
    plan = make_plan(run.space, sch.proj_intv)
    base = run.config
    options = dict(base.options)
    if "sdarts" in base.mode:
        options["sdarts_epsilon"] = sch.sdarts_epsilon  # DARTS-PT tunes SDARTS-RS supernets with ε = 0.3
    # Data epochs continue after the search's, so tuning sees fresh batch orders (darts-pt's loaders keep drawing).
    cfg = dataclasses.replace(base, w_lr=sch.lr, epochs=base.epochs + plan.tune_epochs, options=options)
    searcher = run.searcher(cfg, quiet=ctx.quiet)
    # The search's ramps (DARTS-PRIME's t/T proximity weight) ended at 1; the longer cfg is only for data
    # epochs and must not restart them at base.epochs / (base.epochs + tune_epochs).
    searcher.ramp_epochs = base.epochs
    arch = run.model.arch
    decider = decider_factory()

    log_name = f"selections/{ctx.method}.tune.jsonl"  # one line per tune epoch, next to the selection
    fingerprint = {**(fingerprint or {}), **dataclasses.asdict(sch)}
    search = run.config.to_json()  # which run a checkpoint belongs to
    cell_types = list(arch.cell_types)

    def restore(state: dict[str, Any]) -> None:
        """A checkpoint of this method on this run with these options, that fits the supernet: restored."""
        path = ctx.checkpoint
        saved = state["fingerprint"]
        legacy = "tune_rng" not in saved  # saved before the option: its tuning restarted the search's stream
        if legacy:
            saved = {**saved, "tune_rng": LEGACY_TUNE_RNG}
        if saved != fingerprint:
            changed = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
            hint = (f" (it was started before the tune_rng option, so with tune_rng={LEGACY_TUNE_RNG}: resume it "
                    f"with --option tune_rng={LEGACY_TUNE_RNG})" if legacy and "tune_rng" in changed else "")
            raise DnasError(f"{ctx.method}: --resume with different options than the interrupted selection "
                            f"({path}): {', '.join(changed)}{hint}")
        other = changed_settings(state.get("search", search), search)
        if other:
            raise DnasError(f"{path}: the interrupted selection of another search run (its settings differ from "
                            f"{CONFIG}'s: {', '.join(other)})")
        check_fields(state["orders"], {ct: dict[str, list[int]] for ct in cell_types}, path, prefix="orders.",
                     required=tuple(cell_types))
        for key, last in (("next_epoch", plan.tune_epochs), ("next_unit", len(cell_types))):
            if not 0 <= state[key] <= last:
                raise DnasError(f"{path}: {key} must be between 0 and {last}, got {state[key]}")
        load_searcher_state(searcher.load_state_dict, state, path, ctx.run_dir / CONFIG)

    state = ctx.load_state(STATE_FIELDS, STATE_REQUIRED, restore)
    if state is not None:
        orders, decisions, tune_log = state["orders"], state["decisions"], state["tune_log"]
        start_epoch, start_unit = state["next_epoch"], state["next_unit"]
        elapsed, decider.forward_passes = state["seconds"], state["forward_passes"]
    else:
        _continue_search(searcher, ctx.run_dir, arch_optimizer=not sch.reset_arch_optimizer,
                         rng=sch.tune_rng == "continue")
        orders, decisions, tune_log = _orders(run, sch.seed), [], []
        start_epoch, start_unit, elapsed = 0, 0, 0.0
    # A resumed log is cut once the state is loaded (a refused checkpoint leaves it as it was). A new selection
    # (--force) replaces the old one's log and checkpoint only at its first save, after its first decision: a
    # start that fails (out of memory, a search checkpoint without its α optimiser) or is interrupted keeps them.
    old_log = state is None
    if ctx.run_dir is not None:
        (ctx.run_dir / "selections").mkdir(parents=True, exist_ok=True)
        if not old_log:
            truncate_metrics(ctx.run_dir, start_epoch, name=log_name)
    t0 = time.time()

    drop_old_log = BeforeFirstWrite(lambda: truncate_metrics(ctx.run_dir, 0, name=log_name),
                                    pending=old_log and ctx.run_dir is not None)

    def save(next_epoch: int, next_unit: int) -> None:
        ctx.save_state({"fingerprint": fingerprint, "search": search, "searcher": searcher.state_dict(),
                        "orders": orders, "decisions": decisions,
                        "tune_log": tune_log, "next_epoch": next_epoch, "next_unit": next_unit,
                        "seconds": elapsed + time.time() - t0, "forward_passes": decider.forward_passes})
        drop_old_log()  # after the new checkpoint: a kill in between resumes it and cuts the log to its epoch

    bar = tqdm(range(start_epoch, plan.tune_epochs), total=plan.tune_epochs, initial=start_epoch,
               desc=f"{ctx.method} decisions+tuning", disable=ctx.quiet)
    for epoch in bar:
        step = plan.steps.get(epoch)
        first_unit = start_unit if epoch == start_epoch else 0
        for u in range(first_unit, len(cell_types) if step else 0):
            ct = cell_types[u]
            done = sum(1 for d in decisions if d["cell_type"] == ct and d["kind"] == step)
            if step == "op":
                if done >= len(orders[ct]["edges"]):
                    continue
                edge = orders[ct]["edges"][done]
                op, detail = decider.op(ct, edge)
                arch.fix_edge(ct, edge, op)
                record = {"kind": "op", "cell_type": ct, "epoch": epoch, "edge": edge,
                          "chosen": run.space.cells[ct].ops[edge][op], "chosen_index": op, **detail}
            else:
                node = orders[ct]["nodes"][done]
                edges = list(NODE_EDGES[node])
                removed, detail = decider.topology(ct, node, edges)
                for e in removed:
                    arch.remove_edge(ct, e)
                record = {"kind": "topology", "cell_type": ct, "epoch": epoch, "node": node,
                          "kept": [e for e in edges if e not in removed], "removed": removed, **detail}
            decisions.append(record)
            save(epoch, u + 1)
        lr_now = cosine_lr(epoch, plan.tune_epochs, sch.lr, base.w_lr_min) if sch.lr_schedule == "cosine" else sch.lr
        m = searcher.train_epoch(base.epochs + epoch, lr=lr_now, desc=f"{ctx.method} tune")
        tune_log.append({"epoch": epoch, "lr": lr_now, "train_loss": m["train_loss"], "train_acc": m["train_acc"],
                         "decisions": len(decisions)})
        if ctx.run_dir is not None:
            drop_old_log()
            log_metrics(ctx.run_dir, tune_log[-1], name=log_name)
            tb_log(ctx.run_dir, tune_log[-1], base.epochs + epoch, f"select_{ctx.method}")
        bar.set_postfix(decisions=len(decisions), train_acc=f"{m['train_acc']:.3f}")
        save(epoch + 1, 0)
    bar.close()
    return ProgressiveResult(decisions, plan.tune_epochs, decider.forward_passes, elapsed + time.time() - t0,
                             searcher.step, searcher.arch_steps)
