"""Search modes: each is a choice of pieces plus the hyper-parameter defaults of its paper.

Add a mode by calling ``register_mode``; ``dnas search --mode NAME`` picks it up.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DnasError
from .config import SearchConfig
from .pieces import EveryStep, FirstOrder, Never, NoArchUpdate, SecondOrder
from .trainer import Recipe


@dataclass(frozen=True)
class Mode:
    name: str
    build: Callable[[SearchConfig], Recipe]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)  # config fields the mode changes unless the user set them
    family_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per space family, over ``defaults``
    trains_alpha: bool = True
    # adjusts config fields from config.options once the CLI has applied defaults and options (e.g. a split)
    configure: Callable[[SearchConfig], None] | None = None

    def defaults_for(self, space: str) -> dict[str, Any]:
        """The paper defaults of this mode on ``space`` (some papers tune per space)."""
        from ..spaces import get_space
        return {**self.defaults, **self.family_defaults.get(get_space(space).family, {})}


MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    MODES[mode.name] = mode
    return mode


def get_mode(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise DnasError(f"unknown mode {name!r} (known: {', '.join(MODES)})") from None


class _ReadOptions(dict):
    """A mode's options that note which keys the mode looked at."""

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def check_unused_options(m: Mode, config: SearchConfig) -> None:
    """Refuse options the mode never reads with these settings (a typo, or e.g. ``admm_freq`` with
    ``reg=prox``): building the recipe once on a copy shows which keys it looks at."""
    if not config.options:
        return
    probe = dataclasses.replace(config, options=_ReadOptions(config.options))
    if m.configure is not None:
        m.configure(probe)
    m.build(probe)
    unused = sorted(set(config.options) - probe.options.read)
    if unused:
        raise DnasError(f"--option {', '.join(unused)}: not used by mode {m.name} with these settings "
                        f"({m.description})")


# Per space family, under every mode's own defaults: darts-pt trains its NB201 supernets for 100 epochs
# (``nasbench201/train_search.py --epochs 100``; DARTS-PT projects from ``--resume_epoch 100``), its DARTS-space
# ones for 50 (SearchConfig's default).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {"nb201": {"epochs": 100}}


def make_config(mode: str = "darts1", **fields: Any) -> SearchConfig:
    """A SearchConfig for ``mode``: the space family's defaults (NB201: 100 epochs), the mode's paper
    defaults, then ``fields``, then the mode's own checks and derived settings (e.g. DARTS-PRIME's dynamic
    split). The library's way to get what the CLI gets."""
    from ..spaces import get_space
    m = get_mode(mode)
    config = SearchConfig(mode=mode)
    for k in fields:
        if not hasattr(config, k):
            raise DnasError(f"unknown search setting {k!r}")
    space = fields.get("space", config.space)
    for k, v in {**FAMILY_DEFAULTS.get(get_space(space).family, {}), **m.defaults_for(space), **fields}.items():
        setattr(config, k, v)
    check_unused_options(m, config)
    if m.configure is not None:
        m.configure(config)
        # ``is not`` first: a NaN the user gave is still theirs (and config.check() names its flag)
        overridden = [k for k, v in fields.items() if getattr(config, k) is not v and getattr(config, k) != v]
        if overridden:  # e.g. prime's dynamic split over a train_portion the user asked for
            raise DnasError(f"mode {mode!r} sets {', '.join(overridden)} itself; see its options "
                            f"({m.description})")
    config._mode_applied = mode  # run_search checks it (a plain SearchConfig(mode=...) misses the defaults)
    return config


def check_mode_applied(config: SearchConfig) -> None:
    """Refuse a config for a mode with paper defaults that did not come from ``make_config``; for the
    other modes, run the mode's own checks and derived settings here instead."""
    if getattr(config, "_mode_applied", None) == config.mode:
        return
    m = get_mode(config.mode)
    own = m.defaults_for(config.space)
    if own:
        raise DnasError(f"mode {config.mode!r} has its own paper defaults ({', '.join(sorted(own))}): build its "
                        f"settings with dnas.search.make_config({config.mode!r}, ...), as the CLI does")
    check_unused_options(m, config)
    if m.configure is not None:
        m.configure(config)


def _with_activation(recipe_fn: Callable[[SearchConfig], Recipe]) -> Callable[[SearchConfig], Recipe]:
    def build(c: SearchConfig) -> Recipe:
        from .variants import activation_pieces
        recipe = recipe_fn(c)
        recipe.regularisers.extend(activation_pieces(c))  # e.g. crb's permanent pruning of α <= 0
        return recipe
    return build


def _second_order(c: SearchConfig) -> Recipe:
    from .variants import opt_float
    return Recipe(SecondOrder(opt_float(c.options, "fd_r", 0.01, positive=True)), EveryStep())


register_mode(Mode("darts1", _with_activation(lambda c: Recipe(FirstOrder(), EveryStep())),
                   "DARTS first order: α step on a valid batch, then w step, every mini-batch"))
register_mode(Mode("darts2", _with_activation(_second_order),
                   "DARTS second order (unrolled w, finite-difference Hessian-vector product; option fd_r=0.01)"))
register_mode(Mode("fixed", lambda c: Recipe(NoArchUpdate(), Never()),
                   "α frozen at its 1e-3·N(0,1) init (DARTS-PT's 'fix α' / blank supernet)", trains_alpha=False))

from . import variants  # noqa: E402,F401  (registers sdarts-rs, spos, prime)
