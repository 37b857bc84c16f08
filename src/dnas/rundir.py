"""The run directory, the unit of persistence: config.json, metrics.jsonl, checkpoint.pt, result.json.

Every long job (search, selection, training) writes through these helpers so that it checkpoints
atomically and resumes exactly: checkpoints carry model, optimizers, RNG states and counters.
"""
from __future__ import annotations

import errno
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .errors import DnasError, is_out_of_memory
from .io import (append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, read_json, read_jsonl,
                 to_json, torch_load)
from .schema import check_fields, check_settings

CONFIG, METRICS, CHECKPOINT, RESULT = "config.json", "metrics.jsonl", "checkpoint.pt", "result.json"
RESULT_LOCK = ".result.json.lock"  # held (briefly) around every read-modify-write of result.json
LOCK = ".lock"  # held by the command working on a run directory (see run_lock)


@contextmanager
def file_lock(path: str | Path, *, shared: bool = False, wait: bool = True, busy: str = "") -> Iterator[None]:
    """Hold an advisory ``flock`` on the file ``path`` (created if missing) for the ``with`` block.

    ``wait=False``: a lock held by another process is a DnasError with the message ``busy`` instead of a wait.
    Locks are per open file, so two threads (or two commands) of one process exclude each other too.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no locking
        fcntl = None
    if fcntl is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
            locked = True
        except BlockingIOError:
            raise DnasError(busy or f"{path} is locked by another process") from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            locked = False  # a file system without flock (Lustre without -o flock, some NFS/SMB mounts): as on Windows
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)


# flock's answers on file systems that do not support it (not "held by another process")
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def prepare_run_dir(path: str | Path, *, resume: bool, force: bool, config: dict[str, Any] | None = None,
                    check_only: bool = False, settings: type | None = None) -> Path:
    """Create a fresh run directory, or check the one to resume.

    An existing non-empty directory is never touched without ``resume`` (continue it) or ``force``
    (start over, only for a dnas run). With ``resume`` the saved config must match the requested one on
    every key that shapes the run, and its keys must be fields of ``settings`` (the config dataclass, see
    ``check_settings``) holding values of their types. ``check_only``: all the checks, nothing written or
    deleted (call it before slow setup that can fail, then again for real, so a failed start never costs the
    old run; a run that replaces an old one calls it for real only once its first epoch has run, see
    ``holds_files``).
    """
    run = Path(path)
    if resume and force:
        raise DnasError("--resume and --force exclude each other")
    if run.exists() and not run.is_dir():
        raise DnasError(f"{run} is a file, not a run directory")
    exists = holds_files(run)
    if resume:
        if not (run / CONFIG).exists():
            raise DnasError(f"{run}: nothing to resume (no {CONFIG})")
        if config is not None:
            saved = read_config(run)
            shared = [k for k in config if k in saved]
            if len(shared) < len(config) / 2:  # e.g. `train --resume` on a search run
                raise DnasError(f"{run}: --resume on a different kind of run (its {CONFIG} lacks most of "
                                f"this command's settings)")
            if settings is not None:  # a hand-edited wrong type or unknown key says so, not "different settings"
                check_settings(saved, settings, run / CONFIG)
            diff = changed_settings(saved, config)
            if diff:
                raise DnasError(f"{run}: --resume with different settings than the saved run: {', '.join(diff)}")
        return run
    if exists:
        if not force:
            raise DnasError(f"{run} already exists; use --resume to continue it or --force to start over")
        if not (run / CONFIG).is_file():  # --force only ever deletes a run directory
            raise DnasError(f"{run} holds files but is not a dnas run (no {CONFIG}); --force will not delete it")
        if check_only:
            return run
        for p in run.iterdir():  # everything but the lock files (the caller holds the run's lock)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif not (_scratch(p) and p.name.endswith(".lock")):
                p.unlink()
    if check_only:
        return run
    run.mkdir(parents=True, exist_ok=True)
    if config is not None:
        atomic_write_json(run / CONFIG, config)
    return run


def holds_files(path: str | Path) -> bool:
    """Whether ``path`` is a directory with content, which ``prepare_run_dir`` with ``force`` would delete.

    A run that replaces an old one (``--force``) calls ``prepare_run_dir`` only once its first epoch has
    finished, just before its first write: a start that fails (out of memory in the first step) or is
    interrupted keeps the old run."""
    run = Path(path)
    # Temporary files of an interrupted atomic write (a kill can leave one behind) and lock files are not content.
    return run.is_dir() and any(not _scratch(p) for p in run.iterdir())


class BeforeFirstWrite:
    """``action`` put off until just before a command's first write, run once: ``--force`` clears the old run
    (or the old ranking records) only then, so a start that fails (out of memory in the first step) or is
    interrupted keeps it. Call the object before every write. ``pending=False``: nothing to put off.

    ``kept`` says what an interrupt before that point leaves untouched (``mark`` attaches it to the
    KeyboardInterrupt, for the CLI's message: its usual advice, ``--resume``, would continue the old run)."""

    def __init__(self, action: Callable[[], Any], pending: bool = True, kept: str = ""):
        self.action, self.pending, self.kept = action, pending, kept

    def __call__(self) -> None:
        if self.pending:
            self.action()
            self.pending = False

    def mark(self, interrupt: BaseException) -> None:
        if self.pending and self.kept and isinstance(interrupt, KeyboardInterrupt):
            interrupt.dnas_kept = self.kept  # type: ignore[attr-defined]


def _scratch(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith((".tmp", ".lock"))


# Settings that may change between a run and its resumption without changing the result.
_RESUME_FREE = {"quiet", "device", "out", "resume", "force", "select", "table", "data_dir", "workers", "source"}


def changed_settings(saved: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The settings of ``config`` that ``saved`` holds with another value (those free on resume aside)."""
    return sorted(k for k in config if k in saved and saved[k] != config[k] and k not in _RESUME_FREE)


def rng_state() -> dict[str, Any]:
    """Every RNG's state, as tensors and plain data (what ``torch_load`` reads): numpy's key array as a list."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (name, key.tolist(), int(pos), int(has_gauss), float(gauss)),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], where: Any = "checkpoint") -> None:
    """Restore ``rng_state()`` (or an earlier version's, with numpy's key as an array); a malformed one (a
    hand-made checkpoint) is a DnasError naming ``where``."""
    with fitting(where, "rng is not the RNG states dnas saves (torch, numpy, python)"):
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            # One state per GPU the saving process saw: a machine (or CUDA_VISIBLE_DEVICES) with fewer GPUs
            # restores the ones it has (set_rng_state_all would fail on the first GPU it lacks).
            for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def environment() -> dict[str, Any]:
    """What a run's numbers depend on beyond its settings: float32 results differ in the last bits between
    thread counts, torch builds and dnas's CPU kernels against ATen's (README, Seeds), so result.json records them."""
    from .supernet import native  # a leaf module (torch only)

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "native_kernels": native.status()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(run: str | Path, state: dict[str, Any], name: str = CHECKPOINT) -> None:
    atomic_torch_save(Path(run) / name, {**state, "rng": rng_state()})


def load_checkpoint(run: str | Path, name: str = CHECKPOINT, fields: Mapping[str, Any] | None = None,
                    required: tuple[str, ...] = (), what: str = "a dnas checkpoint") -> dict[str, Any]:
    """RUN/``name``: a dict with an ``rng`` dict and the keys named in ``fields`` of those types (``check_fields``;
    ``required`` ones present); a missing, corrupt or hand-made one is one DnasError naming the file."""
    path = Path(run) / name
    return check_fields(torch_load(path), {"rng": dict, **(fields or {})}, path, what=what,
                        required=("rng", *required))


@contextmanager
def fitting(path: Any, problem: str) -> Iterator[None]:
    """Loading a checkpoint's saved state (from ``path``): one that does not fit (another run's or space's, an
    older layout's, a hand-made one) is one DnasError, ``path: problem: torch's last line``, not a traceback."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        if is_out_of_memory(e):
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = (lines[-1] if lines else type(e).__name__)[:160].rstrip(".")
        raise DnasError(f"{path}: {problem}: {detail}") from None


def does_not_fit(what: str) -> str:
    """``fitting``'s problem for a state that does not load into ``what`` (a model, an optimiser)."""
    return f"does not fit {what} (another run's or an older layout's checkpoint?)"


def log_metrics(run: str | Path, record: dict[str, Any], name: str = METRICS) -> None:
    append_jsonl(Path(run) / name, record)


def truncate_metrics(run: str | Path, keep_until: int, key: str = "epoch", name: str = METRICS) -> None:
    """On resume, drop metric lines written after the checkpoint (an epoch that was cut off)."""
    path = Path(run) / name
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get(key, -1) < keep_until]  # a torn last line is dropped too
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in kept))


