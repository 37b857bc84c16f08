"""Search workflow: a run directory in, a trained supernet and its selections out. Resumable per epoch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..checks import all_finite
from ..data import BatchLoader, ImageDataset, load_dataset, split_indices
from ..errors import DnasError, memory_limits
from ..io import atomic_write_json
from ..rundir import (CHECKPOINT, CONFIG, BeforeFirstWrite, does_not_fit, environment, fitting, holds_files,
                      load_checkpoint, log_metrics, prepare_run_dir, read_config, read_metrics, read_result,
                      resolve_device, run_finished, run_lock, save_checkpoint, seed_everything, selection_summary,
                      set_rng_state, truncate_metrics, update_result)
from ..select import Selection, select_magnitude
from ..spaces import Space, get_space
from ..supernet import build_supernet, check_bn_batches
from ..tensorboard import tb_log
from .config import SearchConfig
from .modes import check_mode_applied, get_mode
from .trainer import Searcher

# Called after a selection is written, e.g. to add NAS-Bench-201 ground truth (set by dnas.bench when present).
SelectionHook = Callable[[Space, Selection], dict[str, Any]]


@dataclass
class SearchRun:
    """Everything a search (or a selector working on its supernet) needs, rebuilt from a config."""

    config: SearchConfig
    space: Space
    model: nn.Module
    train: BatchLoader        # w-train half, augmented
    valid: BatchLoader        # α half, augmented (DARTS uses the train transform on both halves)
    valid_eval: BatchLoader   # α half, fixed order, no augmentation: for accuracy measurements
    device: torch.device
    dataset: ImageDataset

    def searcher(self, config: SearchConfig | None = None, quiet: bool = False) -> Searcher:
        cfg = config or self.config
        return Searcher(self.model, cfg, get_mode(cfg.mode).build(cfg), self.train, self.valid, self.device, quiet)


def build_run(config: SearchConfig) -> SearchRun:
    """Data, splits, loaders and a freshly initialised supernet, all seeded by ``config.seed``."""
    config.check()
    space = get_space(config.space)
    get_mode(config.mode)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data = load_dataset(config.dataset, "train", data_dir=config.data_dir, resolution=config.resolution,
                        subset=config.subset, seed=config.seed)
    n_train, n_valid = (len(i) for i in split_indices(len(data), config.train_portion))
    if n_train < 1 or n_valid < 1:
        raise DnasError(f"{config.dataset}: {len(data)} images cannot be split {config.train_portion:g}/"
                        f"{1 - config.train_portion:g}")
    tr_idx, va_idx = split_indices(len(data), config.train_portion)
    bs = config.batch_size
    check_bn_batches(data.resolution, bs, {"w-train": len(tr_idx), "α-valid": len(va_idx)})
    train = BatchLoader(data, tr_idx, bs, augment=True, seed=config.seed, stream=0, device=device)
    valid = BatchLoader(data, va_idx, bs, augment=True, seed=config.seed, stream=1, device=device)
    valid_eval = BatchLoader(data, va_idx, max(bs, 256), augment=False, shuffle=False, seed=config.seed,
                             stream=2, device=device)
    seed_everything(config.seed)  # model init does not depend on how much randomness data loading used
    with memory_limits("building the supernet", supernet_sizes(config, data.resolution, device), SEARCH_SIZES):
        model = build_supernet(space, channels=config.channels, cells=config.cells, num_classes=data.num_classes,
                               in_channels=data.channels, activation=config.activation, impl=config.impl,
                               node_bn=config.node_bn).to(device)
    return SearchRun(config, space, model, train, valid, valid_eval, device, data)


SEARCH_SIZES = "--channels, --cells, --batch-size or --resolution"  # the search flags that set its memory use


def supernet_sizes(config: SearchConfig, resolution: int, device: torch.device) -> dict[str, Any]:
    """What a supernet's memory use grows with, as out-of-memory errors name it."""
    return {"space": config.space, "channels": config.channels, "cells": config.cells, "batch": config.batch_size,
            "resolution": resolution, "device": str(device)}


def read_search_config(run_dir: str | Path, device: str | None = None) -> SearchConfig:
    """RUN/config.json of a search as a checked SearchConfig (types and values; ``device`` overrides the saved
    one); any problem is one DnasError naming the file."""
    path = Path(run_dir) / CONFIG
    cfg_dict = read_config(run_dir, SearchConfig)
    if device is not None:
        cfg_dict["device"] = device
    try:
        config = SearchConfig.from_json(cfg_dict)
        config.check()
    except DnasError as e:  # its messages name the CLI flags; here the value came from the file
        raise DnasError(f"{path}: {e}") from None
    return config


def open_run(run_dir: str | Path, device: str | None = None, checkpoint: str = CHECKPOINT) -> SearchRun:
    """Rebuild a finished (or interrupted) search's supernet with its trained weights and α."""
    run_dir = Path(run_dir)
    run = build_run(read_search_config(run_dir, device))
    state = load_checkpoint(run_dir, checkpoint)

    def load(searcher: dict[str, Any]) -> None:
        weights = searcher["model"]
        bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not all_finite([v])]
        if bad:  # every selector would still return a genotype (argmax of NaN, all-equal NaN accuracies...)
            raise DnasError(f"{run_dir / checkpoint}: the supernet has NaN/inf values ({bad[0]}"
                            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): its search diverged and "
                            f"nothing can be selected from it; search again with a lower --lr / --arch-lr")
        run.model.load_state_dict(weights)

    load_searcher_state(load, state, run_dir / checkpoint)
    return run


