"""Does the supernet rank architectures like the ground truth does? (How Does Supernet Help in NAS?, §2)

Each sampled architecture is evaluated with the supernet's inherited weights: one-hot mixing weights
(mixed ops then compute only the chosen path), BN statistics re-estimated on B training batches
("BN sanitize"), accuracy on the validation split with BN in eval mode. The supernet's BN buffers are
restored after every architecture, so the order of evaluation never matters.

Streaming: one supernet, one architecture at a time; every result is appended to
``RUN/analysis/ranking.jsonl`` at once, and a rerun skips the architectures already there.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import chain, count, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checks import check_seed
from ..errors import DnasError
from ..io import append_jsonl, atomic_write_json, atomic_write_text, jsonable, read_json, read_jsonl, to_json
from ..rundir import BeforeFirstWrite, require_finished, run_lock
from ..schema import check_fields
from ..spaces import Genotype, Space
from . import metrics as M
from .table import TruthTable, load_truth, read_arch_list

Batch = tuple[torch.Tensor, torch.Tensor]
TOP_FRACTIONS = (0.01, 0.05, 0.10)
RECORDS, SETTINGS, SUMMARY, FIGURE = "ranking.jsonl", "ranking.settings.json", "ranking.json", "ranking.png"


# -- BN recalibration ------------------------------------------------------------------------------
def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BN layers that keep running statistics (the only ones recalibration can change)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def preserved_bn(model: nn.Module) -> Iterator[None]:
    """Snapshot every BN buffer and momentum; restore them on exit."""
    saved = [(bn, bn.momentum, {k: b.detach().clone() for k, b in bn.named_buffers(recurse=False)})
             for bn in batch_norms(model)]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, momentum, bufs in saved:
                bn.momentum = momentum
                for k, b in bn.named_buffers(recurse=False):
                    b.copy_(bufs[k])


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Batch]) -> int:
    """Reset BN running statistics and re-estimate them as the plain average over ``batches``.

    momentum=None makes PyTorch keep a cumulative average, so every batch counts equally (the
    paper's ``set_running_statistics``). Only BN buffers change: no gradients, no parameter updates.
    Returns the number of batches forwarded. Callers restore momentum (see :func:`preserved_bn`).
    """
    for bn in batch_norms(model):
        bn.reset_running_stats()
        bn.momentum = None
    was_training = model.training
    model.train()
    n = 0
    for x, _ in batches:
        model(x)
        n += 1
    model.train(was_training)
    return n


@dataclass
class ArchEval:
    acc: float
    loss: float
    images: int
    seconds: float


def evaluate_genotype(model: nn.Module, space: Space, genotype: Genotype, *, valid: Iterable[Batch],
                      recalibration: Callable[[], Iterable[Batch]] | None) -> ArchEval:
    """Accuracy of one architecture with inherited weights; the supernet is left exactly as it was."""
    if space != model.arch.space:  # the mask's columns would name another op list than the supernet computes
        raise DnasError(f"a {space.name} genotype cannot be evaluated on a {model.arch.space.name} supernet")
    t0 = time.time()
    device = next(iter(model.arch.parameters())).device
    weights = {ct: m.to(device) for ct, m in space.genotype_mask(genotype).items()}
    correct, loss_sum, seen = 0, 0.0, 0
    was_training = model.training
    with torch.no_grad(), preserved_bn(model), model.arch.overriding(weights):
        if recalibration is not None:
            recalibrate_bn(model, recalibration())
        model.eval()
        for x, y in valid:
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    model.train(was_training)
    if seen == 0:
        raise DnasError("the validation split gave no batches to evaluate on")
    return ArchEval(correct / seen, loss_sum / seen, seen, time.time() - t0)


# -- choosing the architectures --------------------------------------------------------------------
def sample_rows(table: TruthTable, k: int | None, seed: int) -> tuple[np.ndarray, str]:
    """K rows drawn uniformly without replacement from the table's unique architectures.

    One seeded permutation of the population, then its first K: a larger K extends a smaller one, so a
    ranking can grow without re-evaluating what it already has.
    """
    pop = table.unique_rows()
    what = (f"iso-class representatives ({pop.size})" if table.iso_class is not None
            else f"table rows ({pop.size})")
    if k is None:
        k = pop.size
    if k < 2:
        raise DnasError(f"--samples must be at least 2 (rank correlation needs pairs), got {k}")
    if k > pop.size:
        raise DnasError(f"--samples {k} exceeds the {pop.size} {what.split(' (')[0]} of {table.path}")
    perm = np.random.default_rng(seed).permutation(pop.size)
    return pop[perm[:k]], what


def candidates(table: TruthTable, *, samples: int | None, seed: int,
               archs_file: str | None) -> tuple[list[tuple[Genotype, float]], str]:
    """(genotype, ground truth) pairs to evaluate, and a phrase naming where they came from."""
    if archs_file is not None:
        out, listed = [], set()
        for g in read_arch_list(archs_file, table.space):
            if str(g) in listed:  # it would count twice in τ, ρ and top-k
                raise DnasError(f"{archs_file}: architecture {g} is listed twice")
            listed.add(str(g))
            truth = table.lookup(g)
            if truth is None:
                raise DnasError(f"{archs_file}: architecture {g} is not in {table.path}")
            out.append((g, truth))
        if samples is not None:
            out = out[:samples]
        if len(out) < 2:
            raise DnasError("rank correlation needs at least 2 architectures")
        return out, f"user list {archs_file} ({len(out)})"
    rows, what = sample_rows(table, samples, seed)
    return [(table.genotypes[r], float(table.acc[r])) for r in rows], what


# -- persistence ---------------------------------------------------------------------------------
RECORD_FIELDS = {"arch": str, "supernet_acc": float, "supernet_loss": float, "truth": float, "seconds": float}


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records already written, each checked (``RECORD_FIELDS``); a torn last line (the process died
    mid-write) is dropped from the file too, so that the next record is appended after the last whole one."""
    if not path.exists():
        return []
    out = list(read_jsonl(path, check=lambda record, where: check_fields(record, RECORD_FIELDS, where,
                                                                         required=("arch",))))
    if len(out) < sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()):
        atomic_write_text(path, "".join(to_json(r) + "\n" for r in out))
    return out


