"""Building blocks of the fast supernets: BN with a folded mixing weight, functional conv, node sums."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native

CHANNELS_LAST = torch.channels_last
# Below this many input elements the rewrites that trade extra copies for faster oneDNN kernels
# (polyphase dilated convs, the 5x5 depthwise weight gradient) cost more than they save; tests set it to 0.
MIN_REWRITE_NUMEL = 1 << 16


def rewrite_pays(x: torch.Tensor) -> bool:
    """Whether to route a depthwise conv around oneDNN's slow kernels (CPU only: they are oneDNN's)."""
    return x.device.type == "cpu" and x.numel() >= MIN_REWRITE_NUMEL


def batch_norm(z: torch.Tensor, bn: nn.BatchNorm2d, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``scale * bn(z)`` in one kernel, with exactly the module's running-statistics bookkeeping.

    ``scale`` (a 0-d mixing weight) becomes the BN's per-channel weight; ``bn`` is non-affine in the
    supernet, so the product is the same function with one full-tensor pass less.
    """
    factor = _factor(bn)
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    weight = bn.weight
    if scale is not None:
        if scale.dim() == 0:
            scale = scale.reshape(1).expand(z.shape[1]).contiguous()  # the CPU kernels index the weight densely
        weight = scale if weight is None else weight * scale
    bias = bn.bias if bn.bias is None or scale is None else bn.bias * scale
    mean, var = (bn.running_mean, bn.running_var) if track else (None, None)
    return _batch_norm(z, mean, var, weight, bias, use_batch, factor, bn.eps)


def _batch_norm(z: torch.Tensor, mean: torch.Tensor | None, var: torch.Tensor | None, weight: torch.Tensor | None,
                bias: torch.Tensor | None, use_batch: bool, factor: float, eps: float) -> torch.Tensor:
    """``F.batch_norm``; in training, on the CPU maps it handles, through dnas's own kernel (``native``)."""
    if use_batch and native.applies(z) and all(t is None or (t.dtype == torch.float32 and t.is_contiguous())
                                               for t in (mean, var)) and native.enabled():
        return native.batch_norm(z, weight, bias, mean, var, factor, eps)
    return F.batch_norm(z, mean, var, weight, bias, use_batch, factor, eps)


