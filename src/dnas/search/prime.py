"""DARTS-PRIME (method spec §8.1; code k8lion/DARTS-PRIME ``train_scheduled_hard_statebn.py``).

- Dynamic informed schedule: after each w backward (before clipping) FI = Σ‖∂L/∂w‖², smoothed by an
  EWMA (0.2). At the start of each mini-batch an α step happens when 0 < FI_ewma < thr, and then
  thr ← thr·1.05^(−schedfreq); otherwise thr ← thr·1.05. thr starts at 1. Without ``prime_dynamic``
  an α step happens every ``schedfreq`` w steps, before the k-th, 2k-th, ... one (the code's
  ``(step + 1) % schedfreq == 0``; counted over the run, while the code restarts the count each epoch,
  which differs only when an epoch's batch count is not a multiple of schedfreq).
- Dynamic split: w trains on 1 − 1/(1+schedfreq) of the training set (10/11), α on the rest.
- Proximity: the α loss gains (t/T)·(ρ/2)·‖act(α) − D(act(α))‖_F per cell type, t/T the fractional
  epoch over the total, D the space's standard discretisation as a detached 0/1 mask (DARTS: best
  non-``none`` op per edge, top-2 edges per node; NB201: argmax per edge). ρ = 0.1.
- ADMM (kept from the first version): the α loss gains (ρ/2)·‖(act(α) − Z + U)⊙mask‖_F; every
  ``admm_freq`` α steps Z ← D(act(α) + U), U ← (U + act(α) − Z)⊙mask. Written in activation space (the
  scaled-dual ADMM form); for ``crb``, the code's activation, it is the code's update. Z starts at act(α),
  U at 0. The code's counter fires every admm_freq − 1 α steps (``(counter + 1) % freq``); we use admm_freq.
- Selector fine-tuning (DARTS-PT / progressive OStr tune a PRIME supernet with the search's own recipe, so
  both regularisers keep running between decisions). DARTS-PT's α step during tuning is "as in search"
  (method notes §1.1) and the notes say nothing about regularisers on PRIME supernets, so the reading
  is ours: with ``prime_target=projected`` (default) act(α) and D(·) are taken on the *current*
  architecture, ``ArchState.base_weights`` (a fixed edge one-hot, removed edges/ops zero, the same
  matrix the magnitude rule and the final genotype parse read), and the penalty covers only the
  undecided edges: a decided edge's α no longer reaches the network, so pulling it toward the argmax of
  its stale α (which may not be the op the selector kept) is meaningless, and through the non-squared
  Frobenius norm it would also rescale the pull on the live edges. With no decisions (the search
  itself) this is exactly the raw form. ``prime_target=raw`` keeps act(α) of every edge, decisions
  ignored (the behaviour before this option).
- ``crb`` activation: ops whose α drops to <= 0 are masked for good (``CrbPrune``), with any mode.
- Search network (DARTS spaces): the code's cell normalises every intermediate node's sum with a
  non-affine BN, whatever the activation (``model_admm_hard_statebn.py``; the method notes list it under
  ``--crb`` only, the code has it unconditionally). ``node_bn`` (a SearchConfig field, default on for this
  mode on the DARTS spaces, ``--no-node-bn`` to drop it) builds it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..spaces import Space
from .config import SearchConfig
from .modes import Mode, register_mode
from .pieces import ArchSchedule, FirstOrder, Regulariser
from .trainer import Recipe
from .variants import activation_pieces, opt_bool, opt_choice, opt_float, opt_int

if TYPE_CHECKING:
    from .trainer import Searcher

REGS = ("prox", "admm", "none")
TARGETS = ("projected", "raw")


def current_acts(arch: Any, target: str = "projected") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(act per cell type, 0/1 column of rows the penalty covers) for ``prime_target`` (module docstring).

    ``projected``: ``base_weights`` (fixed edges one-hot, masks applied), rows = the undecided edges.
    ``raw``: act(α) of every edge, every row."""
    acts, rows = {}, {}
    for ct in arch.cell_types:
        if target == "raw":
            acts[ct] = arch.activated(ct)
            rows[ct] = torch.ones_like(acts[ct][:, :1])
        else:
            acts[ct] = arch.base_weights(ct)
            rows[ct] = (arch.fixed(ct) < 0).to(acts[ct]).unsqueeze(1)
    return acts, rows


class PrimeSchedule(ArchSchedule):
    """When to step α: the FI threshold rule (``dynamic``) or every ``schedfreq`` w steps."""

    name = "prime"

    def __init__(self, schedfreq: float = 10.0, dynamic: bool = True, ewma: float = 0.2, threshold: float = 1.0,
                 multiplier: float = 1.05):
        self.schedfreq, self.dynamic, self.ewma_weight = schedfreq, dynamic, ewma
        self.multiplier = multiplier
        self.divider = multiplier ** (-schedfreq)
        self.needs_fisher = dynamic
        self.threshold = threshold
        self.fi_ewma = -1.0  # the code's "no FI yet" value: fails the 0 < FI_ewma test

    def observe_fisher(self, fi: float) -> None:
        self.fi_ewma = fi if self.fi_ewma == -1.0 else self.ewma_weight * fi + (1 - self.ewma_weight) * self.fi_ewma

    def decide(self, step: int) -> bool:
        """One decision at the start of a mini-batch; ``step`` = w steps done so far."""
        if not self.dynamic:
            return (step + 1) % int(self.schedfreq) == 0
        if 0.0 < self.fi_ewma < self.threshold:
            self.threshold *= self.divider
            return True
        self.threshold *= self.multiplier
        return False

    def should_step(self, s: "Searcher") -> bool:
        return self.decide(s.step)

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "fi_ewma": self.fi_ewma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state.get("threshold", self.threshold)
        self.fi_ewma = state.get("fi_ewma", self.fi_ewma)


