"""Named, versioned reproduction protocols: which supernets to train, which selectors to run on them,
and the papers' numbers to put next to the results.

A protocol is data (``Protocol``); each is made by a function whose docstring says why its settings
are what they are. Bump ``version`` whenever a setting changes: an output directory remembers the
protocol it was made with and refuses to mix results of two versions.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import DnasError
from ..io import to_json
from ..search import SearchConfig, make_config


@dataclass(frozen=True)
class PaperNumber:
    """A paper's NAS-Bench-201 test accuracy (%) for one method; None = not reported."""

    cifar10: float | None = None
    cifar100: float | None = None
    imagenet16: float | None = None
    source: str = ""


# (mode, method) -> the number the paper reports for that combination. Zeros needs no supernet: mode None.
# Sources: ../shared/docs/seed-methods.md §1.2, §6 and §8.6.
PAPER: dict[tuple[str | None, str], PaperNumber] = {
    ("darts1", "magnitude"): PaperNumber(
        54.30, 15.61, 16.32,
        "DARTS (1st order) on NB201: C10 = 100 - 45.7 (DARTS-PT Table 4); C100 / IN16 from the NAS-Bench-201 "
        "paper's DARTS-V1 row, which equals the all-skip_connect cell"),
    ("darts1", "pt"): PaperNumber(
        88.11, None, None, "DARTS-PT Table 4 (C10 error 11.89); C100 / IN16 only as plots (Fig. 4)"),
    ("fixed", "pt"): PaperNumber(
        93.80, None, None, "DARTS-PT Table 4, fix α (C10 error 6.20); C100 / IN16 not reported"),
    ("fixed", "magnitude"): PaperNumber(source="not reported (α is its random init)"),
    ("darts1", "ostr"): PaperNumber(source="OStr-DARTS: NB201 numbers not reachable (§4, §8.2)"),
    (None, "zeros"): PaperNumber(source="ZEROS / FreeDARTS: NB201 table not reachable (§5.2, §8.3)"),
}

# Readable names of the (mode, method) combinations.
LABELS: dict[tuple[str | None, str], str] = {
    ("darts1", "magnitude"): "DARTS + magnitude",
    ("darts1", "pt"): "DARTS + PT (DARTS-PT)",
    ("darts1", "ostr"): "DARTS + OStr (OStr-DARTS)",
    ("fixed", "magnitude"): "fix α + magnitude",
    ("fixed", "pt"): "fix α + PT (DARTS-PT fix α)",
    (None, "zeros"): "ZEROS at init (training-free)",
}


def label(mode: str | None, method: str) -> str:
    return LABELS.get((mode, method), method if mode is None else f"{mode} + {method}")


@dataclass(frozen=True)
class Protocol:
    """One grid: every mode x seed trains a supernet; ``selections[mode]`` run on it; zeros per seed.

    Magnitude selection comes with every search (``dnas search`` writes it), so it needs no job.
    """

    name: str
    version: int
    summary: str
    dataset: str
    channels: int
    cells: int
    epochs: int
    space: str = "nb201"
    subset: int | None = None
    resolution: int | None = None
    batch_size: int = 64
    train_portion: float = 0.5
    impl: str = "reference"
    device: str = "auto"
    modes: tuple[str, ...] = ("darts1", "fixed")
    seeds: tuple[int, ...] = (0, 1, 2)
    selections: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    zeros: bool = True
    search: Mapping[str, Any] = field(default_factory=dict)   # further SearchConfig fields (e.g. eval_every)
    rationale: str = ""                                       # the making function's docstring

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    def methods(self, mode: str) -> tuple[str, ...]:
        """Selection methods reported for a mode's supernet, magnitude first."""
        return ("magnitude",) + tuple(m for m in self.selections.get(mode, ()) if m != "magnitude")

    def options(self, method: str) -> dict[str, Any]:
        return dict(self.method_options.get(method, {}))

    def search_config(self, mode: str, seed: int, *, data_dir: str | None = None,
                      device: str | None = None) -> SearchConfig:
        """The search settings of one supernet: the mode's defaults, then the protocol's settings."""
        fields = {k: getattr(self, k) for k in ("space", "dataset", "epochs", "batch_size", "channels", "cells",
                                                "subset", "resolution", "train_portion", "impl")}
        cfg = make_config(mode, **{**fields, "data_dir": data_dir, "seed": seed, "device": device or self.device,
                                   **self.search})
        cfg.check()
        return cfg

    def zeros_options(self, seed: int, device: str | None = None) -> dict[str, Any]:
        """ZEROS at init (no data, no training) on the protocol's supernet shape, unless the protocol's
        ``zeros`` options name another (channels, cells, resolution)."""
        classes = {"cifar100": 100}.get(self.dataset, 10)
        channels_in = {"digits": 1}.get(self.dataset, 3)
        res = self.resolution or {"cifar10": 32, "cifar100": 32, "digits": 8, "synthetic": 8}.get(self.dataset, 32)
        opts = {"space": self.space, "channels": self.channels, "cells": self.cells, "resolution": res,
                "num_classes": classes, "in_channels": channels_in, "seed": seed,
                "device": device or self.device}
        opts.update(self.options("zeros"))
        return opts

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("rationale")
        return json.loads(to_json(d))  # tuples as lists: equal to what protocol.json holds

    def settings(self) -> dict[str, Any]:
        """What shapes the results (everything but the seeds): two runs may share an output directory
        only if these are equal."""
        d = self.to_json()
        d.pop("seeds")
        d.pop("summary")
        return d


