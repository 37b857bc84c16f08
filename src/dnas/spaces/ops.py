"""Candidate operations of the NAS-Bench-201 and DARTS spaces, built by name.

The same constructors serve the supernet (``affine=False`` BN, as in the search code of both papers)
and the stand-alone networks (``affine=True``). Every op maps (N, C, H, W) to (N, C, H/stride, W/stride).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DnasError


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BN (NB201's ``nor_conv``; DARTS's 1x1 input preprocessing)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int = 1, affine: bool = True, track_running_stats: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track_running_stats),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k (dilated) -> pointwise 1x1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks with dilation 1; only the first is strided."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op. Mixed ops never call it (its contribution is exactly 0); kept for stand-alone nets."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Noise(nn.Module):
    """RobustDARTS S4 ``noise`` op: N(0, 1) noise of the (strided) input's shape, independent of the input."""

    def __init__(self, stride: int, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.stride, self.mean, self.std = stride, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(x).mul_(self.std).add_(self.mean)


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor stored channels-last and not also NCHW-contiguous (as C=1 or 1x1 maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def stride2_grid(x: torch.Tensor, offset: int) -> torch.Tensor:
    """``x[:, :, offset::2, offset::2]`` as a dense copy in ``x``'s memory format.

    A 1x1 conv on this grid is a 1x1 stride-2 conv of ``x`` (offset 0) or of ``x[:, :, 1:, 1:]`` (offset 1), and
    the CPU convolutions are several times faster on it: fw + bw at 64x16x32x32, 1 thread, 1.4 vs 8.7 ms
    against the cropped view (channels-last) and 1.9 vs 13.5 ms against stride 2 (NCHW).
    """
    channels_last = is_channels_last(x)
    n, c, h, w = x.shape
    if h % 2 or w % 2:  # no 2x2 blocks: sliced, so the gradient comes back NCHW (no network here has odd maps)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return x[:, :, offset::2, offset::2].contiguous(memory_format=fmt)
    # Picked from 2x2 blocks of a view in x's memory order rather than sliced: slicing's backward writes an
    # NCHW gradient whatever x's layout, and every kernel after it would then convert.
    if channels_last:
        blocks = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c)
        return blocks[:, :, offset, :, offset].contiguous().permute(0, 3, 1, 2)
    return x.reshape(n, c, h // 2, 2, w // 2, 2)[:, :, :, offset, :, offset].contiguous()


class FactorizedReduce(nn.Module):
    """Stride-2 'skip': two 1x1 stride-2 convs on offset grids, concatenated, then BN (DARTS)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise DnasError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat(self.halves(stride2_grid(x, 0), stride2_grid(x, 1)), dim=1))

    def halves(self, even: torch.Tensor, odd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv_1`` of ``x`` and ``conv_2`` of ``x[:, :, 1:, 1:]``, from the rectified input's two ``stride2_grid``s
        (the stride is the grid's: the convs run with stride 1)."""
        return (F.conv2d(even, self.conv_1.weight, self.conv_1.bias),
                F.conv2d(odd, self.conv_2.weight, self.conv_2.bias))


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose forward on NCHW CPU input runs PyTorch's channels-last kernel.

    The CPU max-pool kernel for contiguous (NCHW) input is several times slower than the channels-last
    one (3x3, float32, 1 thread: 3-9x). Both scan a window in the same order and keep the first maximum
    (NaN wins), so the values and argmax indices are the same; the output is handed back as NCHW and the
    backward is the NCHW path's own kernel on the same indices, so outputs and gradients (values and
    layouts) are bit-identical to ``nn.MaxPool2d``'s. Channels-last input (the fast supernets) and other
    devices take the plain path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_indices or not _nchw_on_cpu(x):
            return super().forward(x)
        args = (_pair(self.kernel_size), _pair(self.stride), _pair(self.padding), _pair(self.dilation),
                bool(self.ceil_mode))
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPoolNCHW.apply(x, *args)
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), *args).contiguous()


