"""Time one DARTS first-order search iteration (weight step + α step) per supernet implementation.

    .venv/bin/python benchmarks/supernet_step.py              # full size, CPU, 2 threads (~15 minutes)
    .venv/bin/python benchmarks/supernet_step.py --quick      # seconds-long smoke run
    .venv/bin/python benchmarks/supernet_step.py --device cuda --amp bf16

Prints one JSON line per (implementation, space): ``dnas`` (the fast path), ``dnas-reference`` (the
per-op loop) and, on NB201, ``xautodl`` (NAS-Bench-201's own ``TinyNetworkDarts``, ``pip install
-e '.[bench]'`` or ``pip install --no-deps xautodl==1.0.0``) timed with the same two steps as dnas,
and ``xautodl-shipped``, the same model with both steps as xautodl's DARTS search loop runs them.

By default (``--isolation process``) each implementation runs alone in a fresh process, ``--rounds``
times in rotating order: in one shared process the allocator state one model leaves behind changes
another's speed (up to 30% measured). ``--isolation none`` runs all in this process, interleaved
iteration by iteration. Either way compare ratios from one invocation only.

- weight step: forward (dnas: mixing weights frozen), cross-entropy, backward into w only, clip 5,
  SGD (momentum 0.9, wd 3e-4);
- α step (first order): forward on a second batch, ∇α only (``torch.autograd.grad``), Adam;
- FLOPs: convolutions and matmuls counted with ``torch.utils.flop_counter`` on the reference model
  (the same work for every implementation); the counter's grouped-conv weight-gradient formula is
  replaced by the exact one (torch 2.13 overcounts it by ``groups``);
- utilisation: achieved GFLOP/s of the whole iteration / fp32 matmul GFLOP/s timed in the same run;
- conv-only: the iteration's convolution calls (forward and backward) recorded, then replayed back to
  back on random tensors of the same shapes and layouts (``conv_only_ms``, ``conv_share`` of the
  iteration); the summary's ``speedup_bound_vs_*`` is the other's iteration / dnas's conv-only time, the
  speedup dnas would reach if everything but its convolutions were free;
- peak RSS: ``VmHWM`` of the implementation's own process (isolated), or of a fresh subprocess that
  builds the model and runs one iteration (in-process mode: one process reports its peak only once).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

try:
    from dnas.spaces import get_space
    from dnas.supernet import build_supernet, frozen_weights, native, weight_parameters
except ImportError:  # run from a fresh clone without an editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from dnas.spaces import get_space
    from dnas.supernet import build_supernet, frozen_weights, native, weight_parameters

IMPL_NAMES = {"dnas": "fast", "dnas-reference": "reference"}
SPACE_IMPLS = {"nb201": ("dnas", "dnas-reference", "xautodl", "xautodl-shipped"), "darts": ("dnas", "dnas-reference")}
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


# -- models ------------------------------------------------------------------------------------------
class Bench:
    """One implementation under test: a model, its two optimizers and the two timed steps."""

    def __init__(self, impl: str, model: nn.Module, weights: list[torch.Tensor], alphas: list[torch.Tensor],
                 logits: Callable[[torch.Tensor], torch.Tensor], amp: torch.dtype | None, device: str,
                 shipped: bool = False):
        self.impl, self.model, self.weights, self.alphas, self.logits = impl, model, weights, alphas, logits
        self.amp, self.device = amp, device
        self.shipped = shipped  # both steps call loss.backward(), as xautodl's own DARTS search loop does
        self.w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
        self.a_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None):
            return F.cross_entropy(self.logits(x), y)

    def w_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.shipped:
            self.model.zero_grad(set_to_none=True)
            self._loss(x, y).backward()
            nn.utils.clip_grad_norm_(self.weights, 5.0)
            self.w_opt.step()
            return
        self.w_opt.zero_grad(set_to_none=True)
        arch = getattr(self.model, "arch", None)  # dnas: mixing weights as constants, as its search's w step
        with arch.frozen() if arch is not None else contextlib.nullcontext():
            loss = self._loss(x, y)
        torch.autograd.backward(loss, inputs=self.weights)
        nn.utils.clip_grad_norm_(self.weights, 5.0)
        self.w_opt.step()

    def alpha_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.shipped:
            self.a_opt.zero_grad(set_to_none=True)
            self._loss(x, y).backward()
            self.a_opt.step()
            return
        self.a_opt.zero_grad(set_to_none=True)
        with frozen_weights(self.weights):  # as dnas's search does (no change for autograd's own ops)
            grads = torch.autograd.grad(self._loss(x, y), self.alphas)
        for a, g in zip(self.alphas, grads):
            a.grad = g
        self.a_opt.step()


def build_bench(impl: str, space_name: str, args: argparse.Namespace) -> Bench:
    torch.manual_seed(0)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    if impl in ("xautodl", "xautodl-shipped"):
        from xautodl.models.cell_searchs import TinyNetworkDarts  # optional dependency (the bench extra)

        # NAS-Bench-201's DARTS search setting: non-affine BN that tracks running statistics.
        model = TinyNetworkDarts(args.channels, args.nb201_cells, 4, 10, NB201_OPS, False, True).to(args.device)
        alphas = list(model.get_alphas())
        ids = {id(a) for a in alphas}
        weights = [p for p in model.parameters() if id(p) not in ids]
        return Bench(impl, model, weights, alphas, lambda x: model(x)[1], amp, args.device,
                     shipped=impl == "xautodl-shipped")
    space = get_space(space_name)
    cells = args.nb201_cells if space.family == "nb201" else args.darts_cells
    model = build_supernet(space, channels=args.channels, cells=cells, impl=IMPL_NAMES[impl]).to(args.device)
    return Bench(impl, model, weight_parameters(model), list(model.arch.parameters()), model, amp, args.device)


# -- FLOPs -------------------------------------------------------------------------------------------
def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each of grad-input and grad-weight costs what the forward costs (grouped convolutions included)."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def counted_flops(fn: Callable[[], None]) -> int:
    mode = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with mode:
        fn()
    return mode.get_total_flops()


# -- timing ------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def matmul_seconds(n: int, device: str, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return timed(lambda: a @ b, device)


_CONV_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


class _ConvRecorder(TorchDispatchMode):
    """Notes every convolution call (forward and backward) with its arguments' shapes and layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _CONV_OPS:
            self.calls.append((func, [("tensor", tuple(a.shape), a.stride(), a.dtype, a.device)
                                      if isinstance(a, torch.Tensor) else a for a in args], kwargs or {}))
        return func(*args, **(kwargs or {}))


