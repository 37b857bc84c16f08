"""Helpers shared by the selectors: option checking, the scoring loader, side-effect-free evaluation,
the mixed ops of a supernet, and a reference-implementation copy of a run's supernet."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_seed
from ..data import BatchLoader
from ..errors import DnasError
from ..supernet import ArchState, build_supernet, check_bn_batches
from ..supernet.mixed import MixedOp

if TYPE_CHECKING:
    from ..search import SearchRun
    from .run import SelectionContext


def method_options(ctx: "SelectionContext", defaults: Mapping[str, Any],
                   choices: Mapping[str, tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """``ctx.options`` over ``defaults``; unknown keys and values outside ``choices`` are user errors."""
    unknown = sorted(set(ctx.options) - set(defaults))
    if unknown:
        known = f"known: {', '.join(defaults)}" if defaults else "it takes none"
        raise DnasError(f"{ctx.method}: unknown option(s) {', '.join(unknown)} ({known})")
    opts = {**defaults, **ctx.options}
    for key, allowed in (choices or {}).items():
        if opts[key] not in allowed:
            raise DnasError(f"{ctx.method}: option {key}={opts[key]!r} must be one of {', '.join(map(str, allowed))}")
    return opts


def positive_int(method: str, key: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DnasError(f"{method}: option {key} must be a positive integer, got {value!r}")
    return value


def seed_option(method: str, value: Any, default: int) -> int:
    """A seed option: ``default`` when None, else a whole number (a float or text would be cut or crash later)."""
    return default if value is None else check_seed(f"{method}: option seed", value)


def positive_float(method: str, key: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DnasError(f"{method}: option {key} must be a positive number, got {value!r}")
    return float(value)


def scoring_loader(run: "SearchRun", batch_size: int | None = None, *, bn_train: bool = False,
                   max_batches: int | None = None) -> BatchLoader:
    """The α-half of the data without augmentation, in a fixed order, in batches of ``batch_size``
    (default: the search batch size, as DARTS-PT's ``valid_queue``: train-mode BN sees batches of that size).
    With ``bn_train`` a 1-image batch that would be scored at 4 px is refused up front (``check_bn_batches``)."""
    ve = run.valid_eval
    bs = batch_size or run.config.batch_size
    n = ve.indices.numel()
    if bn_train and (max_batches is None or max_batches * bs >= n):  # the last batch is reached
        check_bn_batches(ve.dataset.resolution, bs, {"α-valid (eval_batch_size)": n})
    if ve.batch_size == bs:
        return ve
    return BatchLoader(ve.dataset, ve.indices, bs, augment=False, shuffle=False, seed=run.config.seed,
                       stream=2, device=run.device)


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every non-architecture buffer (BN running statistics) on exit.

    A train-mode forward updates BN running statistics. Candidate evaluations must not change the
    supernet, so they run inside this block.
    """
    arch_ids = {id(b) for b in model.arch.buffers()}
    saved = [(b, b.detach().clone()) for b in model.buffers() if id(b) not in arch_ids]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)


@dataclass
class EvalResult:
    correct: int
    loss_sum: float
    seen: int
    batches: int

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    def to_json(self) -> dict[str, float]:
        return {"acc": self.acc, "loss": self.loss}


def evaluate_weights(model: nn.Module, loader: BatchLoader, weights: Mapping[str, torch.Tensor], *,
                     bn_train: bool, max_batches: int | None = None) -> EvalResult:
    """Accuracy and loss of the supernet under the given mixing weights, leaving the model unchanged."""
    correct, loss_sum, seen, batches = 0, 0.0, 0, 0
    with torch.no_grad(), frozen_buffers(model), model.arch.overriding(weights):
        model.train(bn_train)
        for x, y in loader.epoch(0):
            if max_batches is not None and batches >= max_batches:
                break
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            batches += 1
    model.train()
    return EvalResult(correct, loss_sum, seen, batches)


def current_weights(arch: ArchState) -> dict[str, torch.Tensor]:
    """Detached copies of the mixing weights every cell type uses now (one-hot on decided edges)."""
    with torch.no_grad():
        return {ct: arch.weights(ct).detach().clone() for ct in arch.cell_types}


def mixed_sites(model: nn.Module) -> list[tuple[str, int, MixedOp]]:
    """Every mixed op of a reference supernet as (cell type, edge, module), cells in forward order."""
    family = model.arch.space.family
    sites = []
    for m in model.modules():
        mixed = getattr(m, "mixed", None)
        if not isinstance(mixed, nn.ModuleList):
            continue
        ct = "cell" if family == "nb201" else ("reduce" if m.reduction else "normal")
        sites.extend((ct, e, op) for e, op in enumerate(mixed) if isinstance(op, MixedOp))
    if not sites:
        raise DnasError("this supernet has no per-op MixedOp modules (use the reference implementation)")
    return sites


def reference_model(run: "SearchRun") -> nn.Module:
    """The run's supernet as the reference implementation (per-op modules that hooks can see).

    The fast implementation keeps reference-compatible ``state_dict`` keys, so a copy is built and
    loaded; a reference run's own model is returned as is.
    """
    if run.config.impl == "reference":
        return run.model
    arch = ArchState(run.space, run.config.activation)
    model = build_supernet(run.space, channels=run.config.channels, cells=run.config.cells,
                           num_classes=run.dataset.num_classes, in_channels=run.dataset.channels,
                           activation=run.config.activation, arch=arch, impl="reference",
                           node_bn=run.config.node_bn)
    model.load_state_dict(run.model.state_dict())
    return model.to(run.device)
