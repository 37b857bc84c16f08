"""The bilevel search loop: per mini-batch an α step on a valid batch (when the schedule says so),
then a w step on a train batch. One loop for every mode; the mode only picks the pieces."""
from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checks import all_finite
from ..data import BatchLoader
from ..errors import DnasError
from ..supernet import weight_parameters
from .config import SearchConfig
from .pieces import ArchSchedule, ArchUpdate, Batch, Regulariser, WeightOverride


@dataclass
class Recipe:
    """One piece per slot (see ``pieces.py``)."""

    arch_update: ArchUpdate
    schedule: ArchSchedule
    override: WeightOverride = field(default_factory=WeightOverride)
    regularisers: list[Regulariser] = field(default_factory=list)

    def pieces(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arch_update": self.arch_update, "schedule": self.schedule, "override": self.override}
        out.update({f"reg{i}": r for i, r in enumerate(self.regularisers)})
        return out


def cosine_lr(t: int, total: int, lr: float, lr_min: float) -> float:
    """CosineAnnealingLR after ``t`` of ``total`` steps: epochs (the DARTS code) or mini-batches (SPOS's)."""
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / total)) / 2


class Searcher:
    """Trains a supernet's w and α. Owns the optimisers; stateless apart from ``state_dict``."""

    def __init__(self, model: nn.Module, config: SearchConfig, recipe: Recipe, train: BatchLoader,
                 valid: BatchLoader, device: torch.device, quiet: bool = False):
        self.model, self.config, self.recipe = model, config, recipe
        self.train_loader, self.valid_loader = train, valid
        self.device, self.quiet = device, quiet
        self.w_params = weight_parameters(model)
        self.a_params = list(model.arch.parameters())
        self.w_opt = torch.optim.SGD(self.w_params, lr=config.w_lr, momentum=config.w_momentum,
                                     nesterov=config.w_nesterov, weight_decay=config.w_wd)
        self.a_opt = torch.optim.Adam(self.a_params, lr=config.arch_lr, betas=config.arch_betas,
                                      weight_decay=config.arch_wd)
        self.generator = torch.Generator().manual_seed(config.seed + 7919)  # SPOS samples, SDARTS noise
        self.epoch = 0           # epochs completed
        self.total_epochs = config.epochs
        self.step = 0            # w steps done, over the whole run
        self.arch_steps = 0
        self.current_lr = config.w_lr
        self.progress = 0.0      # fractional epoch / total epochs, for schedules that ramp
        # Epochs the ramp spans: the search's own. A selector that fine-tunes with a longer config (more data
        # epochs) sets it to the search's epoch count, so the ramp stays at its end value (1) while tuning.
        self.ramp_epochs = config.epochs

    # -- losses ------------------------------------------------------------------------------------
    def w_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.model(x), y)
        for reg in self.recipe.regularisers:
            extra = reg.loss(self)
            if extra is not None:
                loss = loss + extra
        return loss

    # -- steps -------------------------------------------------------------------------------------
    def arch_step(self, train_batch: Batch, valid_batch: Batch) -> float:
        self.a_opt.zero_grad(set_to_none=True)
        self.w_opt.zero_grad(set_to_none=True)
        loss = self.recipe.arch_update.backward(self, train_batch, valid_batch)
        self.a_opt.step()
        self.w_opt.zero_grad(set_to_none=True)  # w grads from the α pass must not leak into the w step
        for reg in self.recipe.regularisers:
            reg.after_arch_step(self)
        self.arch_steps += 1
        return loss

    def w_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        self.w_opt.zero_grad(set_to_none=True)
        override = self.recipe.override.weights(self)
        arch = self.model.arch
        with arch.overriding(override) if override is not None else nullcontext(), arch.frozen():
            logits = self.model(x)  # α is a constant here: the w step trains w only
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if self.recipe.schedule.needs_fisher:
            grads = [p.grad.detach().pow(2).sum() for p in self.w_params if p.grad is not None]
            fi = float(torch.stack(grads).sum())  # one host sync, not one per parameter
            self.recipe.schedule.observe_fisher(fi)
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.w_params, self.config.grad_clip)
        self.w_opt.step()
        return float(loss.detach()), int((logits.argmax(1) == y).sum())

    def _valid_stream(self, epoch: int) -> Iterator[Batch]:
        # The α batches of epoch e come from valid epochs e*K, e*K+1, ... so a resumed run sees the same ones.
        k = 1 + len(self.train_loader) // max(1, len(self.valid_loader))
        return itertools.chain.from_iterable(self.valid_loader.epoch(epoch * k + r) for r in range(k + 1))

    def train_epoch(self, epoch: int, lr: float | None = None, desc: str = "search") -> dict[str, float]:
        """One pass over the w-train split; returns the epoch's metrics. A NaN/inf w or α loss, or non-finite
        w or α after the pass, raises DnasError (the run diverged; the caller saves nothing of this epoch)."""
        cfg = self.config
        self._set_lr(cosine_lr(epoch, self.total_epochs, cfg.w_lr, cfg.w_lr_min) if lr is None else lr)
        self.model.train()
        valid = self._valid_stream(epoch)
        n = len(self.train_loader)
        per_step = lr is None and cfg.lr_per_step
        loss_sum = correct = seen = 0.0
        arch_loss_sum, arch_count = 0.0, 0
        t0 = time.time()
        bar = tqdm(self.train_loader.epoch(epoch), total=n, desc=f"{desc} epoch {epoch + 1}/{self.total_epochs}",
                   disable=self.quiet, leave=False)
        for i, (x, y) in enumerate(bar):
            self.progress = min(1.0, (epoch + i / n) / self.ramp_epochs)
            if per_step:
                self._set_lr(cosine_lr(epoch * n + i, self.total_epochs * n, cfg.w_lr, cfg.w_lr_min))
            if self.recipe.schedule.should_step(self):
                vx, vy = next(valid)
                a_loss = self.arch_step((x, y), (vx, vy))
                self._check_finite("α", a_loss, epoch, i, desc)
                arch_loss_sum += a_loss
                arch_count += 1
            loss, c = self.w_step(x, y)
            self._check_finite("w", loss, epoch, i, desc)
            self.step += 1
            loss_sum += loss * len(y)
            correct += c
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        if not all_finite(self.w_params + self.a_params):
            raise self._diverged(f"non-finite w or α after epoch {epoch + 1}", desc)
        self.epoch = epoch + 1
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                "arch_loss": arch_loss_sum / arch_count if arch_count else None, "arch_steps_epoch": arch_count,
                "arch_steps": self.arch_steps, "lr": self.current_lr, "seconds": time.time() - t0}

    def _check_finite(self, which: str, loss: float, epoch: int, i: int, desc: str) -> None:
        """Stop at the first NaN/inf loss: the step that produced it has already poisoned w or α, and every
        later epoch (its α snapshot, genotype and checkpoint) would be garbage. Nothing of this epoch is saved."""
        if not math.isfinite(loss):
            raise self._diverged(f"the {which} loss is {loss} at epoch {epoch + 1}, mini-batch {i + 1}", desc)

    def _diverged(self, what: str, desc: str) -> DnasError:
        # A selector's fine-tuning (desc "pt tune", ...) runs at its own lr option, not the search's flags.
        advice = "lower --lr / --arch-lr" if desc == "search" else "lower the selector's lr option"
        return DnasError(f"{desc} diverged: {what} (w lr {self.current_lr:g}, α lr {self.config.arch_lr:g}, grad "
                         f"clip {self.config.grad_clip:g}); nothing of this epoch was saved: {advice} and start again")

    def _set_lr(self, lr: float) -> None:
        self.current_lr = lr
        for g in self.w_opt.param_groups:
            g["lr"] = lr

    @torch.no_grad()
    def evaluate(self, loader: BatchLoader, epoch: int = 0, train_mode: bool = False) -> dict[str, float]:
        """Loss and accuracy over a whole split (BN in eval mode unless ``train_mode``)."""
        self.model.train(train_mode)
        loss_sum = correct = seen = 0.0
        for x, y in loader.epoch(epoch):
            logits = self.model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        self.model.train()
        return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1)}

    # -- persistence -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                "generator": self.generator.get_state(), "epoch": self.epoch, "step": self.step,
                "arch_steps": self.arch_steps,
                "pieces": {k: p.state_dict() for k, p in self.recipe.pieces().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.generator.set_state(state["generator"])
        self.epoch, self.step, self.arch_steps = state["epoch"], state["step"], state["arch_steps"]
        for k, p in self.recipe.pieces().items():
            p.load_state_dict(state["pieces"].get(k, {}))