def conv_only_seconds(b: "Bench", train: tuple, valid: tuple, device: str, repeats: int = 3) -> float:
    """One iteration's convolutions alone: every conv call of a weight + α step, replayed back to back
    (median of ``repeats``) on random tensors of the same shapes and layouts, no autograd. What the
    implementation would take if everything but its convolutions were free: the floor of its design."""
    recorder = _ConvRecorder()
    with recorder:
        b.w_step(*train)
        b.alpha_step(*valid)
    pool: dict[tuple, torch.Tensor] = {}  # one random tensor per (shape, stride, dtype, device)

    def materialise(a):
        if isinstance(a, tuple) and a and a[0] == "tensor":
            if a not in pool:
                pool[a] = torch.empty_strided(a[1], a[2], dtype=a[3], device=a[4]).normal_()
            return pool[a]
        return a

    calls = [(func, [materialise(a) for a in args], kwargs) for func, args, kwargs in recorder.calls]

    def replay() -> None:
        with torch.no_grad():
            for func, args, kwargs in calls:
                func(*args, **kwargs)

    replay()  # warm-up (oneDNN primitive caches)
    return statistics.median(timed(replay, device) for _ in range(repeats))


def device_label(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({model}, {os.cpu_count()} cores, {threads} threads)"


def peak_rss_mb() -> float:
    """Peak resident memory of this process image.

    Linux's ``ru_maxrss`` survives exec, so a child spawned by a big parent reports the parent's size;
    ``VmHWM`` belongs to the current address space only.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def worker_command(impl: str, space: str, args: argparse.Namespace, iters: int, warmup: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--space", space,
            "--batch", str(args.batch), "--channels", str(args.channels), "--resolution", str(args.resolution),
            "--nb201-cells", str(args.nb201_cells), "--darts-cells", str(args.darts_cells),
            "--threads", str(args.threads), "--device", args.device, "--iters", str(iters), "--warmup", str(warmup),
            "--matmul-n", str(args.matmul_n)] + (["--amp", args.amp] if args.amp else [])


def run_worker(impl: str, space: str, args: argparse.Namespace, iters: int, warmup: int) -> dict:
    """Run ``impl`` alone in a fresh process: its step times, the matmul rate there and its peak RSS."""
    proc = subprocess.run(worker_command(impl, space, args, iters, warmup), capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"worker exited with {proc.returncode}: {tail}"}


def batches(args: argparse.Namespace) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):  # a train batch for the weight step, a validation batch for the α step
        x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=g).to(args.device)
        y = torch.randint(0, 10, (args.batch,), generator=g).to(args.device)
        out.append((x, y))
    return tuple(out)


def run_space(space: str, args: argparse.Namespace, emit: Callable[[dict], None]) -> None:
    benches: list[Bench] = []
    for impl in args.impls:
        if impl not in SPACE_IMPLS[space]:
            continue
        try:
            benches.append(build_bench(impl, space, args))
        except Exception as e:  # xautodl missing or broken: say so, time the rest
            emit({"impl": impl, "space": space, "error": f"{type(e).__name__}: {e}".splitlines()[0]})
    if not benches:
        return
    (xt, yt), (xv, yv) = batches(args)
    label = device_label(args.device, args.threads)

    # Work per iteration, counted once on the reference computation (the same for every implementation).
    # Conv and matmul FLOPs are linear in the batch: count on a small slice of it and scale.
    n = min(args.batch, 8)
    work = {}
    for b in benches:
        if b.impl in ("dnas-reference", "xautodl") or len(benches) == 1:
            fwd = counted_flops(lambda: b.model(xt[:n]))
            step = counted_flops(lambda: b.w_step(xt[:n], yt[:n])) + counted_flops(lambda: b.alpha_step(xv[:n], yv[:n]))
            work[b.impl] = (fwd * args.batch // n, step * args.batch // n)
    ref_work = work.get("dnas-reference") or next(iter(work.values()))

    samples: dict[str, dict[str, list]] = {b.impl: {"w": [], "a": [], "it": [], "conv": [], "native": []}
                                           for b in benches}
    peak_gpu: dict[str, float] = {}
    peak_rss: dict[str, float] = {}
    matmul: list[float] = []
    if args.isolation == "process":
        benches = _run_isolated(space, args, benches, samples, matmul, peak_rss, peak_gpu, emit)
    else:
        _run_in_process(args, benches, samples, matmul, peak_gpu, (xt, yt), (xv, yv), space)
    if not benches:
        return

    mm = statistics.median(matmul)
    rows = {}
    for b in benches:
        s = samples[b.impl]
        it_s = statistics.median(s["it"])
        fwd, step = work.get(b.impl, ref_work)
        row = {"impl": b.impl, "space": space, "device": label, "amp": args.amp, "batch": args.batch,
               "channels": args.channels,
               "cells": args.nb201_cells if space == "nb201" else args.darts_cells,
               "resolution": args.resolution, "iters": args.iters,
               "w_step_ms": round(1e3 * statistics.median(s["w"]), 1),
               "alpha_step_ms": round(1e3 * statistics.median(s["a"]), 1),
               "iteration_ms": round(1e3 * it_s, 1),
               "images_per_s": round(args.batch / it_s, 2),
               "forward_gflop": round(fwd / 1e9, 3), "iteration_gflop": round(step / 1e9, 3),
               "achieved_gflops": round(step / it_s / 1e9, 2), "matmul_gflops": round(mm, 1),
               "utilisation": round(step / it_s / 1e9 / mm, 4),
               "conv_only_ms": round(1e3 * statistics.median(s["conv"]), 1),
               "conv_share": round(statistics.median(s["conv"]) / it_s, 3)}
        if b.impl.startswith("dnas"):  # whether the fast path's CPU kernels ran (native.status(); per process)
            row["native_kernels"] = "/".join(sorted(set(s["native"])))
        if args.device.startswith("cuda"):
            row["peak_gpu_mb"] = round(peak_gpu[b.impl], 1)
        row["peak_rss_mb"] = round(peak_rss[b.impl], 1) if b.impl in peak_rss else _memory(b.impl, space, args)
        rows[b.impl] = row
        emit(row)
    summary: dict = {"summary": space, "device": label}
    if "dnas" in rows:
        for other in ("dnas-reference", "xautodl", "xautodl-shipped"):
            if other in rows:
                key = other.replace("dnas-", "").replace("-", "_")
                summary[f"speedup_vs_{key}"] = round(rows["dnas"]["images_per_s"] / rows[other]["images_per_s"], 2)
                # The speedup dnas would reach if everything but its convolutions were free.
                summary[f"speedup_bound_vs_{key}"] = round(rows[other]["iteration_ms"] / rows["dnas"]["conv_only_ms"], 2)
                if rows["dnas"]["peak_rss_mb"] and rows[other]["peak_rss_mb"]:
                    summary[f"rss_ratio_vs_{key}"] = round(rows["dnas"]["peak_rss_mb"] / rows[other]["peak_rss_mb"], 2)
    emit(summary)


def _run_in_process(args: argparse.Namespace, benches: list[Bench], samples: dict, matmul: list[float],
                    peak_gpu: dict[str, float], train: tuple, valid: tuple, space: str) -> None:
    """All implementations in this process, interleaved iteration by iteration in rotating order."""
    (xt, yt), (xv, yv) = train, valid
    mm_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    total = args.warmup + args.iters
    progress = _progress(total, f"{space}", args.quiet)
    for it in range(total):
        order = benches[it % len(benches):] + benches[:it % len(benches)]  # rotate: nobody always goes first
        for b in order:
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(args.device)
            w = timed(lambda: b.w_step(xt, yt), args.device)
            a = timed(lambda: b.alpha_step(xv, yv), args.device)
            if args.device.startswith("cuda"):
                peak_gpu[b.impl] = max(peak_gpu.get(b.impl, 0.0), torch.cuda.max_memory_allocated(args.device) / 2**20)
            if it >= args.warmup:
                s = samples[b.impl]
                s["w"].append(w)
                s["a"].append(a)
                s["it"].append(w + a)
        if it >= args.warmup:
            matmul.append(2 * args.matmul_n ** 3 / matmul_seconds(args.matmul_n, args.device, mm_dtype) / 1e9)
        progress.update(1)
    progress.close()
    for b in benches:
        samples[b.impl]["conv"].append(conv_only_seconds(b, train, valid, args.device))
        samples[b.impl]["native"].append(native.status())


def _run_isolated(space: str, args: argparse.Namespace, benches: list[Bench], samples: dict, matmul: list[float],
                  peak_rss: dict[str, float], peak_gpu: dict[str, float], emit: Callable[[dict], None]) -> list[Bench]:
    """Each implementation alone in a fresh process, ``--rounds`` times in rotating order (drift cancels);
    no implementation inherits another's allocator state. Returns the implementations that ran."""
    rounds = max(1, min(args.rounds, args.iters))
    per_round = [args.iters // rounds + (1 if r < args.iters % rounds else 0) for r in range(rounds)]
    progress = _progress(rounds * len(benches), f"{space}", args.quiet)
    failed: set[str] = set()
    for r in range(rounds):
        order = benches[r % len(benches):] + benches[:r % len(benches)]
        for b in order:
            if b.impl in failed:
                continue
            res = run_worker(b.impl, space, args, per_round[r], args.warmup)
            progress.update(1)
            if "error" in res:
                failed.add(b.impl)
                emit({"impl": b.impl, "space": space, "error": res["error"]})
                continue
            s = samples[b.impl]
            s["w"].extend(res["w"])
            s["a"].extend(res["a"])
            s["it"].extend(w + a for w, a in zip(res["w"], res["a"]))
            matmul.extend(res["matmul_gflops"])
            s["conv"].append(res["conv_only"])
            s["native"].append(res["native_kernels"])
            peak_rss[b.impl] = max(peak_rss.get(b.impl, 0.0), res["peak_rss_mb"])
            if "peak_gpu_mb" in res:
                peak_gpu[b.impl] = max(peak_gpu.get(b.impl, 0.0), res["peak_gpu_mb"])
    progress.close()
    return [b for b in benches if b.impl not in failed]


def _memory(impl: str, space: str, args: argparse.Namespace) -> float | None:
    if args.memory == "probe":  # a fresh process: one weight + α step
        v = run_worker(impl, space, args, iters=1, warmup=0).get("peak_rss_mb")
        return None if v is None else round(v, 1)
    if args.memory == "process":  # whole-process peak so far: an upper bound, cheap (used by --quick)
        return round(peak_rss_mb(), 1)
    return None


class _NoProgress:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, desc: str, quiet: bool):
    if quiet:
        return _NoProgress()
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="it", file=sys.stderr)
    except ImportError:
        return _NoProgress()


