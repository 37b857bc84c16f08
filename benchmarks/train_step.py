"""Time one training-from-scratch step of the stand-alone networks, NCHW against channels-last.

    .venv/bin/python benchmarks/train_step.py                       # NB201 + DARTS, CPU, 2 threads
    .venv/bin/python benchmarks/train_step.py --threads 1 --clock cpu  # CPU time: robust on a shared machine
    .venv/bin/python benchmarks/train_step.py --quick               # seconds-long smoke run
    .venv/bin/python benchmarks/train_step.py --device cuda

Prints one JSON line per (implementation, space) and a summary per space. ``channels_last`` is the
network as ``dnas train`` builds it (activations channels-last from the stem on); ``nchw`` is the same
network with ``memory_format = torch.contiguous_format``, loaded from the same ``state_dict``.

- step: ``dnas.evaluate.train.train_one_epoch`` on one batch (forward in train mode, cross-entropy plus the
  auxiliary head's, backward, gradient clipping and SGD as the space's CIFAR-10 preset sets them; DARTS
  spaces with drop-path at half the preset's final value, as in mid-training);
- eval: a forward pass in eval mode under ``torch.no_grad`` (what ``evaluate`` runs per batch);
- both implementations live in this process and are timed interleaved, iteration by iteration in rotating
  order, so drift in the machine's load hits both alike; the rows give medians. Compare ratios from one
  invocation only.
- ``--clock cpu`` times with ``time.process_time`` (CPU seconds of this process): at 1 thread it ignores
  time lost to other jobs on a shared machine; at more threads it also counts OpenMP workers spinning.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

try:
    from dnas.evaluate import build_network
    from dnas.evaluate.distributed import DistContext
    from dnas.evaluate.train import preset, train_one_epoch
    from dnas.spaces import get_space
except ImportError:  # run from a fresh clone without an editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from dnas.evaluate import build_network
    from dnas.evaluate.distributed import DistContext
    from dnas.evaluate.train import preset, train_one_epoch
    from dnas.spaces import get_space

sys.path.insert(0, str(Path(__file__).resolve().parent))
from supernet_step import _progress, add_size_args, device_label, run_benchmark  # noqa: E402  (the sibling benchmark's helpers)

IMPLS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# A typical NB201 cell (3x3 and 1x1 convs, skip, pool) and DARTS-V2 (Liu et al., 2019).
NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


class Bench:
    """One layout under test: the network, its optimizer and the timed training step / eval forward."""

    def __init__(self, impl: str, space_name: str, state: dict | None, args: argparse.Namespace):
        space = get_space(space_name)
        darts = space.family == "darts"
        p = preset(space.name, "cifar10", args.resolution)
        self.aux_weight, self.grad_clip = p["auxiliary_weight"], p["grad_clip"]
        torch.manual_seed(0)
        self.model = build_network(space, space.parse(DARTS_V2 if darts else NB201_ARCH), channels=args.channels,
                                   layers=args.darts_cells if darts else args.nb201_cells,
                                   auxiliary=self.aux_weight > 0)
        self.model.memory_format = IMPLS[impl]
        if state is not None:
            self.model.load_state_dict(state)
        self.model.to(args.device)
        if darts:
            self.model.drop_path_prob = p["drop_path"] / 2
        self.impl = impl
        self.ctx = DistContext(device=torch.device(args.device))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=p["lr"], momentum=p["momentum"],
                                   nesterov=p["nesterov"], weight_decay=p["weight_decay"])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        train_one_epoch(self.model, [(x, y)], self.opt, self.ctx, aux_weight=self.aux_weight,
                        grad_clip=self.grad_clip)

    def eval(self, x: torch.Tensor) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(x)


def timer(args: argparse.Namespace) -> Callable[[Callable[[], None]], float]:
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def timed(fn: Callable[[], None]) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return clock() - t0

    return timed


def run_space(space: str, args: argparse.Namespace, emit: Callable[[dict], None]) -> None:
    benches: list[Bench] = []
    for impl in args.impls:
        benches.append(Bench(impl, space, benches[0].model.state_dict() if benches else None, args))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=g).to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(args.device)
    timed = timer(args)
    samples = {b.impl: {"step": [], "eval": []} for b in benches}
    progress = _progress(args.warmup + args.iters, space, args.quiet)
    for it in range(args.warmup + args.iters):
        for b in benches[it % len(benches):] + benches[:it % len(benches)]:  # rotate: nobody always goes first
            step = timed(lambda: b.step(x, y))
            ev = timed(lambda: b.eval(x))
            if it >= args.warmup:
                samples[b.impl]["step"].append(step)
                samples[b.impl]["eval"].append(ev)
        progress.update(1)
    progress.close()
    label = device_label(args.device, args.threads)
    rows = {}
    for b in benches:
        s = samples[b.impl]
        step, ev = statistics.median(s["step"]), statistics.median(s["eval"])
        rows[b.impl] = row = {
            "impl": b.impl, "space": space, "device": label, "threads": args.threads, "clock": args.clock,
            "batch": args.batch, "channels": args.channels,
            "cells": args.nb201_cells if get_space(space).family == "nb201" else args.darts_cells,
            "resolution": args.resolution, "auxiliary": b.aux_weight > 0,
            "drop_path": getattr(b.model, "drop_path_prob", 0.0), "iters": args.iters,
            "step_ms": round(1e3 * step, 1), "step_ms_min": round(1e3 * min(s["step"]), 1),
            "images_per_s": round(args.batch / step, 2),
            "eval_ms": round(1e3 * ev, 1), "eval_images_per_s": round(args.batch / ev, 2)}
        emit(row)
    if "nchw" in rows and "channels_last" in rows:
        a, b = rows["nchw"], rows["channels_last"]
        emit({"summary": space, "device": label, "threads": args.threads, "clock": args.clock,
              "step_speedup": round(a["step_ms"] / b["step_ms"], 3),
              "eval_speedup": round(a["eval_ms"] / b["eval_ms"], 3)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", nargs="+", choices=("nb201", "darts"), default=["nb201", "darts"])
    p.add_argument("--impls", nargs="+", choices=tuple(IMPLS), default=list(IMPLS))
    p.add_argument("--iters", type=int, default=10, help="timed iterations per implementation (after warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    add_size_args(p)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: time.perf_counter; cpu: time.process_time (CPU only)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 iterations, 1 thread: a smoke run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.channels = 8, 4
        args.nb201_cells, args.darts_cells, args.iters, args.warmup = 1, 3, 2, 1
        args.quiet, args.threads = True, 1
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--iters >= 1, --warmup >= 0, --batch >= 1")
    if args.clock == "cpu" and args.device.startswith("cuda"):
        p.error("--clock cpu times host CPU seconds: use --clock wall on CUDA")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    return run_benchmark("train_step", args, run_space, clock=args.clock)


if __name__ == "__main__":
    sys.exit(main())
