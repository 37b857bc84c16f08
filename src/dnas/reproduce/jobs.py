"""The jobs of a reproduction grid and where each keeps its files.

Layout of an output directory ``DIR``::

    DIR/protocol.json                 the protocol the directory was made with
    DIR/jobs/<mode>-s<seed>/          a search job: job.json, status.json, log.txt, and its run directory
        run/                          (dnas search's run: config, metrics, checkpoint, result, selections/)
    DIR/jobs/<mode>-s<seed>-<method>/ a selection job on that supernet: job.json, status.json, log.txt;
                                      its output is run/selections/<method>.json of the search job
    DIR/jobs/zeros-s<seed>/           ZEROS (no supernet): job.json, status.json, log.txt, selection.json

A job is finished when its output file exists; nothing else counts (a status file can be stale after a
crash). ``job.json`` holds everything the worker needs, so a job can be rerun by hand:
``python -m dnas.reproduce.worker DIR/jobs/NAME``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DnasError
from ..io import read_json
from .protocols import Protocol

JOB, STATUS, LOG, RUN, SELECTION = "job.json", "status.json", "log.txt", "run", "selection.json"
MARK = "== "  # starts the worker's own lines in log.txt (an attempt began / ended), not the job's output


@dataclass(frozen=True)
class Job:
    name: str                     # folder under DIR/jobs
    kind: str                     # "search" | "select" | "zeros"
    seed: int
    mode: str | None = None       # the supernet's mode (None for zeros)
    method: str | None = None     # selection method (search jobs: magnitude, written by the search)
    deps: tuple[str, ...] = ()    # jobs that must finish first
    lock: str | None = None       # jobs with the same lock never run at once (they update one result.json)
    spec: dict[str, Any] = field(default_factory=dict, compare=False)  # job.json content


def search_name(mode: str, seed: int) -> str:
    return f"{mode}-s{seed}"


def plan(protocol: Protocol, seeds: list[int], *, data_dir: str | None = None, device: str | None = None,
         table: str | None = None) -> list[Job]:
    """Every job of the grid, in the order they should start: zeros (seconds), searches, selections."""
    jobs: list[Job] = []
    common = {"table": table, "protocol": protocol.id}
    if protocol.zeros:
        for seed in seeds:
            jobs.append(Job(f"zeros-s{seed}", "zeros", seed, method="zeros",
                            spec={**common, "kind": "zeros", "method": "zeros",
                                  "options": protocol.zeros_options(seed, device)}))
    for seed in seeds:
        for mode in protocol.modes:
            cfg = protocol.search_config(mode, seed, data_dir=data_dir, device=device)
            name = search_name(mode, seed)
            jobs.append(Job(name, "search", seed, mode, "magnitude", lock=name,
                            spec={**common, "kind": "search", "config": cfg.to_json()}))
    for seed in seeds:
        for mode in protocol.modes:
            parent = search_name(mode, seed)
            for method in protocol.methods(mode)[1:]:
                jobs.append(Job(f"{parent}-{method}", "select", seed, mode, method, deps=(parent,), lock=parent,
                                spec={**common, "kind": "select", "method": method, "search": parent,
                                      "options": protocol.options(method), "device": device}))
    return jobs


def job_dir(out: Path, name: str) -> Path:
    return Path(out) / "jobs" / name


def run_dir(out: Path, job: Job) -> Path | None:
    """The search run a job's results live in (None for zeros)."""
    if job.kind == "zeros":
        return None
    return job_dir(out, search_name(job.mode, job.seed)) / RUN


def selection_file(out: Path, job: Job) -> Path:
    """The file whose existence means the job is finished."""
    if job.kind == "zeros":
        return job_dir(out, job.name) / SELECTION
    return run_dir(out, job) / "selections" / f"{job.method}.json"


def is_finished(out: Path, job: Job) -> bool:
    if not selection_file(out, job).exists():
        return False
    if job.kind == "search":  # the magnitude file is written last, just before result.json gets "finished"
        from ..rundir import run_finished
        return run_finished(run_dir(out, job))
    return True


def read_status(out: Path, name: str) -> dict[str, Any]:
    return read_status_file(job_dir(out, name) / STATUS)


def read_status_file(path: Path) -> dict[str, Any]:
    """A job's status.json, {} when missing or broken: it is advisory and must not stop a job or a report."""
    try:
        status = read_json(path) if path.exists() else {}
    except DnasError:
        return {}
    return status if isinstance(status, dict) else {}