def load_searcher_state(load: Callable[[dict[str, Any]], None], state: dict[str, Any], path: Path,
                        config: Path | None = None) -> None:
    """``load(state["searcher"])``; a checkpoint that is no search checkpoint, or one that does not fit the
    supernet of the run's config.json (``config``; default: next to ``path``) is one DnasError."""
    if not isinstance(state.get("searcher"), dict):
        raise DnasError(f"{path}: not a search checkpoint")
    with fitting(path, does_not_fit(f"the supernet of {config or path.parent / CONFIG}")):
        load(state["searcher"])


def alpha_snapshot(model: nn.Module) -> dict[str, list[list[float]]]:
    with torch.no_grad():
        return {ct: [[round(v, 6) for v in row] for row in model.arch.base_weights(ct).cpu().tolist()]
                for ct in model.arch.cell_types}


def run_search(config: SearchConfig, *, resume: bool = False, force: bool = False, quiet: bool = False,
               on_selection: SelectionHook | None = None,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a supernet in ``config.out`` and select by magnitude. Returns result.json's content.

    ``quiet`` hides the progress bar (stderr); ``on_epoch(record)`` gets each epoch's metrics.jsonl record
    once it is saved (the CLI prints a line from it; the library itself writes nothing to stdout).
    A search that diverges (NaN/inf loss, w or α) raises DnasError before that epoch is saved.
    ``resume`` on a finished run changes nothing and returns its result.json.
    """
    if not config.out:
        raise DnasError("an output run directory is required (--out RUN)")
    config.check()
    get_space(config.space)
    check_mode_applied(config)
    prepare = partial(prepare_run_dir, config.out, resume=resume, force=force, config=config.to_json(),
                      settings=SearchConfig)
    prepare(check_only=True)
    # Data and model first: a start that fails leaves the directory as it was. A finished run needs neither.
    run = None if resume and run_finished(config.out) else build_run(config)
    searcher = None if run is None else run.searcher(quiet=quiet)
    # One search per run directory: a second (say `--resume` started twice) would append every epoch to
    # metrics.jsonl again and overwrite the first one's checkpoints. Checked again under the lock.
    with run_lock(config.out):
        # --force over an old run: checked again here, but cleared only by begin(), once the first epoch has run
        replacing = force and holds_files(config.out)
        out = prepare(check_only=replacing)
        begin = BeforeFirstWrite(prepare, pending=replacing, kept=f"{out} still holds its old run")
        if resume and run_finished(out):  # its final selection and time stay as they are
            return read_result(out)
        if run is None or searcher is None:  # finished at the first look, restarted (--force) since
            run = build_run(config)
            searcher = run.searcher(quiet=quiet)
        if resume and (out / CHECKPOINT).exists():
            state = load_checkpoint(out)
            load_searcher_state(searcher.load_state_dict, state, out / CHECKPOINT)
            set_rng_state(state["rng"], out / CHECKPOINT)
            truncate_metrics(out, searcher.epoch)
        elif resume:
            truncate_metrics(out, 0)
        try:
            for epoch in range(searcher.epoch, config.epochs):
                sizes = supernet_sizes(config, run.dataset.resolution, run.device)
                with memory_limits("training the supernet", sizes, SEARCH_SIZES):
                    m = searcher.train_epoch(epoch)
                    if config.eval_every and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
                        v = searcher.evaluate(run.valid_eval)
                        m.update(valid_loss=v["loss"], valid_acc=v["acc"])
                genotype = select_magnitude(run.model.arch).genotype
                record = {"epoch": epoch, **m, "genotype": str(genotype), "alpha": alpha_snapshot(run.model)}
                begin()
                log_metrics(out, record)
                tb_log(out, record, epoch, "search")
                save_checkpoint(out, {"searcher": searcher.state_dict(), "config": config.to_json()})
                if on_epoch is not None:
                    on_epoch(record)
        except KeyboardInterrupt as e:
            begin.mark(e)
            raise
        begin()
        sel = select_magnitude(run.model.arch)
        entry = sel.to_json()
        if on_selection is not None:
            entry.update(on_selection(run.space, sel))
        atomic_write_json(out / "selections" / "magnitude.json", entry)
        last = _last_metrics(out)
        return update_result(out, space=config.space, mode=config.mode, dataset=config.dataset, seed=config.seed,
                             genotype=str(sel.genotype), final=last, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                             environment=environment(), selections={"magnitude": selection_summary(entry)})


def _last_metrics(out: Path) -> dict[str, Any]:
    rows = read_metrics(out / "metrics.jsonl")
    if not rows:
        return {}
    return {k: v for k, v in rows[-1].items() if k not in ("alpha", "genotype")}
