"""``ArchState``: the only door to architecture weights.

It holds α per cell type, the activation that turns α into mixing weights, a 0/1 mask per (edge, op)
and the fixed (decided) edges. Training modes change the activation or temporarily override the
weights (SDARTS-RS noise, SPOS one-hot samples, PT candidate evaluation); selectors fix edges and mask
ops. The supernet only ever calls :meth:`weights`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DnasError
from ..spaces import Space

ACTIVATIONS = ("softmax", "sigmoid", "crb", "linear")


class ArchState(nn.Module):
    """α + activation + masks + fixed choices -> mixing weights, one (edges x ops) matrix per cell type.

    Activations: ``softmax`` (DARTS), ``sigmoid``, ``crb`` (clamp to [0, 1], DARTS-PRIME's early
    activation; the trainer masks α <= 0 permanently) and ``linear`` (α used as is, ZEROS/FreeDARTS).
    """

    def __init__(self, space: Space, activation: str = "softmax", init_std: float = 1e-3,
                 generator: torch.Generator | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise DnasError(f"unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")
        self.space = space
        self.activation = activation
        self.alphas = nn.ParameterDict()
        for ct, (e, k) in space.alpha_shapes().items():
            if activation == "crb":  # DARTS-PRIME: start near 1/|O| so clamping keeps every op alive
                a = 1.0 / k + 1e-4 * torch.randn(e, k, generator=generator)
            else:
                a = init_std * torch.randn(e, k, generator=generator)
            self.alphas[ct] = nn.Parameter(a)
            self.register_buffer(f"mask_{ct}", torch.ones(e, k))
            self.register_buffer(f"fixed_{ct}", torch.full((e,), -1, dtype=torch.long))
        self._override: dict[str, torch.Tensor] | None = None

    @property
    def cell_types(self) -> tuple[str, ...]:
        return self.space.cell_types

    def mask(self, ct: str) -> torch.Tensor:
        return getattr(self, f"mask_{ct}")

    def fixed(self, ct: str) -> torch.Tensor:
        """Per edge: the decided op index, or -1 while undecided."""
        return getattr(self, f"fixed_{ct}")

    def activate(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.activation == "softmax":
            return F.softmax(alpha, dim=-1)
        if self.activation == "sigmoid":
            return torch.sigmoid(alpha)
        if self.activation == "crb":
            return alpha.clamp(0.0, 1.0)
        return alpha

    def activated(self, ct: str) -> torch.Tensor:
        """act(α) with no masks or fixed edges: what regularisers and the magnitude rule look at."""
        return self.activate(self.alphas[ct])

    def base_weights(self, ct: str) -> torch.Tensor:
        """Mixing weights ignoring any override: act(α) on undecided edges, one-hot on fixed ones, times the mask."""
        w = self.activated(ct)
        fixed = self.fixed(ct)
        if bool((fixed >= 0).any()):
            onehot = F.one_hot(fixed.clamp(min=0), w.shape[1]).to(w.dtype)
            w = torch.where((fixed >= 0).unsqueeze(1), onehot, w)
        return w * self.mask(ct)

    def live(self, ct: str) -> torch.Tensor:
        """Bool (edges x ops): the ops the network computes, i.e. those with a non-zero base weight (removed
        ops, the other ops of a fixed edge and crb ops at α <= 0 weigh 0 and are skipped)."""
        with torch.no_grad():
            return (self.base_weights(ct) != 0).cpu()

    def weights(self, ct: str) -> torch.Tensor:
        if self._override is not None and ct in self._override:
            return self._override[ct]
        return self.base_weights(ct)

    @contextmanager
    def overriding(self, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Use these mixing weights instead of the computed ones inside the block (noise, samples, probes).

        Cell types not given keep an enclosing override (e.g. ``frozen()``'s detached weights)."""
        previous = self._override
        self._override = {**(previous or {}), **weights}
        try:
            yield
        finally:
            self._override = previous

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Inside the block the mixing weights (overridden or not) are constants, out of the autograd graph.

        A w step needs no α gradient; with α in the graph, ``backward`` would still compute it (custom
        autograd ops such as the fast path's scaled sums cannot see that it is unused).
        """
        with self.overriding({ct: self.weights(ct).detach() for ct in self.cell_types}):
            yield

    # -- decisions made by selectors -----------------------------------------------------------------
    def fix_edge(self, ct: str, edge: int, op: int) -> None:
        self.fixed(ct)[edge] = op

    def remove_edge(self, ct: str, edge: int) -> None:
        self.mask(ct)[edge] = 0.0

    def remove_op(self, ct: str, edge: int, op: int) -> None:
        self.mask(ct)[edge, op] = 0.0

    def undecided_edges(self, ct: str) -> list[int]:
        return [e for e, f in enumerate(self.fixed(ct).tolist()) if f < 0]