PROTOCOLS: dict[str, Callable[[], Protocol]] = {}


def protocol(fn: Callable[[], Protocol]) -> Callable[[], Protocol]:
    """Register a protocol-making function under its protocol's name; its docstring is the rationale."""
    p = fn()
    PROTOCOLS[p.name] = lambda: dataclasses.replace(fn(), rationale=inspect.getdoc(fn) or "")
    return fn


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]()
    except KeyError:
        raise DnasError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})") from None


@protocol
def smoke() -> Protocol:
    """Seconds, for tests: the synthetic 8x8 data set, a C=4, N=1 supernet, one search epoch, PT with
    one tuning epoch per decision and one scoring batch, OStr on one batch. Exercises every job kind."""
    return Protocol(
        name="smoke", version=1, summary="seconds-long end-to-end check on synthetic data (not a result)",
        dataset="synthetic", subset=64, channels=4, cells=1, epochs=1, batch_size=32, device="cpu",
        seeds=(0, 1),
        selections={"darts1": ("pt", "ostr"), "fixed": ("pt",)},
        method_options={"pt": {"proj_intv": 1, "max_batches": 1}, "ostr": {"batches": 1},
                        "zeros": {"rounds": 1}},
        search={"eval_every": 1})


@protocol
def nb201_cpu() -> Protocol:
    """CPU scale: the whole grid (2 supernets x 3 seeds, PT on both, OStr, ZEROS) in about an hour on
    2 cores (``--workers 2``, one thread per job), on CIFAR-10 from the shared shards.

    Settings. NB201 supernet with C=8 and N=1 (one cell per stage: 3 searched cells plus the two
    residual reductions) on 16x16 images; 20,000 class-balanced training images split 10k (w) / 10k (α);
    batch 64; 25 search epochs with the DARTS recipe; α-free (fixed) and first-order DARTS supernets.
    PT tunes ``proj_intv`` = 1 epoch between its 6 decisions (6 tuning epochs), keeping the paper's
    search : tuning ratio (100 : 25 = 25 : 6); candidates are scored on the whole 10k α half as in the
    paper. OStr: one pass over the α half (its defaults). ZEROS is training-free and costs seconds at
    any size, so it scores the paper's supernet shape (C=16, N=5, 32x32) at init. The supernet
    accuracy is checked on the α half every 5 epochs.

    Measured on this machine (2 AMD EPYC cores, torch 2.13 CPU, reference supernet, one thread), while
    other jobs shared it (load 6-15 on 2 cores): wall times were 2-4x inflated, so process CPU seconds
    stand in for the wall time of a job that has a core to itself (the last epochs, run after the load
    dropped, took 28 s + 7 s of evaluation per epoch, below the CPU-time estimate).
    - CPU s per iteration (batch 64; darts1 = α step + w step; fixed = w step) / per forward image:
      C8 N1 16px 0.21-0.25 / 0.12-0.13 / 0.69 ms;  C8 N2 16px 0.48-0.50 / 0.24-0.25 / 1.3 ms;
      C16 N1 16px 0.50-0.55 / 0.24-0.25 / 1.3-1.6 ms;  C8 N1 32px 0.82-0.87 / 0.38-0.48 / 2.5-2.8 ms.
      So N=2, C=16 or 32x32 would each double or triple the grid (to 2-3 hours).
    - darts1 supernet, seed 0, C8 N1 16px: with 10k images (5k/5k), 20 epochs, valid accuracy
      28.5 -> 42.5 (epoch 11) -> 47.4 % (train 48.7 %), 20 CPU s per epoch; with 20k images (10k/10k),
      25 epochs, 29.5 -> 48.9 (epoch 11) -> 57.7 % (train 58.6 %), 1038 CPU s in all with an
      evaluation every epoch. Neither over-fits; more data buys more than more epochs, so 20k / 25.
    - Selection on the 10k supernet: PT (proj_intv 1) 158 CPU s, OStr 9 CPU s, ZEROS 2 CPU s
      (C8 N1), 7 s at C16 N5 32px; starting a job process costs about 2 CPU s.
    - A 1-epoch dry run of this protocol through the harness (1 seed, all 6 jobs, PT in full):
      627 CPU s, of which PT on both supernets about 515.
    Estimate for the grid: per seed darts1 search ~935, fixed search ~535, both PTs ~515, OStr ~20,
    ZEROS ~8 CPU s, about 2,000 in all; 3 seeds ~6,000 CPU s, i.e. 50-60 min on 2 workers with the
    searches first and the selections after. The settings were chosen from cost and supernet accuracy
    alone; no selection result entered the choice.
    """
    return Protocol(
        name="nb201-cpu", version=1,
        summary="CPU-scale NB201 search on CIFAR-10: C=8, N=1, 16x16, 10k/10k images, 25 epochs",
        dataset="cifar10", channels=8, cells=1, resolution=16, subset=20000, epochs=25, batch_size=64,
        device="cpu", seeds=(0, 1, 2),
        selections={"darts1": ("pt", "ostr"), "fixed": ("pt",)},
        method_options={"pt": {"proj_intv": 1}, "zeros": {"channels": 16, "cells": 5, "resolution": 32}},
        search={"eval_every": 5})