def conv(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def accumulate(acc: list[torch.Tensor | None], dst: int, term: torch.Tensor) -> None:
    """``acc[dst] += term``, in place: a node's running sum is a fresh tensor no backward needs, and a
    node is only read after all its inputs are summed. ``term`` may become the sum itself."""
    if acc[dst] is None:
        acc[dst] = term
    else:
        acc[dst].add_(term)


class _Depthwise5x5(torch.autograd.Function):
    """Depthwise 5x5 conv (padding 2) whose weight gradient is four 3x3 weight gradients.

    oneDNN's depthwise kernels compute the 5x5 weight gradient with a generic grouped kernel that is
    several times slower than its 3x3 depthwise one; the 5x5 gradient at tap (a+i, b+j) is the 3x3
    gradient at (i, j) of the 2-padded input cropped at (a, b), a, b in {0, 2}. The backward is written
    in differentiable ops, so double backward still works.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return F.conv2d(x, weight, None, stride, 2, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        s, c = ctx.stride, weight.shape[0]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [s, s], [2, 2], [1, 1], False,
                                                         [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise5x5_weight_grad(x, grad, s)
        return grad_x, grad_w, None


def depthwise5x5_weight_grad(x: torch.Tensor, grad: torch.Tensor, stride: int) -> torch.Tensor:
    c = x.shape[1]
    rows, cols = stride * (grad.shape[2] - 1) + 3, stride * (grad.shape[3] - 1) + 3
    padded = F.pad(x, (2, 2, 2, 2))
    probe = x.new_empty(c, 1, 3, 3)  # only its shape is read
    blocks = {}
    for a in (0, 2):
        for b in (0, 2):
            crop = padded[:, :, a:a + rows, b:b + cols].contiguous(memory_format=CHANNELS_LAST)
            blocks[a, b] = torch.ops.aten.convolution_backward(grad, crop, probe, None, [stride, stride], [0, 0],
                                                               [1, 1], False, [0, 0], c, [False, True, False])[1]
    # Rows/cols 0-1 from a/b = 0, 2-4 from a/b = 2 (the overlap at 2 is the same sum either way).
    top = torch.cat([blocks[0, 0][..., :2, :2], blocks[0, 2][..., :2, :]], dim=3)
    bottom = torch.cat([blocks[2, 0][..., :, :2], blocks[2, 2]], dim=3)
    return torch.cat([top, bottom], dim=2)


def depthwise(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, dilation: int = 1) -> torch.Tensor:
    """Depthwise conv of ``x``; 5x5 ones (padding 2, no dilation) take the faster weight gradient."""
    if weight.shape[-2:] == (5, 5) and padding == 2 and dilation == 1 and weight.requires_grad and rewrite_pays(x):
        return _Depthwise5x5.apply(x, weight, stride)
    return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])


def _factor(bn: nn.BatchNorm2d) -> float:
    """Count the batch like ``BatchNorm2d.forward`` does and return its running-average factor."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


def can_group(bns: list[nn.BatchNorm2d]) -> bool:
    """Whether these BNs can run as one BN over their concatenated channels (same settings, tracked stats)."""
    first = bns[0]
    return all(bn.momentum is not None and bn.momentum == first.momentum and bn.eps == first.eps
               and bn.training == first.training and bn.track_running_stats and bn.running_mean is not None
               and bn.weight is None for bn in bns)


def shared_batch_norm(z: torch.Tensor, bns: list[nn.BatchNorm2d]) -> torch.Tensor:
    """Training-mode BN of ``z`` on behalf of several non-affine BNs that all see ``z``.

    Their outputs are identical (batch statistics), so normalise once; each module's running
    statistics and batch count still move exactly as if it had run (``can_group`` must hold).
    """
    for bn in bns:
        factor = _factor(bn)
    first, rest = bns[0], bns[1:]
    with torch.no_grad():
        # The kernel F.batch_norm uses: updates ``first`` exactly, returns the batch mean and biased
        # variance (torch.var_mean is ~10x slower on channels-last input).
        mean, var = torch.batch_norm_update_stats(z, first.running_mean, first.running_var, factor)
        n = z.numel() // z.shape[1]
        var = var * (n / max(n - 1, 1))  # running_var keeps the unbiased estimate
        if rest:
            torch._foreach_lerp_([bn.running_mean for bn in rest], [mean.to(first.running_mean.dtype)] * len(rest),
                                 factor)
            torch._foreach_lerp_([bn.running_var for bn in rest], [var.to(first.running_var.dtype)] * len(rest),
                                 factor)
    return _batch_norm(z, None, None, None, None, True, 0.0, bns[0].eps)


class MixingWeights:
    """One cell type's mixing weights, split once per forward into the pieces the ops use.

    Indexing ``w[e, k]`` in every cell costs two view ops forward and a zero-filled (edges x ops)
    gradient per use backward; unbinding once per forward gives each op its own 0-d tensor (and each
    BN width its own expanded per-channel vectors) with one backward node per unbind.
    """

    def __init__(self, w: torch.Tensor):
        self.w = w
        self.live: list[list[bool]] = (w != 0).tolist()  # one host sync per forward, as the reference
        self._scalars: list[tuple[torch.Tensor, ...]] | None = None
        self._vectors: dict[int, list[tuple[torch.Tensor, ...]]] = {}

    def scalar(self, e: int, k: int) -> torch.Tensor:
        if self._scalars is None:
            self._scalars = [row.unbind(0) for row in self.w.unbind(0)]
        return self._scalars[e][k]

    def vector(self, e: int, k: int, c: int) -> torch.Tensor:
        """``w[e, k]`` repeated ``c`` times, contiguous (the CPU BN kernels index their weight densely)."""
        if c not in self._vectors:
            full = self.w.unsqueeze(-1).expand(*self.w.shape, c).contiguous()
            self._vectors[c] = [row.unbind(0) for row in full.unbind(0)]
        return self._vectors[c][e][k]


def _flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of a dense tensor in memory order (contiguous or channels-last), or None."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=CHANNELS_LAST):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return None


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b in one pass when both share a dense layout (no full-size product tensor).

    Under autocast the two may differ in dtype (a bf16 gradient, an fp32 pooled source); ``torch.dot``
    takes one dtype, so both go to the wider one, as ``a * b`` would promote them.
    """
    if a.dtype != b.dtype:
        wide = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(wide), b.to(wide)
    if a.shape == b.shape and a.stride() == b.stride():
        fa, fb = _flat(a), _flat(b)
        if fa is not None and fb is not None:
            return torch.dot(fa, fb)
    return (a * b).sum()


class _FanOut(torch.autograd.Function):
    """``acc[d] += s · (src · coef)`` for several terms at once, in place (``coef``: an optional constant map).

    Node sums get one parameter-free term per (source, destination) pair. One autograd op per term
    makes a full-size ``grad · s`` per term and then autograd adds them up per source; here each
    source's gradient is built in one buffer (``mul`` for the first term, ``addcmul_`` for the rest),
    the constant map is folded into the scalar (no ``src · coef`` tensor forward or backward), and
    ∂s is one dot product per term, only when a scalar needs it. Written in differentiable ops:
    double backward works.
    """

    @staticmethod
    def forward(ctx, plan, coefs, n_src, n_acc, *tensors):
        srcs, accs, scales = tensors[:n_src], tensors[n_src:n_src + n_acc], tensors[n_src + n_acc:]
        for t, (si, ai) in enumerate(plan):
            coef = scales[t] if coefs[si] is None else scales[t] * coefs[si]
            accs[ai].addcmul_(srcs[si], coef)
        ctx.mark_dirty(*accs)
        ctx.save_for_backward(*srcs, *scales)
        ctx.plan, ctx.coefs, ctx.n_src, ctx.n_acc = plan, coefs, n_src, n_acc
        # A destination that does not reach the loss must pass None on (not zeros), as the plain loop does.
        ctx.set_materialize_grads(False)
        return accs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        srcs, scales = saved[:ctx.n_src], saved[ctx.n_src:]
        needs = ctx.needs_input_grad[4:]
        grad_src: list[torch.Tensor | None] = [None] * ctx.n_src
        grad_scale: list[torch.Tensor | None] = [None] * len(scales)
        scaled_src: dict[int, torch.Tensor] = {}
        for t, (si, ai) in enumerate(ctx.plan):
            g, coef = grads[ai], ctx.coefs[si]
            if g is None:
                continue
            if needs[si]:
                factor = scales[t] if coef is None else scales[t] * coef
                grad_src[si] = g * factor if grad_src[si] is None else grad_src[si].addcmul_(g, factor)
            if needs[ctx.n_src + ctx.n_acc + t]:
                if si not in scaled_src:
                    scaled_src[si] = srcs[si] if coef is None else srcs[si] * coef
                grad_scale[t] = dot(g, scaled_src[si]).reshape(scales[t].shape)
        grad_acc = [g if needs[ctx.n_src + i] else None for i, g in enumerate(grads)]  # may be None
        return (None, None, None, None, *grad_src, *grad_acc, *grad_scale)


def fan_out(acc: list[torch.Tensor | None],
            terms: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> None:
    """``acc[dst] += scale · source · coef`` for each term ``(dst, source, scale, coef)``, as one autograd op.

    ``scale`` is 0-d; ``coef`` is None or a constant tensor broadcastable to ``source`` (the same for
    every term of one source). A destination whose sum has not started begins from zeros.
    """
    if not terms:
        return
    src_index: dict[int, int] = {}
    srcs: list[torch.Tensor] = []
    coefs: list[torch.Tensor | None] = []
    dsts: list[int] = []
    plan = []
    for dst, source, _, coef in terms:
        if id(source) not in src_index:
            src_index[id(source)] = len(srcs)
            srcs.append(source)
            coefs.append(coef)
        elif coefs[src_index[id(source)]] is not coef:  # one coefficient map per source: it is folded per source
            raise ValueError("fan_out: terms of one source must share its coef tensor")
        if dst not in dsts:
            dsts.append(dst)
            if acc[dst] is None:
                acc[dst] = torch.zeros_like(source)
        plan.append((src_index[id(source)], dsts.index(dst)))
    outs = _FanOut.apply(tuple(plan), tuple(coefs), len(srcs), len(dsts), *srcs, *(acc[d] for d in dsts),
                         *(t[2] for t in terms))
    for d, out in zip(dsts, outs):
        acc[d] = out


class _CatChannels(torch.autograd.Function):
    """``torch.cat(xs, 1)`` whose backward hands each input a dense channels-last gradient.

    Autograd's own cat backward returns channel slices of the output's gradient: strided views, which
    reach the BN backward of every term summed into a cell's output nodes. ATen's channels-last BN
    backward is ~10x slower on such a view than on a dense tensor (8.2-8.5 vs 0.5-0.75 ms at
    32x16x32x32, 1 thread), so one copy per node here is much cheaper. Written in differentiable ops:
    double backward works.
    """

    @staticmethod
    def forward(ctx, *xs: torch.Tensor) -> torch.Tensor:
        ctx.sizes = [x.shape[1] for x in xs]
        return torch.cat(xs, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        parts = grad.split(ctx.sizes, dim=1)
        fmt = CHANNELS_LAST if grad.dim() == 4 else torch.contiguous_format
        return tuple(p.contiguous(memory_format=fmt) if need else None
                     for p, need in zip(parts, ctx.needs_input_grad))


def cat_channels(xs: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along channels; each input's gradient comes back dense (see ``_CatChannels``)."""
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in xs):
        return torch.cat(xs, dim=1)
    return _CatChannels.apply(*xs)


def sum_pool3x3(x: torch.Tensor) -> torch.Tensor:
    """Σ over each 3x3 window (zero padding): dnas's kernel where it applies, else a depthwise conv (both
    faster than ``avg_pool2d`` fw + bw)."""
    if native.applies(x) and native.enabled():
        return native.box_sum3x3(x)
    c = x.shape[1]
    return F.conv2d(x, x.new_ones(c, 1, 3, 3), None, 1, 1, 1, c)


_COUNTS: dict[tuple, torch.Tensor] = {}


def inverse_counts(x: torch.Tensor) -> torch.Tensor:
    """1 / (number of in-image pixels of each 3x3 window): avg_pool(count_include_pad=False) = sum_pool * this."""
    key = (x.shape[-2], x.shape[-1], x.dtype, x.device)
    if key not in _COUNTS:
        ones = torch.ones(1, 1, *key[:2], dtype=x.dtype, device=x.device)
        _COUNTS[key] = 1.0 / F.avg_pool2d(ones, 3, 1, 1, divisor_override=1)
    return _COUNTS[key]