def _nchw_on_cpu(x: torch.Tensor) -> bool:
    """A dense NCHW CPU batch (not also channels-last, as C=1 or 1x1 maps are): the case the pools reroute."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
            and not x.is_contiguous(memory_format=torch.channels_last))


def _channels_last_on_cuda(x: torch.Tensor) -> bool:
    """A channels-last CUDA batch (not also NCHW): the case whose avg-pool backward is rerouted."""
    return x.device.type == "cuda" and is_channels_last(x)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else [int(t) for t in v]


class _MaxPoolNCHW(torch.autograd.Function):
    """Max pool of NCHW ``x``: the forward by the channels-last kernel, the backward by the NCHW kernel."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        y, idx = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation,
                              ceil_mode=ceil_mode, return_indices=True)
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, idx = ctx.saved_tensors
        # Differentiable (max_pool2d_with_indices_backward has a derivative), so double backward works.
        return (torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *ctx.args, idx),
                None, None, None, None, None)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` whose forward on NCHW float32/float64 CPU input runs the channels-last kernel,
    and whose backward for channels-last CUDA input runs the NCHW kernel (see :class:`_AvgPoolCUDA`).

    Like :class:`MaxPool2d`: the channels-last forward is ~2x faster (3x3, stride 1); it sums each window
    in the same order and divides by the same count, so the values are the same; the output is handed
    back as NCHW and the backward is the NCHW kernel, so outputs and gradients are bit-identical.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _channels_last_on_cuda(x) and torch.is_grad_enabled() and x.requires_grad:
            return _AvgPoolCUDA.apply(x, *self._args())
        if x.dtype not in (torch.float32, torch.float64) or not _nchw_on_cpu(x):
            return super().forward(x)
        args = self._args()
        if torch.is_grad_enabled() and x.requires_grad:
            return _AvgPoolNCHW.apply(x, *args)
        return F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), *args).contiguous()

    def _args(self) -> tuple:
        return (_pair(self.kernel_size), _pair(self.stride), _pair(self.padding), bool(self.ceil_mode),
                bool(self.count_include_pad), self.divisor_override)


class _AvgPoolCUDA(torch.autograd.Function):
    """CUDA average pool whose backward runs the NCHW kernel.

    torch 2.11's CUDA ``avg_pool2d_backward`` returns wrong input gradients for channels-last input
    with padding > 0 (the NHWC kernel leaves out the padding offset: pytorch/pytorch#188344), in float32
    and float64 and whichever layout the incoming gradient has; the forward is right, and so is the
    backward for NCHW input (measured on an H100, 2026-11-23, benchmarks/README.md). The
    fast DARTS supernet pools channels-last maps, so the backward is taken in NCHW and handed back in
    the input's layout.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        ctx.save_for_backward(x)
        ctx.args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return F.avg_pool2d(x, *ctx.args)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad_x = torch.ops.aten.avg_pool2d_backward(grad.contiguous(), x.contiguous(), *ctx.args)
        if is_channels_last(x):
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        return (grad_x, None, None, None, None, None, None)


class _AvgPoolNCHW(torch.autograd.Function):
    """Average pool of NCHW ``x``: the forward by the channels-last kernel, the backward by the NCHW kernel."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        ctx.save_for_backward(x)
        ctx.args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), *ctx.args).contiguous()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (torch.ops.aten.avg_pool2d_backward(grad, x, *ctx.args), None, None, None, None, None, None)


class PoolBN(nn.Sequential):
    """DARTS supernet pooling: pool followed by a non-affine BN (keeps the op's scale comparable)."""

    def __init__(self, kind: str, c: int, stride: int, affine: bool):
        pool = (MaxPool2d(3, stride, 1) if kind == "max"
                else AvgPool2d(3, stride, 1, count_include_pad=False))
        super().__init__(pool, nn.BatchNorm2d(c, affine=affine))


def _pool(kind: str, c: int, stride: int) -> nn.Module:
    return (MaxPool2d(3, stride, 1) if kind == "max"
            else AvgPool2d(3, stride, 1, count_include_pad=False))


# -- NAS-Bench-201 ----------------------------------------------------------------------------------
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def build_nb201_op(name: str, c: int, affine: bool, track_running_stats: bool = True) -> nn.Module:
    """NB201 cell op (stride 1, C -> C). In NB201 the pool inside a cell has no BN."""
    if name == "none":
        return Zero(1)
    if name == "skip_connect":
        return Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, 0, affine=affine, track_running_stats=track_running_stats)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, 1, affine=affine, track_running_stats=track_running_stats)
    if name == "avg_pool_3x3":
        return _pool("avg", c, 1)
    raise DnasError(f"unknown NB201 op {name!r} (known: {', '.join(NB201_OPS)})")


# -- DARTS / RobustDARTS ----------------------------------------------------------------------------
DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")
DARTS_EXTRA_OPS = ("noise",)

_DARTS_BUILDERS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda c, s, a: Zero(s),
    "noise": lambda c, s, a: Noise(s),
    "skip_connect": lambda c, s, a: Identity() if s == 1 else FactorizedReduce(c, c, a),
    "sep_conv_3x3": lambda c, s, a: SepConv(c, c, 3, s, 1, a),
    "sep_conv_5x5": lambda c, s, a: SepConv(c, c, 5, s, 2, a),
    "dil_conv_3x3": lambda c, s, a: DilConv(c, c, 3, s, 2, 2, a),
    "dil_conv_5x5": lambda c, s, a: DilConv(c, c, 5, s, 4, 2, a),
}


def build_darts_op(name: str, c: int, stride: int, affine: bool, pool_bn: bool) -> nn.Module:
    """DARTS op on C channels. ``pool_bn``: the supernet follows pools with BN(affine=False); evaluation nets do not."""
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        kind = name[:3]
        return PoolBN(kind, c, stride, affine=False) if pool_bn else _pool(kind, c, stride)
    try:
        return _DARTS_BUILDERS[name](c, stride, affine)
    except KeyError:
        known = ", ".join(DARTS_OPS + DARTS_EXTRA_OPS)
        raise DnasError(f"unknown DARTS op {name!r} (known: {known})") from None