@protocol
def nb201_paper() -> Protocol:
    """The papers' NAS-Bench-201 setting, for a GPU.

    DARTS-PT's NB201 scripts (``darts-201.sh`` then ``darts-proj-201.sh --resume_epoch 100``): CIFAR-10
    at 32x32, the 50k training images split 25k (w) / 25k (α), the full C=16, N=5 supernet, batch 64,
    100 search epochs with the DARTS recipe (SGD 0.025 cosine to 0.001, Adam 3e-4 for α), then PT with
    ``proj_intv`` 5, i.e. 25 tuning epochs at lr 0.0025 (spec §1.1), on a first-order DARTS supernet and
    on a fix-α one. Four seeds, as DARTS-PT's averages. OStr and ZEROS run with their defaults (OStr one
    pass over the α half; ZEROS on the C=16, N=5 supernet at init).

    Version 2 trains the fast supernet (version 1, never run, the reference loop): the two compute the
    same function (tests/test_fast.py, on CPU and, with DNAS_TEST_DEVICE=cuda, on a GPU). On an H100 the
    fast bilevel step was 1.12x the reference's speed with half its GPU memory (benchmarks/README.md,
    2026-11-23); at ~184 ms per step one 100-epoch search takes about 2 hours there.
    """
    return Protocol(
        name="nb201-paper", version=2, summary="DARTS-PT's NB201 setting: C=16, N=5, 32x32, 25k/25k, 100 epochs",
        dataset="cifar10", channels=16, cells=5, epochs=100, batch_size=64, device="auto", impl="fast",
        seeds=(0, 1, 2, 3),
        selections={"darts1": ("pt", "ostr"), "fixed": ("pt",)},
        method_options={"pt": {"proj_intv": 5}},
        search={"eval_every": 10})
