"""The pluggable pieces of the bilevel search loop.

A mode (``search/modes.py``) is a choice of one piece per slot:
- ``ArchUpdate``: how α gets its gradient (first order, second order, none);
- ``ArchSchedule``: when an α step happens (every w step, every k, DARTS-PRIME's dynamic rule);
- ``WeightOverride``: what mixing weights the w step sees (α as is, SDARTS-RS noise, a SPOS sample);
- ``Regulariser``: extra terms of the α loss (DARTS-PRIME proximity, ADMM).
Every piece carries its own state in ``state_dict`` so that a resumed run continues exactly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..supernet import frozen_weights

if TYPE_CHECKING:
    from .trainer import Searcher

Batch = tuple[torch.Tensor, torch.Tensor]


class Piece:
    name = "piece"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# -- α gradient ------------------------------------------------------------------------------------
class ArchUpdate(Piece):
    """Computes α gradients for one α step (the trainer zeroes grads before and steps Adam after)."""

    def backward(self, s: "Searcher", train_batch: Batch, valid_batch: Batch) -> float:
        raise NotImplementedError


class NoArchUpdate(ArchUpdate):
    name = "none"


class FirstOrder(ArchUpdate):
    """∇_α L_val(w, α) (+ regularisers): DARTS first order, the only form darts-pt uses."""

    name = "first-order"

    def backward(self, s: "Searcher", train_batch: Batch, valid_batch: Batch) -> float:
        with frozen_weights(s.w_params):  # w gradients are not needed: ~1.3x faster
            loss = s.arch_loss(*valid_batch)
            if loss.requires_grad:  # not when every edge is decided (PT's last tuning epoch): no α gradient
                torch.autograd.backward(loss, inputs=s.a_params)
        return float(loss.detach())


class SecondOrder(ArchUpdate):
    """DARTS second order with the finite-difference Hessian-vector product.

    w' = w - ξ(μ·buf + ∇_w L_train(w, α) + λw)   (the virtual SGD step, with momentum and weight decay as
    the DARTS code does), then g_α = ∇_α L_val(w', α) - ξ[∇_α L_train(w⁺, α) - ∇_α L_train(w⁻, α)] / 2ε,
    w± = w ± ε∇_{w'} L_val(w', α), ε = 0.01 / ‖∇_{w'} L_val(w', α)‖. ξ is the current w learning rate.
    No model copy: w is swapped in place and restored, BN running statistics included.

    ``r`` (0.01 in the DARTS code) sets the finite-difference step. On ReLU networks the gradient is only
    piecewise smooth: a step that crosses activation kinks makes the difference quotient differ from the
    exact Hessian-vector product by O(1) on tiny nets (measured: 2.9x relative error at r=0.01, 6e-10 at
    r=1e-5, float64, C=2). The default keeps DARTS's value; tests check the formula at small r.
    """

    name = "second-order"

    def __init__(self, r: float = 0.01):
        self.r = r

    def backward(self, s: "Searcher", train_batch: Batch, valid_batch: Batch) -> float:
        params = s.w_params
        alphas = s.a_params
        xi = s.current_lr
        backup = [p.detach().clone() for p in params]
        buffers = [b.detach().clone() for b in s.model.buffers()]
        cfg = s.config

        # virtual step w -> w'
        loss_tr = s.w_loss(*train_batch)
        # Ops whose mixing weight is exactly 0 (masked, pruned, on a fixed edge) are never computed.
        g_tr = torch.autograd.grad(loss_tr, params, allow_unused=True)
        g_tr = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_tr)]
        with torch.no_grad():
            for p, g in zip(params, g_tr):
                d = g + cfg.w_wd * p
                buf = s.w_opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    d = d + cfg.w_momentum * buf
                p.sub_(xi * d)
        # ∇ of L_val at w' w.r.t. α and w'
        loss_val = s.arch_loss(*valid_batch)
        grads = torch.autograd.grad(loss_val, alphas + params, allow_unused=True)
        reached = [g is not None for g in grads[: len(alphas)]]  # α out of the graph (all edges decided): no step
        g_alpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads[: len(alphas)])]
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[len(alphas):])]
        eps = self.r / torch.sqrt(sum((x * x).sum() for x in v)).clamp_min(1e-12)

        def alpha_grad_at(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for p, w0, vi in zip(params, backup, v):
                    p.copy_(w0 + sign * eps * vi)
            gs = torch.autograd.grad(s.w_loss(*train_batch), alphas, allow_unused=True)
            for i, g in enumerate(gs):
                reached[i] = reached[i] or g is not None
            return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, gs)]

        g_plus = alpha_grad_at(+1.0)
        g_minus = alpha_grad_at(-1.0)
        with torch.no_grad():
            for p, w0 in zip(params, backup):
                p.copy_(w0)
            for b, b0 in zip(s.model.buffers(), buffers):
                b.copy_(b0)
            for a, ga, gp, gm, used in zip(alphas, g_alpha, g_plus, g_minus, reached):
                if not used:
                    continue
                g = ga - xi * (gp - gm) / (2 * eps)
                a.grad = g if a.grad is None else a.grad + g
        return float(loss_val.detach())


# -- when to step α --------------------------------------------------------------------------------
class ArchSchedule(Piece):
    needs_fisher = False

    def should_step(self, s: "Searcher") -> bool:
        return True

    def observe_fisher(self, fi: float) -> None:
        pass


class EveryStep(ArchSchedule):
    name = "every-step"


class Never(ArchSchedule):
    name = "never"

    def should_step(self, s: "Searcher") -> bool:
        return False


# -- mixing weights seen by the w step ---------------------------------------------------------------
class WeightOverride(Piece):
    """Returns mixing weights for the w step, or None to use ArchState's own."""

    def weights(self, s: "Searcher") -> Mapping[str, torch.Tensor] | None:
        return None


# -- α-loss regularisers ---------------------------------------------------------------------------
class Regulariser(Piece):
    def loss(self, s: "Searcher") -> torch.Tensor | None:
        return None

    def after_arch_step(self, s: "Searcher") -> None:
        pass
