"""Reproduction harness: a protocol's grid of searches and selections, run as resumable jobs (local
processes or Ray tasks), and a report next to the papers' numbers.

``reproduce("nb201-cpu", "out/")`` runs every unfinished job of the grid and writes ``out/report.md``,
``out/report.json`` and ``out/accuracy.png``; ``report_only=True`` only rebuilds the report.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..checks import check_seed
from ..errors import DnasError
from ..io import atomic_write_json, read_json
from .execute import LocalPool, Outcome, RayPool, output_lock, gpu_slots, run_jobs
from .jobs import Job, plan
from .protocols import PAPER, PROTOCOLS, PaperNumber, Protocol, get_protocol
from .report import write_report

__all__ = ["PAPER", "PROTOCOLS", "PaperNumber", "Protocol", "Reproduction", "get_protocol", "plan", "reproduce"]

PROTOCOL_FILE = "protocol.json"


@dataclass
class Reproduction:
    report: dict[str, Any]
    outcome: Outcome | None      # None with report_only
    jobs: list[Job]
    pool: str = ""


def _check_grid(protocol: Protocol) -> None:
    """Every mode and method of the protocol exists here (before anything starts)."""
    from ..search import get_mode
    from ..select.run import get_method
    for mode in protocol.modes:
        get_mode(mode)
        for method in protocol.methods(mode):
            get_method(method)
    if protocol.zeros:
        get_method("zeros")


def _check_out_dir(out: Path, protocol: Protocol, report_only: bool) -> None:
    """An output directory holds one protocol version; other seeds may be added later."""
    if out.exists() and not out.is_dir():
        raise DnasError(f"--out {out} exists and is not a directory")
    path = out / PROTOCOL_FILE
    if path.exists():
        saved = read_json(path)
        if not isinstance(saved, dict):
            raise DnasError(f"{path}: not a dnas reproduction protocol (a JSON object)")
        mine = protocol.settings()
        diff = sorted(k for k in set(saved) | set(mine) if k not in ("seeds", "summary") and saved.get(k) != mine.get(k))
        if diff:
            raise DnasError(f"{out} holds results of {saved.get('name')}@v{saved.get('version')} with other settings "
                            f"({', '.join(diff)}); use another --out")
    elif report_only:
        raise DnasError(f"{out}: no reproduction here (no {PROTOCOL_FILE}); run without --report-only first")


def _data_dir(protocol: Protocol, data_dir: str | None) -> str | None:
    data_dir = data_dir or os.environ.get("DNAS_DATA_DIR") or None
    if protocol.dataset.startswith("cifar"):
        from ..data.files import resolve_data_dir
        return str(resolve_data_dir(protocol.dataset, data_dir).resolve())
    return data_dir


def _check_device(device: str, *, local: bool) -> None:
    """A device name the jobs understand; run here, one that exists here (Ray workers may have GPUs we lack)."""
    from ..rundir import resolve_device
    kind, sep, index = device.partition(":")
    if device not in ("auto", "cpu") and (kind != "cuda" or (sep and not index.isdigit())):
        raise DnasError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    if local:
        resolve_device(device)


def _default_workers(device: str) -> int:
    """One job per core on a CPU; one per GPU when the jobs may use one."""
    if device != "cpu":
        import torch
        if torch.cuda.is_available():
            return torch.cuda.device_count()
    return os.cpu_count() or 1


def reproduce(protocol: str | Protocol, out: str | Path, *, seeds: list[int] | None = None,
              workers: int | None = None, threads: int | None = None, ray_address: str | None = None,
              report_only: bool = False, table: str | None = None, data_dir: str | None = None,
              device: str | None = None, quiet: bool = False,
              say: Callable[[str], None] = lambda msg: None) -> Reproduction:
    """Run (or resume) a protocol's grid in ``out`` and write its report. ``say`` gets the progress lines
    (the CLI passes ``print``; the library itself writes nothing to stdout)."""
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    seeds = list(proto.seeds if seeds is None else seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise DnasError(f"--seeds needs distinct seeds, got {seeds}")
    for seed in seeds:
        check_seed("--seeds: each seed", seed)
    for name, v in (("--workers", workers), ("--threads", threads)):
        if v is not None and v < 1:
            raise DnasError(f"{name} must be >= 1, got {v}")
    _check_grid(proto)
    out = Path(out)
    table = table or os.environ.get("DNAS_NB201_TABLE") or None
    if table is not None:
        if not Path(table).exists():
            raise DnasError(f"NAS-Bench-201 table {table} does not exist")
        table = str(Path(table).resolve())
        if proto.space == "nb201" and not report_only:
            from ..bench.nb201 import open_benchmark
            open_benchmark(table)  # read it now: a bad table must not fail every job after its search
    _check_out_dir(out, proto, report_only)
    pool: LocalPool | RayPool | None = None
    if not report_only:  # everything that can fail on bad input, before anything is written
        data_dir = _data_dir(proto, data_dir)
        _check_device(device or proto.device, local=not ray_address)  # else every job fails on it
        if ray_address:
            pool = RayPool(ray_address, threads or 1, want_gpu=(device or proto.device) != "cpu")
            workers = workers or max(1, pool.cluster_cpus() // (threads or 1))
        else:
            if workers is None:  # with --threads alone, as many workers as the cores hold (no oversubscription)
                workers = _default_workers(device or proto.device)
                if threads:
                    workers = max(1, min(workers, (os.cpu_count() or 1) // threads))
            pool = LocalPool(threads or max(1, (os.cpu_count() or 1) // workers),
                             gpus=gpu_slots(device or proto.device))
    jobs = plan(proto, seeds, data_dir=data_dir, device=device, table=table)
    if pool is None:  # report only: it reads what the jobs wrote, while they run too
        return Reproduction(write_report(out, proto, seeds, jobs, table), None, jobs)
    # One reproduce per output directory, from before protocol.json is written: a second one started at the same
    # time must not replace the first one's protocol.json (then fail on the lock) or run its jobs twice.
    with output_lock(out):
        _check_out_dir(out, proto, report_only)  # again under the lock: the other one may have written it
        if not (out / PROTOCOL_FILE).exists():
            atomic_write_json(out / PROTOCOL_FILE, proto.to_json())
        pool_desc = f"{workers} worker(s): {pool.describe()}"
        if not quiet:
            say(f"{proto.id}: {len(jobs)} jobs, seeds {seeds}, {pool_desc}, output {out}")
        outcome = run_jobs(jobs, out, pool, workers, quiet=quiet, say=say, locked=True)
        rep = write_report(out, proto, seeds, jobs, table)
    return Reproduction(rep, outcome, jobs, pool_desc)