def discretization_mask(space: Space, acts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """D(·): the space's standard discretisation of these scores as a 0/1 matrix per cell type (no grad)."""
    genotype = space.discretize({ct: a.detach().float().cpu() for ct, a in acts.items()})
    masks = space.genotype_mask(genotype)
    return {ct: masks[ct].to(device=a.device, dtype=a.dtype) for ct, a in acts.items()}


class Proximity(Regulariser):
    """(t/T)·(ρ/2)·Σ_cell types ‖act(α) − D(act(α))‖_F (Frobenius norm, not squared)."""

    name = "prox"

    def __init__(self, rho: float = 0.1, target: str = "projected"):
        self.rho, self.target = rho, target

    def term(self, arch: Any) -> torch.Tensor:
        """Σ ‖act(α) − D(act(α))‖_F without the ramp (on the undecided rows of the current architecture
        unless ``target="raw"``; see the module docstring)."""
        acts, rows = current_acts(arch, self.target)
        d = discretization_mask(arch.space, acts)
        return sum(torch.linalg.norm((acts[ct] - d[ct]) * rows[ct]) for ct in acts)

    def loss(self, s: "Searcher") -> torch.Tensor:
        return s.progress * self.rho / 2 * self.term(s.model.arch)


class Admm(Regulariser):
    """ADMM toward a discrete architecture: a penalty on act(α) − Z + U, with Z, U updated every ``freq`` α steps."""

    name = "admm"

    def __init__(self, rho: float = 0.1, freq: int = 10, target: str = "projected"):
        self.rho, self.freq, self.target = rho, freq, target
        self.z: dict[str, torch.Tensor] | None = None
        self.u: dict[str, torch.Tensor] | None = None
        self.count = 0

    def _start(self, arch: Any) -> None:
        if self.z is None or self.u is None:
            self.z = {ct: arch.activated(ct).detach().clone() for ct in arch.cell_types}
            self.u = {ct: torch.zeros_like(z) for ct, z in self.z.items()}

    def loss(self, s: "Searcher") -> torch.Tensor:
        arch = s.model.arch
        self._start(arch)
        assert self.z is not None and self.u is not None
        total = 0.0
        acts, rows = current_acts(arch, self.target)
        for ct in arch.cell_types:
            a = acts[ct]
            total = total + torch.linalg.norm((a - self.z[ct].to(a) + self.u[ct].to(a)) * arch.mask(ct) * rows[ct])
        return self.rho / 2 * total

    @torch.no_grad()
    def after_arch_step(self, s: "Searcher") -> None:
        arch = s.model.arch
        self._start(arch)
        self.count += 1
        if self.count % self.freq == 0:
            self.update(arch)

    @torch.no_grad()
    def update(self, arch: Any) -> None:
        assert self.z is not None and self.u is not None
        acts, rows = current_acts(arch, self.target)
        acts = {ct: a.detach() for ct, a in acts.items()}
        self.z = discretization_mask(arch.space, {ct: acts[ct] + self.u[ct].to(acts[ct]) for ct in acts})
        self.u = {ct: (self.u[ct].to(acts[ct]) + acts[ct] - self.z[ct]) * arch.mask(ct) * rows[ct] for ct in acts}

    def state_dict(self) -> dict[str, Any]:
        return {"z": self.z, "u": self.u, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.z, self.u, self.count = state.get("z"), state.get("u"), state.get("count", 0)


def prime_schedfreq(options: Mapping[str, Any]) -> float:
    return opt_float(options, "schedfreq", 10.0, lo=1.0)


def configure_prime(config: SearchConfig) -> None:
    """Dynamic split (option ``prime_split``, on by default): train_portion = 1 − 1/(1 + schedfreq).

    Also checks every option now, before a run directory is created.
    """
    if opt_bool(config.options, "prime_split", True):
        config.train_portion = 1.0 - 1.0 / (1.0 + prime_schedfreq(config.options))
    build_prime(config)


def build_prime(config: SearchConfig) -> Recipe:
    o = config.options
    freq = prime_schedfreq(o)
    dynamic = opt_bool(o, "prime_dynamic", True)
    if not dynamic:
        freq = float(opt_int(o, "schedfreq", 10))  # an α step every k w steps needs a whole k
    schedule = PrimeSchedule(freq, dynamic, ewma=opt_float(o, "ewma", 0.2, lo=0.0, hi=1.0),
                             threshold=opt_float(o, "threshold", 1.0, positive=True))
    reg = opt_choice(o, "reg", "prox", REGS)
    rho = opt_float(o, "rho", 0.1, lo=0.0)
    target = opt_choice(o, "prime_target", "projected", TARGETS)
    regs: list[Regulariser] = []
    if reg == "prox":
        regs.append(Proximity(rho, target))
    elif reg == "admm":
        regs.append(Admm(rho, opt_int(o, "admm_freq", 10), target))
    return Recipe(FirstOrder(), schedule, regularisers=regs + activation_pieces(config))


register_mode(Mode("prime", build_prime,
                   "DARTS-PRIME: α steps on a Fisher-information schedule, proximity (or ADMM) regulariser, "
                   "10/11 dynamic split (options schedfreq, prime_dynamic, prime_split, reg, rho, admm_freq, ewma, "
                   "threshold, prime_target); on the DARTS spaces a BN on every node (node_bn)", configure=configure_prime,
                   family_defaults={"darts": {"node_bn": True}}))
