"""Supernet training variants: SDARTS-RS, SPOS and (in ``prime.py``) DARTS-PRIME.

Each is a ``--mode`` built from the pieces of ``pieces.py``; their options come from
``SearchConfig.options`` (CLI ``--option KEY=VALUE``). All randomness comes from the Searcher's own
generator, which the checkpoint saves, so every mode resumes exactly.

Readings of the papers' code (method spec §0.4, §2.1, §8.1):

- SDARTS-RS (darts-pt ``Random_alpha`` + ``Network.clip``): before each w step the *mixing weights*
  (softmax(α), not α) get U(−ε, ε) noise per entry; each row is clamped to [0, 1] and divided by its
  sum (a row clamped to all zeros keeps a 1 at its largest noisy entry). ε = ε_min + (ε_max − ε_min)·e/E
  for epoch e of E (0.03 → 0.3), or a fixed ``sdarts_epsilon`` (darts-pt uses 0.3 while fine-tuning
  for DARTS-PT). Only undecided edges are perturbed and only on their live (unmasked) ops, so edges a
  selector fixed stay one-hot and removed ops stay 0 (darts-pt's projected network overwrites decided
  edges after the noise the same way). With ``sigmoid``/``crb`` activations the rows are clamped to
  [0, 1] but not renormalised, since those activations do not sum to 1.
- SPOS (the weight-sharing analysis paper's NNI trainer): per mini-batch one architecture is drawn
  uniformly from the space, and the w step sees its 0/1 genotype mask, so the mixed ops compute only
  that path. NB201: one op per edge, ``none`` included (it is an NB201 op). DARTS spaces: a uniform
  DARTS genotype, i.e. per node 2 distinct inputs uniformly and a uniform non-``none`` op on each (as
  NNI's InputChoice(n_chosen=2) + LayerChoice). ``spos_archs`` restricts the draw to a list.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..errors import DnasError
from ..spaces import Genotype, Space, get_space
from ..spaces.darts import NODE_EDGES
from ..supernet import ArchState
from .config import SearchConfig
from .modes import Mode, get_mode, register_mode
from .pieces import EveryStep, FirstOrder, Never, NoArchUpdate, Regulariser, WeightOverride
from .trainer import Recipe

if TYPE_CHECKING:
    from .trainer import Searcher


# -- option parsing ------------------------------------------------------------------------------------
def opt_float(options: Mapping[str, Any], key: str, default: float, *, lo: float | None = None,
              hi: float | None = None, positive: bool = False) -> float:
    v = options.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DnasError(f"--option {key}: expected a number, got {v!r}")
    if positive and not v > 0:
        raise DnasError(f"--option {key}: must be > 0, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise DnasError(f"--option {key}: must lie in [{lo if lo is not None else '-inf'}, "
                        f"{hi if hi is not None else 'inf'}], got {v!r}")
    return float(v)


def opt_int(options: Mapping[str, Any], key: str, default: int, *, lo: int = 1) -> int:
    v = options.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise DnasError(f"--option {key}: expected an integer, got {v!r}")
    if v < lo:
        raise DnasError(f"--option {key}: must be >= {lo}, got {v!r}")
    return int(v)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def opt_bool(options: Mapping[str, Any], key: str, default: bool) -> bool:
    v = options.get(key, default)
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in _TRUE + _FALSE:
        return v.lower() in _TRUE
    raise DnasError(f"--option {key}: expected true or false, got {v!r}")


def opt_choice(options: Mapping[str, Any], key: str, default: str, choices: Sequence[str]) -> str:
    v = options.get(key, default)
    if v not in choices:
        raise DnasError(f"--option {key}: expected one of {', '.join(choices)}, got {v!r}")
    return str(v)


# -- CRB pruning (any mode that trains α with the crb activation) -------------------------------------------
class CrbPrune(Regulariser):
    """DARTS-PRIME's ``crb`` rule: after each α step, an op whose α <= 0 is removed for good.

    Its α is also pinned to 0 (the code's ``param.mul_(mask)``) so Adam's momentum or weight decay cannot
    bring a removed op back into what regularisers and selectors read.
    """

    name = "crb-prune"

    @torch.no_grad()
    def after_arch_step(self, s: "Searcher") -> None:
        prune_nonpositive(s.model.arch)


@torch.no_grad()
def prune_nonpositive(arch: ArchState) -> int:
    """Mask every live op with α <= 0 on undecided edges and zero α on masked ops; returns how many ops
    were removed. A fixed edge (a selector's decision) keeps its op: its α gets no loss gradient any more
    and Adam's weight decay alone would walk it below 0 while fine-tuning goes on."""
    removed = 0
    for ct in arch.cell_types:
        alpha, mask = arch.alphas[ct], arch.mask(ct)
        dead = (alpha <= 0) & (mask > 0) & (arch.fixed(ct) < 0).unsqueeze(1)
        removed += int(dead.sum())
        mask[dead] = 0.0
        alpha.mul_(mask)
    return removed


def activation_pieces(config: SearchConfig) -> list[Regulariser]:
    """Pieces an activation needs in every α-training mode (``crb``: permanent pruning, option ``crb_prune``)."""
    if config.activation == "crb" and opt_bool(config.options, "crb_prune", True):
        return [CrbPrune()]
    return []


# -- SDARTS-RS ------------------------------------------------------------------------------------------
def uniform_noise(shape: Sequence[int], eps: float, generator: torch.Generator) -> torch.Tensor:
    """U(−ε, ε) entries drawn on the CPU from ``generator`` (device-independent, resumable)."""
    return torch.empty(tuple(shape), dtype=torch.float32).uniform_(-eps, eps, generator=generator)


def perturb_weights(base: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, fixed: torch.Tensor,
                    renormalise: bool = True) -> torch.Tensor:
    """darts-pt's ``Random_alpha`` + ``clip`` on the undecided, live part of one mixing-weight matrix."""
    noisy = base + noise.to(base)
    live = mask > 0
    w = noisy.clamp(0.0, 1.0) * mask
    if renormalise:
        sums = w.sum(1, keepdim=True)
        # a row clamped to all zeros keeps its strongest live op (darts-pt: line[argmax] = 1)
        best = noisy.masked_fill(~live, float("-inf")).argmax(1, keepdim=True)
        empty = (sums == 0) & live.any(1, keepdim=True)
        w = torch.where(empty, torch.zeros_like(w).scatter_(1, best, 1.0), w)
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    perturb = ((fixed < 0) & live.any(1)).unsqueeze(1)
    return torch.where(perturb, w, base)


class SdartsNoise(WeightOverride):
    """SDARTS-RS: the w step sees act(α) + U(−ε, ε), clipped (and renormalised for softmax)."""

    name = "sdarts-rs"

    def __init__(self, eps_min: float = 0.03, eps_max: float = 0.3, epsilon: float | None = None):
        self.eps_min, self.eps_max, self.fixed_epsilon = eps_min, eps_max, epsilon

    def epsilon(self, s: "Searcher") -> float:
        if self.fixed_epsilon is not None:
            return self.fixed_epsilon
        # s.epoch = epochs completed = the epoch being trained (darts-pt steps ε once per epoch); capped at
        # ε_max for training that continues past the search's epochs
        return self.eps_min + (self.eps_max - self.eps_min) * min(1.0, s.epoch / max(1, s.total_epochs))

    @torch.no_grad()
    def weights(self, s: "Searcher") -> dict[str, torch.Tensor]:
        arch = s.model.arch
        eps = self.epsilon(s)
        out = {}
        for ct in arch.cell_types:
            base = arch.base_weights(ct).detach()
            noise = uniform_noise(base.shape, eps, s.generator)
            out[ct] = perturb_weights(base, noise, arch.mask(ct), arch.fixed(ct), arch.activation == "softmax")
        return out


def sdarts_override(config: SearchConfig) -> SdartsNoise:
    """The SDARTS-RS piece from ``config.options`` (also for DARTS-PT fine-tuning: set ``sdarts_epsilon``)."""
    if config.activation not in ("softmax", "sigmoid", "crb"):
        raise DnasError(f"sdarts-rs needs mixing weights in [0, 1] (softmax, sigmoid or crb), not {config.activation}")
    o = config.options
    lo = opt_float(o, "sdarts_eps_min", 0.03, lo=0.0)
    hi = opt_float(o, "sdarts_eps_max", 0.3, lo=0.0)
    fixed = opt_float(o, "sdarts_epsilon", 0.0, lo=0.0) if "sdarts_epsilon" in o else None
    return SdartsNoise(lo, hi, fixed)


def build_sdarts(config: SearchConfig) -> Recipe:
    return Recipe(FirstOrder(), EveryStep(), sdarts_override(config), activation_pieces(config))


# -- SPOS -----------------------------------------------------------------------------------------------
def _pick(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def sample_path(arch: ArchState, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One uniformly drawn architecture as 0/1 mixing weights (CPU), respecting masks and fixed edges.

    NB201: one live op per edge (``none`` included). DARTS spaces: per node 2 distinct inputs among the
    edges with a live op, then one live non-``none`` op on each chosen edge; unchosen edges are 0.
    """
    space = arch.space
    out = {}
    for ct, spec in space.cells.items():
        mask, fixed = arch.mask(ct).detach().cpu(), arch.fixed(ct).detach().cpu()
        allowed = mask > 0
        if space.family != "nb201":
            for e, names in enumerate(spec.ops):
                for k, name in enumerate(names):
                    if name == "none":
                        allowed[e, k] = False
        usable = [bool(allowed[e].any()) or int(fixed[e]) >= 0 for e in range(spec.num_edges)]
        if space.family == "nb201":
            edges = [e for e in range(spec.num_edges) if usable[e]]
        else:
            edges = []
            for node_edges in NODE_EDGES.values():
                cand = [e for e in node_edges if usable[e]]
                order = torch.randperm(len(cand), generator=generator)[:2].tolist()
                edges.extend(cand[i] for i in sorted(order))
        w = torch.zeros(spec.num_edges, spec.num_ops)
        for e in edges:
            if int(fixed[e]) >= 0:
                w[e, int(fixed[e])] = 1.0
            else:
                ks = allowed[e].nonzero().flatten().tolist()
                w[e, ks[_pick(len(ks), generator)]] = 1.0
        out[ct] = w
    return out


class SposSampler(WeightOverride):
    """Single-path one-shot: each w step trains one uniformly drawn architecture (only its ops run)."""

    name = "spos"

    def __init__(self, space: Space, archs: Sequence[Genotype] | None = None):
        self.space = space
        self.archs = list(archs) if archs else None
        self._masks = [space.genotype_mask(g) for g in self.archs] if self.archs else None

    @torch.no_grad()
    def weights(self, s: "Searcher") -> dict[str, torch.Tensor]:
        arch = s.model.arch
        if self._masks is not None:
            chosen = self._masks[_pick(len(self._masks), s.generator)]
        else:
            chosen = sample_path(arch, s.generator)
        device = arch.alphas[arch.cell_types[0]].device
        return {ct: w.to(device) for ct, w in chosen.items()}


def load_arch_list(space: Space, path: str | Path) -> list[Genotype]:
    """Genotypes from a text file (one per line; blank lines and ``#`` comments skipped) or a JSON list."""
    p = Path(path)
    if not p.is_file():
        raise DnasError(f"--option spos_archs: no such file {str(p)!r}")
    text = p.read_text()
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DnasError(f"{p}: invalid JSON list ({e.msg})") from None
        archs = [space.from_json(x) for x in items]
    else:
        archs = [space.parse(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not archs:
        raise DnasError(f"{p}: no architectures listed")
    return archs


def build_spos(config: SearchConfig) -> Recipe:
    space = get_space(config.space)
    path = config.options.get("spos_archs")
    archs = load_arch_list(space, path) if path else None
    return Recipe(NoArchUpdate(), Never(), SposSampler(space, archs))


# -- registration -----------------------------------------------------------------------------------------
# The weight-sharing analysis paper's configs (configs/nb201.py, configs/darts.py) with its README's
# training commands on top (``--grad_clip 5 --epochs 1000``; the configs alone say 0 and 200 / 600 epochs);
# its trainer steps the cosine schedule after every mini-batch. DARTS spaces: the config's 20-cell, C=36
# supernet (its auxiliary head, cutout and drop-path are not part of dnas's supernets).
SPOS_DEFAULTS = {"epochs": 1000, "batch_size": 256, "w_lr": 0.1, "w_lr_min": 0.0, "w_momentum": 0.9,
                 "w_nesterov": True, "w_wd": 5e-4, "grad_clip": 5.0, "train_portion": 0.5, "lr_per_step": True}
SPOS_DARTS_DEFAULTS = {"batch_size": 128, "w_lr": 0.025, "w_nesterov": False, "w_wd": 3e-4, "channels": 36,
                       "cells": 20}

def check_options(config: SearchConfig) -> None:
    """Mode ``configure`` hook: build the recipe once so a bad option fails before a run directory exists."""
    get_mode(config.mode).build(config)


register_mode(Mode("sdarts-rs", build_sdarts,
                   "SDARTS-RS: DARTS first order, w steps on softmax(α) + U(−ε, ε), ε 0.03 → 0.3 (options "
                   "sdarts_eps_min, sdarts_eps_max, sdarts_epsilon)", configure=check_options))
register_mode(Mode("spos", build_spos,
                   "SPOS uniform single-path supernet (weight-sharing analysis paper): one uniformly drawn "
                   "architecture per mini-batch, no α steps (option spos_archs=FILE restricts the draw)",
                   defaults=dict(SPOS_DEFAULTS), family_defaults={"darts": dict(SPOS_DARTS_DEFAULTS)},
                   trains_alpha=False, configure=check_options))

from . import prime  # noqa: E402,F401  (registers --mode prime)