def _worker(args: argparse.Namespace) -> None:
    """One implementation in this (fresh) process: warm-up, then ``--iters`` timed weight + α steps."""
    try:
        b = build_bench(args.worker, args.space[0], args)
    except Exception as e:  # xautodl missing or broken
        print(json.dumps({"error": f"{type(e).__name__}: {e}".splitlines()[0]}))
        return
    (xt, yt), (xv, yv) = batches(args)
    mm_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    w_times, a_times, matmul = [], [], []
    for it in range(args.warmup + args.iters):
        w = timed(lambda: b.w_step(xt, yt), args.device)
        a = timed(lambda: b.alpha_step(xv, yv), args.device)
        if it >= args.warmup:
            w_times.append(w)
            a_times.append(a)
            matmul.append(2 * args.matmul_n ** 3 / matmul_seconds(args.matmul_n, args.device, mm_dtype) / 1e9)
    out = {"w": w_times, "a": a_times, "matmul_gflops": matmul, "peak_rss_mb": peak_rss_mb(),
           "native_kernels": native.status()}
    if args.device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(args.device) / 2**20
    out["conv_only"] = conv_only_seconds(b, (xt, yt), (xv, yv), args.device)  # after the peaks are read
    print(json.dumps(out))


def add_size_args(p: argparse.ArgumentParser) -> None:
    """The supernet / network sizes and the device, as every benchmark here takes them (defaults: the issue's
    C=16, batch 64, 32x32, NB201 N=5, 8 DARTS cells, 2 CPU threads)."""
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--nb201-cells", type=int, default=5, help="NB201 N (cells per stage)")
    p.add_argument("--darts-cells", type=int, default=8, help="DARTS-space layers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", nargs="+", choices=("nb201", "darts"), default=["nb201", "darts"])
    p.add_argument("--impls", nargs="+", choices=("dnas", "dnas-reference", "xautodl", "xautodl-shipped"),
                   default=["dnas", "dnas-reference", "xautodl", "xautodl-shipped"],
                   help="xautodl: its supernet with our steps (∇w only, then ∇α only); xautodl-shipped: both "
                        "steps as its DARTS search loop runs them (loss.backward(): all gradients)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per implementation (after warm-up)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first (default: 2 per fresh process, 1 in-process)")
    add_size_args(p)
    p.add_argument("--amp", choices=("bf16",), default=None, help="autocast dtype (CUDA)")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the reference fp32 matmul")
    p.add_argument("--isolation", choices=("process", "none"), default=None,
                   help="process: each implementation alone in a fresh process per round (default: no "
                        "implementation inherits another's allocator state); none: all in this process, "
                        "interleaved iteration by iteration; --quick's default)")
    p.add_argument("--rounds", type=int, default=2,
                   help="with --isolation process: the iterations are split over this many rounds, each "
                        "running every implementation once, in rotating order")
    p.add_argument("--memory", choices=("probe", "process", "off"), default="probe",
                   help="with --isolation none: peak RSS per implementation from a fresh subprocess (probe), "
                        "this process, or not at all (isolated runs report their own process's peak)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 iterations, 1 thread: a smoke run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.channels, args.resolution = 8, 4, 16
        args.nb201_cells, args.darts_cells, args.iters, args.warmup, args.matmul_n = 1, 3, 2, 1, 256
        args.memory, args.quiet, args.threads = "process", True, 1
        args.isolation = args.isolation or "none"
    args.isolation = args.isolation or "process"
    if args.warmup is None:
        args.warmup = 2 if args.isolation == "process" and not args.worker else 1
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or args.rounds < 1:
        p.error("--iters >= 1, --warmup >= 0, --batch >= 1, --rounds >= 1")
    return args


def run_benchmark(benchmark: str, args: argparse.Namespace, run_space: Callable[..., None], **extra) -> int:
    """Print a run's header line, then ``run_space(space, args, emit)`` for every ``--space``; exit code 2 (after
    an error line) when ``--device cuda`` has no CUDA. Shared with the sibling benchmarks."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"error": "--device cuda but CUDA is not available"}))
        return 2

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)

    emit({"benchmark": benchmark, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
          "device": device_label(args.device, args.threads), "threads": args.threads, **extra,
          "python": platform.python_version(), "load_avg": [round(v, 2) for v in os.getloadavg()]})
    for space in args.space:
        run_space(space, args, emit)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        _worker(args)
        return 0
    return run_benchmark("supernet_step", args, run_space)


if __name__ == "__main__":
    sys.exit(main())
