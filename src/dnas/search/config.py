"""Search settings, with the papers' defaults (DARTS / DARTS-PT code; §0.4 of the method spec)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_seed, check_sgd, finite_non_negative, finite_positive
from ..errors import DnasError
from ..schema import check_settings
from ..spaces import get_space
from ..supernet import check_node_bn, check_resolution


@dataclass
class SearchConfig:
    space: str = "nb201"
    dataset: str = "digits"
    data_dir: str | None = None
    out: str | None = None
    epochs: int = 50                   # make_config / the CLI: 100 on NB201 (darts-pt), see modes.FAMILY_DEFAULTS
    batch_size: int = 64
    channels: int = 16
    cells: int | None = None           # None: the space's default (NB201 N=5; DARTS 8 layers)
    subset: int | None = None
    resolution: int | None = None
    mode: str = "darts1"
    seed: int = 0
    device: str = "auto"
    activation: str = "softmax"
    impl: str = "fast"                 # or "reference": the per-op loop (same state_dict)
    node_bn: bool = False              # DARTS spaces: BN on every node's sum (DARTS-PRIME's search network)
    train_portion: float = 0.5         # 50/50 split of the training set into w-train / α-valid
    # w optimiser (SGD, cosine per epoch to w_lr_min)
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    lr_per_step: bool = False          # anneal after every mini-batch instead (SPOS's code)
    w_momentum: float = 0.9
    w_nesterov: bool = False
    w_wd: float = 3e-4
    grad_clip: float = 5.0             # 0 disables
    # α optimiser (Adam)
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_wd: float = 1e-3
    eval_every: int = 1                # evaluate on the whole valid split every k epochs (0: never)
    # variant options, read by the mode's pieces (see search/modes.py)
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arch_betas"] = list(self.arch_betas)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SearchConfig":
        check_settings(d, cls, "a search config")  # a JSON object of its fields, with their types
        d = dict(d)
        if "arch_betas" in d:
            d["arch_betas"] = tuple(d["arch_betas"])
        return cls(**d)

    def check(self) -> None:
        for name in ("epochs", "batch_size", "channels"):
            if getattr(self, name) < 1:
                raise DnasError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.cells is not None and self.cells < 1:
            raise DnasError(f"--cells must be >= 1, got {self.cells}")
        check_sgd(lr=self.w_lr, lr_min=self.w_lr_min, momentum=self.w_momentum, weight_decay=self.w_wd,
                  grad_clip=self.grad_clip)
        finite_positive("--arch-lr", self.arch_lr)
        finite_non_negative("--arch-weight-decay", self.arch_wd)
        if self.eval_every < 0:
            raise DnasError(f"--eval-every must be >= 0 (0: never), got {self.eval_every}")
        if not 0.0 < self.train_portion < 1.0:
            raise DnasError(f"train portion must be in (0, 1), got {self.train_portion}")
        check_resolution(self.resolution)
        check_seed("--seed", self.seed)
        check_node_bn(get_space(self.space), self.node_bn)