@dataclass
class RankingSettings:
    samples: int | None = 100
    seed: int = 0
    table: str | None = None
    arch_column: str | None = None
    acc_column: str | None = None
    archs_file: str | None = None
    bn_batches: int = 10
    bn_batch_size: int | None = None   # None: the search batch size
    valid_batches: int | None = None   # None: the whole validation split

    def check(self) -> None:
        check_seed("--seed", self.seed, minimum=0)  # numpy's generators take no negative seed
        if self.bn_batches < 0:
            raise DnasError(f"--bn-recalibrate must be >= 0, got {self.bn_batches}")
        for name in ("bn_batch_size", "valid_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise DnasError(f"--{name.replace('_', '-')} must be >= 1, got {v}")

    def identity(self) -> dict[str, Any]:
        """Settings that change a record's value; ``samples`` is not one (K extends a prefix)."""
        d = asdict(self)
        d.pop("samples")
        return d


# -- the ranking -----------------------------------------------------------------------------------
def _loaders(run: Any, settings: RankingSettings) -> tuple[Callable[[], Iterable[Batch]] | None, Callable[[], Iterable[Batch]]]:
    from ..data import BatchLoader
    tr = run.train
    if settings.bn_batches == 0:
        recal = None
    else:
        bs = settings.bn_batch_size or tr.batch_size
        # The same B augmented training batches for every architecture, so they differ only by their weights.
        # Full batches only (each counts equally in the average), from further epochs when B exceeds one epoch.
        loader = BatchLoader(tr.dataset, tr.indices, bs, augment=True, drop_last=True, seed=run.config.seed,
                             stream=3, device=run.device)
        n = settings.bn_batches
        recal = lambda: islice(chain.from_iterable(loader.epoch(e) for e in count()), n)  # noqa: E731
    ve, vb = run.valid_eval, settings.valid_batches
    valid = (lambda: ve.epoch(0)) if vb is None else (lambda: islice(ve.epoch(0), vb))
    return recal, valid


def rank_run(run_dir: str | Path, settings: RankingSettings, *, device: str | None = None, force: bool = False,
             quiet: bool = False, plot: bool = True) -> dict[str, Any]:
    """Evaluate the sampled architectures (resuming), then write ``analysis/ranking.json`` and the scatter plot."""
    from ..search import open_run
    settings.check()
    run_dir = Path(run_dir)
    out = run_dir / "analysis"
    run = open_run(run_dir, device=device)
    require_finished(run_dir)
    table = load_truth(settings.table, run.space, settings.arch_column, settings.acc_column,
                       dataset=run.config.dataset)
    todo, population = candidates(table, samples=settings.samples, seed=settings.seed,
                                  archs_file=settings.archs_file)

    # The run must stay as it is (no search --resume/--force meanwhile); one ranking at a time appends records.
    with run_lock(run_dir, shared=True), \
            run_lock(run_dir, name="analysis/.ranking.lock", what=f"{run_dir} (ranking)"):
        out.mkdir(parents=True, exist_ok=True)
        ident = {**settings.identity(), "table": table.path, "arch_column": table.arch_column,
                 "acc_column": table.acc_column}
        if (out / SETTINGS).exists() and not force and read_json(out / SETTINGS) != ident:
            raise DnasError(f"{out / RECORDS} was made with other settings; use --force to start the ranking over")
        done = {} if force else {r["arch"]: r for r in read_records(out / RECORDS)}  # checked before any write

        def start() -> None:
            """Before the first record: --force discards the old ones only now that a new one is computed (a
            start that fails, e.g. out of memory, or is interrupted keeps them); then the settings they are for."""
            if force and (out / RECORDS).exists():
                (out / RECORDS).unlink()  # before the settings: old records never sit under new settings
            atomic_write_json(out / SETTINGS, ident)

        begin = BeforeFirstWrite(start, kept=f"{out / RECORDS} still holds the old records" if force else "")

        recal, valid = _loaders(run, settings)
        model = run.model
        left = [(g, t) for g, t in todo if str(g) not in done]
        try:
            for g, truth in tqdm(left, desc="ranking", disable=quiet, initial=len(todo) - len(left), total=len(todo)):
                r = evaluate_genotype(model, run.space, g, valid=valid(), recalibration=recal)
                rec = {"arch": str(g), "supernet_acc": r.acc, "supernet_loss": r.loss, "truth": truth,
                       "seconds": round(r.seconds, 4)}
                begin()
                append_jsonl(out / RECORDS, rec)
                done[str(g)] = rec
        except KeyboardInterrupt as e:
            begin.mark(e)
            raise
        begin()
        records = [done[str(g)] for g, _ in todo]
        summary = summarize(records, table, population=population)
        summary.update(run=str(run_dir), space=run.space.name, device=str(run.device), settings=asdict(settings),
                       bn_batch_size=(settings.bn_batch_size or run.train.batch_size) if settings.bn_batches else None,
                       valid_images=_valid_images(run, settings))
        if plot:
            summary["figure"] = _maybe_plot(records, summary, out / FIGURE)
        summary = jsonable(summary)
        atomic_write_json(out / SUMMARY, summary)
        return summary


def _valid_images(run: Any, settings: RankingSettings) -> int:
    n = len(run.valid_eval.indices)
    vb = settings.valid_batches
    return n if vb is None else min(n, vb * run.valid_eval.batch_size)


def _maybe_plot(records: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> str | None:
    from ._mpl import have_matplotlib
    if not have_matplotlib():
        import sys
        sys.stderr.write("dnas: matplotlib is not installed; skipping the ranking scatter plot\n")
        return None
    from .figures import ranking_scatter
    ranking_scatter(records, summary, path)
    return path.name


def summarize(records: list[dict[str, Any]], table: TruthTable, population: str = "") -> dict[str, Any]:
    """Rank statistics of supernet accuracy against ground truth (see ``metrics``)."""
    pred = np.array([r["supernet_acc"] for r in records], dtype=np.float64)
    truth = np.array([r["truth"] for r in records], dtype=np.float64)
    n = pred.size
    best = int(M.top_indices(pred, 1)[0])
    top1 = {"arch": records[best]["arch"], "supernet_acc": float(pred[best]), "truth": float(truth[best]),
            "percentile_sampled": M.percentile_of(truth[best], truth),
            "percentile_table": M.percentile_of(truth[best], table.acc)}
    if table.iso_class is not None:
        top1["percentile_unique"] = M.percentile_of(truth[best], table.acc[table.unique_rows()])
    oracle = int(M.top_indices(truth, 1)[0])
    seconds = np.array([r["seconds"] for r in records if "seconds" in r], dtype=np.float64)
    return {
        "population": population,
        "table": table.describe(),
        "evaluated": n,
        "kendall_tau": M.kendall_tau(pred, truth),
        "spearman_rho": M.spearman_rho(pred, truth),
        "top_k": {f"{round(p * 100)}%": {"k": M.top_k_size(p, n), "overlap": M.top_k_overlap(pred, truth, p)}
                  for p in TOP_FRACTIONS},
        "bottom_k": {f"{round(p * 100)}%": {"k": M.top_k_size(p, n), "overlap": M.bottom_k_overlap(pred, truth, p)}
                     for p in TOP_FRACTIONS},
        "supernet_top1": top1,
        "best_sampled": {"arch": records[oracle]["arch"], "supernet_acc": float(pred[oracle]),
                         "truth": float(truth[oracle])},
        "seconds_per_arch": ({"mean": float(seconds.mean()), "median": float(np.median(seconds))}
                             if seconds.size else None),
    }
