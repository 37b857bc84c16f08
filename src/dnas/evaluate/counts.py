"""Parameter and FLOP counts of any network, by forward hooks on its leaf modules.

FLOP convention (``elementwise=True``, NAS-Bench-201's): multiply-adds of convolutions (grouped ones counted
per group) and linear layers, plus their biases; k*k per output element of a k x k pooling; 1 per input
element of a global (adaptive) pooling; 2 per element of a BatchNorm (scale and shift); 1 per element of a
ReLU. Element-wise additions of tensors (node sums, residuals) are not modules and are not counted. This
matches ``*_flops_M`` of every row of the NB201 sample table within 0.03%. ``elementwise=False`` keeps only
the conv and linear multiply-adds (the "MAdds" of most DARTS-space papers).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..spaces.ops import AvgPool2d, MaxPool2d


def count_params(model: nn.Module, exclude_aux: bool = True) -> int:
    """Number of parameters; ``exclude_aux`` leaves out every parameter whose name contains ``auxiliary``
    (DARTS's convention: the auxiliary head is used only in training)."""
    return sum(p.numel() for name, p in model.named_parameters() if not (exclude_aux and "auxiliary" in name))


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv(m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> int:
    kh, kw = _pair(m.kernel_size)
    per_output = kh * kw * (m.in_channels // m.groups)  # each output element sees in/groups channels
    return y.numel() * per_output + (y.numel() if m.bias is not None else 0)


def _linear(m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> int:
    return y.numel() * m.in_features + (y.numel() if m.bias is not None else 0)


def _pool(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    kh, kw = _pair(m.kernel_size)
    return y.numel() * kh * kw


_MACS: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], int]] = {
    nn.Conv2d: _conv, nn.Linear: _linear,
}
_ELEMENTWISE: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], int]] = {
    nn.AvgPool2d: _pool, nn.MaxPool2d: _pool, MaxPool2d: _pool, AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: lambda m, x, y: x.numel(),
    nn.BatchNorm2d: lambda m, x, y: 2 * y.numel(),
    nn.ReLU: lambda m, x, y: y.numel(),
}


def count_flops(model: nn.Module, input_shape: tuple[int, ...], elementwise: bool = True) -> int:
    """FLOPs of one forward pass of ``model`` on an input of ``input_shape`` (include the batch dim, usually 1).

    The model runs once in eval mode under ``no_grad`` on zeros, then its mode is restored; training-only
    parts (DARTS's auxiliary head, drop-path) are therefore not counted.
    """
    rules = {**_MACS, **(_ELEMENTWISE if elementwise else {})}
    total = 0

    def hook(m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += int(rules[type(m)](m, inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in rules]
    was_training = model.training
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total