# -- reading run files ----------------------------------------------------------------------------------
# Every reader of a run directory's files (config.json, result.json, selections/*.json, metrics.jsonl and the
# selectors' tune logs) goes through these checks (``schema``), so a hand-edited file with a wrong JSON type is
# one DnasError naming the file and the field, raised before the command has written anything.

def read_config(run: str | Path, settings: type | None = None) -> dict[str, Any]:
    """RUN/config.json, which must be a JSON object naming the run's space; with ``settings`` (the config
    dataclass of the run's kind) it holds only its fields, with their types (``check_settings``)."""
    path = Path(run) / CONFIG
    config = read_json(path)
    if not isinstance(config, dict) or not isinstance(config.get("space"), str):
        raise DnasError(f"{path}: not a dnas run configuration (a JSON object naming its space)")
    if settings is not None:
        check_settings(config, settings, path)
    return config


GENOTYPE = str | dict  # NB201: the arch string; DARTS spaces: the Genotype(...) text or its JSON object
# A selection as selections/<method>.json holds it (result.json's ``selections`` hold the same, less scores
# and decisions).
SELECTION_FIELDS: dict[str, Any] = {
    "method": str, "space": str, "genotype": str, "genotype_json": GENOTYPE, "scores": dict,
    "decisions": list[dict], "cost": dict[str, float | None], "options": dict, "warnings": list[dict],
    "requested_options": dict, "ground_truth": dict}
# result.json of a search (space ... selections) or of a training (space ... benchmark).
RESULT_FIELDS: dict[str, Any] = {
    "space": str, "mode": str, "dataset": str, "seed": int, "genotype": GENOTYPE, "final": dict,
    "finished": str | bool, "selections": dict[str, dict], "genotype_str": str, "epochs": int,
    "test_acc": float, "test_loss": float, "train_acc": float | None, "train_loss": float | None,
    "params_M": float, "flops_M": float, "seconds": float, "source": str | None, "benchmark": dict | None}
# One line of metrics.jsonl (search, training) or of a selector's tune log; the numbers may be null (no α step).
METRIC_FIELDS: dict[str, Any] = {
    "epoch": int, "alpha": dict[str, list[list[float]]], "genotype": str,
    **{k: float | None for k in ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_loss", "test_acc",
                                  "arch_loss", "arch_steps", "arch_steps_epoch", "lr", "drop_path", "seconds",
                                  "decisions")}}


def check_result(result: Any, where: Any) -> dict[str, Any]:
    check_fields(result, RESULT_FIELDS, where, what="a dnas result (a JSON object)")
    summary = {**SELECTION_FIELDS, "genotype": GENOTYPE}  # `train --run RUN --selection M` reads either form
    for method, entry in result.get("selections", {}).items():
        check_fields(entry, summary, where, prefix=f"selections.{method}.")
    return result


def read_result(run: str | Path) -> dict[str, Any]:
    """RUN/result.json ({} while there is none), checked (``RESULT_FIELDS``)."""
    path = Path(run) / RESULT
    return check_result(read_json(path) if path.exists() else {}, path)


def read_selection(path: str | Path) -> dict[str, Any]:
    """A selection file (RUN/selections/<method>.json), checked (``SELECTION_FIELDS``)."""
    return check_fields(read_json(path), SELECTION_FIELDS, path, what="a dnas selection (a JSON object)",
                        required=("genotype",))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl or a tune log (torn last line dropped), each checked (``METRIC_FIELDS``)."""
    return list(read_jsonl(path, check=lambda record, where: check_fields(record, METRIC_FIELDS, where,
                                                                          required=("epoch",))))


def run_finished(run: str | Path) -> bool:
    """Whether the run's search (or training) has finished: it writes result.json's ``finished`` last."""
    return bool(read_result(run).get("finished"))


def require_finished(run: str | Path) -> None:
    """Results computed from a search (selections, rankings) must describe its final supernet."""
    if not run_finished(run):
        raise DnasError(f"{run}: its search has not finished; complete it with `dnas search ... --resume` first")


def run_lock(run: str | Path, *, shared: bool = False, name: str = LOCK, what: str | None = None):
    """The lock of a command that works on a run directory, for its whole duration (a context manager).

    Writers of a run (search, train: checkpoint, metrics.jsonl, --force) take it exclusively; commands
    that only add to a finished run (select, analyze ranking) take it shared, plus an exclusive lock of
    their own (``name``, e.g. ``selections/.pt.lock``) on the files they write. A second command that would
    race on the same files fails at once with one line instead of interleaving its writes with the first.
    """
    busy = f"{what or run} is in use by another dnas command (wait for it to end, or stop it first)"
    return file_lock(Path(run) / name, shared=shared, wait=False, busy=busy)


def selection_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """A selection as result.json lists it: its file's entry without the per-op scores and decision trace."""
    return {k: v for k, v in entry.items() if k not in ("scores", "decisions")}


def update_result(run: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into result.json (``selections`` is merged per method).

    Several commands update one result.json (``dnas select`` with different methods at once, a search's
    final write): the read, merge and write happen under a lock, so no update is lost. An update that
    changes nothing (a resumed command recording what is already there) does not rewrite the file."""
    with file_lock(Path(run) / RESULT_LOCK):
        result = read_result(run)
        before = to_json(result)
        for k, v in fields.items():
            if k == "selections" and isinstance(v, dict):
                result.setdefault("selections", {}).update(v)
            else:
                result[k] = v
        if to_json(result) != before or not (Path(run) / RESULT).exists():
            atomic_write_json(Path(run) / RESULT, result)
    return result


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or name not in ("cpu", "cuda") and not name.startswith("cuda:"):  # --option device=5
        raise DnasError(f"unknown device {name!r} (use auto, cpu or cuda)")
    try:
        device = torch.device(name)
    except RuntimeError:  # "cuda:x"
        raise DnasError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":  # "cuda:N" too, e.g. a run's saved device read on another machine
        if not torch.cuda.is_available():
            raise DnasError(f"--device {name} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DnasError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
