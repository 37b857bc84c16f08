"""Running the jobs: a dependency-aware scheduler over a pool of worker processes.

Two pools with one interface. ``LocalPool`` starts each job as a subprocess on this machine.
``RayPool`` runs the same subprocess as a Ray task on an existing cluster (``ray.init(address=...)``);
it assumes every node sees the output directory at the same path (a shared file system) and has
this package installed in the Python that runs its Ray workers.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import DnasError
from ..io import atomic_write_json
from .jobs import JOB, LOG, MARK, RUN, STATUS, Job, is_finished, job_dir, read_status, search_name


def worker_command(path: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "dnas.reproduce.worker", path, "--threads", str(threads)]


def thread_env(threads: int) -> dict[str, str]:
    """Keep every worker's math libraries to its share of the cores (no oversubscription)."""
    t = str(threads)
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "DNAS_THREADS": t}


def run_subprocess(path: str, threads: int, log: str) -> int:
    """Run one job's worker, appending its output to ``log``; returns its exit code."""
    with open(log, "ab") as f:
        proc = subprocess.run(worker_command(path, threads), stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **thread_env(threads)})
    return proc.returncode


def gpu_slots(device: str) -> list[str]:
    """The GPUs local jobs share out, as ``CUDA_VISIBLE_DEVICES`` entries (this process's own list when it has
    one); none for a CPU protocol, a named device (``cuda:1``: every job there) or a machine without CUDA."""
    if device not in ("auto", "cuda"):
        return []
    import torch
    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return [v.strip() for v in visible.split(",") if v.strip()][:n]
    return [str(i) for i in range(n)]


class LocalPool:
    """Jobs as subprocesses of this process. With ``gpus`` each job sees one of them (``CUDA_VISIBLE_DEVICES``),
    the least busy one, so K workers on K GPUs run one job per GPU instead of K jobs on ``cuda:0``."""

    def __init__(self, threads: int, gpus: list[str] | None = None):
        self.threads = threads
        self.gpus = list(gpus or [])
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Any] = {}
        self.gpu_of: dict[str, str] = {}

    def describe(self) -> str:
        gpus = f", one of GPUs {','.join(self.gpus)} each" if self.gpus else ""
        return f"local processes, {self.threads} thread(s) each{gpus}"

    def _free_gpu(self) -> str:
        busy = {g: 0 for g in self.gpus}
        for n in self.procs:
            if n in self.gpu_of:
                busy[self.gpu_of[n]] += 1
        return min(self.gpus, key=lambda g: busy[g])  # ties: the first listed

    def submit(self, name: str, path: Path) -> None:
        env = {**os.environ, **thread_env(self.threads)}
        if self.gpus:
            self.gpu_of[name] = env["CUDA_VISIBLE_DEVICES"] = self._free_gpu()
        log = open(path / LOG, "ab")
        self.logs[name] = log
        self.procs[name] = subprocess.Popen(worker_command(str(path), self.threads), stdout=log,
                                            stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float) -> list[tuple[str, int, str]]:
        """(name, exit code, error text) of the jobs that ended within ``timeout`` seconds."""
        deadline = time.time() + timeout
        while True:
            done = [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]
            if done or time.time() >= deadline:
                break
            time.sleep(min(0.2, max(0.0, deadline - time.time())))
        for n, _ in done:
            del self.procs[n]
            self.gpu_of.pop(n, None)
            self.logs.pop(n).close()
        return [(n, rc, "") for n, rc in done]

    def stop(self) -> None:
        for p in self.procs.values():  # only the processes this pool started
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs.values():
            log.close()
        self.procs.clear()
        self.logs.clear()
        self.gpu_of.clear()


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, its client server) answers
# with a SETTINGS frame of its own (frame type 4, the 4th byte of the 9-byte frame header).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 4


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a cluster address where no Ray cluster answers. ``ray.init`` (which has no timeout) retries an
    address where nothing answers for minutes, and one that answers but does not speak Ray's gRPC for as
    long, printing connection warnings. So: connect, send HTTP/2's opening and expect a gRPC server's reply.
    ``auto`` and ``local`` (nothing to check, or nothing yet) and portless addresses are left to Ray, which
    fails fast on them; with ``RAY_USE_TLS`` set the plain-text probe is skipped after the connect."""
    target: str | None = address[len("ray://"):] if address.startswith("ray://") else address
    if not address.startswith("ray://"):
        try:  # what ray.init connects to: "auto" resolved to the running cluster, localhost to this node's IP
            from ray._private.services import canonicalize_bootstrap_address
            target = canonicalize_bootstrap_address(address)
        except ImportError:  # a Ray without it: check the address as given
            pass
        except (ConnectionError, ValueError) as e:
            raise DnasError(f"cannot connect to the Ray cluster at {address!r} ({str(e).splitlines()[0]})") from None
    host, sep, port = (target or "").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as e:
        raise DnasError(f"cannot connect to the Ray cluster at {address!r}: nothing answers at {target} "
                        f"({e.strerror or e})") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        reply = b""
        try:
            conn.sendall(_H2_PREFACE)
            while len(reply) < 9:
                chunk = conn.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
        except OSError:  # a timeout or a reset: no gRPC server there
            pass
    if len(reply) < 9 or reply[3] != _H2_SETTINGS:
        raise DnasError(f"cannot connect to the Ray cluster at {address!r}: {target} answers, but not as a Ray "
                        f"cluster (no gRPC reply within {timeout:g} s)")


class RayPool:
    """Jobs as Ray tasks on an existing cluster; each task runs the worker subprocess on its node."""

    def __init__(self, address: str, threads: int, want_gpu: bool = False):
        try:
            import ray
        except ImportError:
            raise DnasError("--ray needs Ray: pip install 'dnas[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            _check_reachable(address)
            import threading
            main_thread = threading.current_thread() is threading.main_thread()
            handler = signal.getsignal(signal.SIGTERM) if main_thread else None
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise DnasError(f"cannot connect to the Ray cluster at {address!r} ({str(e).splitlines()[0]})") from None
            finally:
                if main_thread and handler is not None:  # ray.init installs its own; keep the CLI's clean stop
                    signal.signal(signal.SIGTERM, handler)
        # one GPU per job when the protocol may use one and the cluster has any (else tasks would never start)
        gpus = 1.0 if want_gpu and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.threads, self.gpus = threads, gpus
        self.remote = ray.remote(run_subprocess).options(num_cpus=threads, num_gpus=gpus, max_retries=0)
        self.refs: dict[Any, str] = {}

    def describe(self) -> str:
        return f"Ray tasks ({self.threads} CPU, {self.gpus:g} GPU each) on {self.ray.get_runtime_context().gcs_address}"

    def cluster_cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def submit(self, name: str, path: Path) -> None:
        ref = self.remote.remote(str(path.resolve()), self.threads, str((path / LOG).resolve()))
        self.refs[ref] = name

    def wait(self, timeout: float) -> list[tuple[str, int, str]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            name = self.refs.pop(ref)
            try:
                out.append((name, int(self.ray.get(ref)), ""))
            except Exception as e:  # noqa: BLE001  (a lost node or worker: the job failed, the grid goes on)
                out.append((name, -1, f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0]}"))
        return out

    def stop(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()


@dataclass
class Outcome:
    done: list[str]
    failed: dict[str, str]      # name -> reason
    blocked: dict[str, str]     # name -> the failed dependency
    skipped: list[str]          # finished before this call


def run_jobs(jobs: list[Job], out: Path, pool: Any, workers: int, *, quiet: bool = False,
             say: Callable[[str], None] = lambda msg: None, locked: bool = False) -> Outcome:
    """Run every unfinished job, at most ``workers`` at once, dependencies first, one per lock. ``locked``:
    the caller holds the output directory's lock (``output_lock``; a second one would be refused)."""
    out = Path(out)
    if locked:
        return _run_jobs(jobs, out, pool, workers, quiet=quiet, say=say)
    with output_lock(out):
        return _run_jobs(jobs, out, pool, workers, quiet=quiet, say=say)


def output_lock(out: Path):
    """One ``reproduce`` per output directory at a time (a second would run jobs twice and race on them)."""
    from ..rundir import file_lock
    return file_lock(out / ".lock", wait=False,
                     busy=f"{out} is in use by another reproduce run (wait for it, or stop it first)")


def _run_jobs(jobs: list[Job], out: Path, pool: Any, workers: int, *, quiet: bool,
              say: Callable[[str], None]) -> Outcome:
    by_name = {j.name: j for j in jobs}
    finished = {j.name for j in jobs if is_finished(out, j)}
    skipped = [j.name for j in jobs if j.name in finished]
    pending = [j for j in jobs if j.name not in finished]
    running: dict[str, float] = {}
    failed: dict[str, str] = {}
    blocked: dict[str, str] = {}
    done: list[str] = []
    total = len(pending)
    log = (lambda msg: None) if quiet else (lambda msg: say(f"[{time.strftime('%H:%M:%S')}] {msg}"))

    def ended() -> str:  # this call's jobs that are over: done, failed, or skipped behind a failed one
        return f"({len(done) + len(failed) + len(blocked)}/{total})"
    if skipped:
        log(f"{len(skipped)} of {len(jobs)} jobs already finished")
    for j in jobs:
        path = job_dir(out, j.name)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / JOB, j.spec)
    last_progress = time.time()
    try:
        while pending or running:
            for j in list(pending):  # block the jobs whose dependencies failed
                bad = next((d for d in j.deps if d in failed or d in blocked), None)
                if bad is not None:
                    pending.remove(j)
                    blocked[j.name] = bad
                    log(f"skip  {j.name}: {bad} failed {ended()}")
            locks = {by_name[n].lock for n in running if by_name[n].lock}
            for j in list(pending):
                if len(running) >= workers:
                    break
                if all(d in finished for d in j.deps) and (j.lock is None or j.lock not in locks):
                    pending.remove(j)
                    pool.submit(j.name, job_dir(out, j.name))
                    running[j.name] = time.time()
                    if j.lock:
                        locks.add(j.lock)
                    log(f"start {j.name} ({j.kind})")
            if not running:
                break  # everything left is blocked
            for name, rc, why in pool.wait(timeout=5.0):
                secs = time.time() - running.pop(name)
                if is_finished(out, by_name[name]):  # the output decides, not how the process ended
                    finished.add(name)
                    done.append(name)
                    log(f"done  {name} in {secs:.0f} s {ended()}")
                else:
                    reason = why or _failure(out, name, rc)
                    failed[name] = reason
                    _mark_failed(out, name, rc, reason)
                    log(f"FAIL  {name} after {secs:.0f} s {ended()}: {reason}")
            if not quiet and running and time.time() - last_progress > 120:
                last_progress = time.time()
                log("running: " + ", ".join(f"{n} {_progress(out, by_name[n])}" for n in running))
    except BaseException:
        pool.stop()  # jobs are resumable: stopping them loses at most the current epoch
        for name, since in running.items():
            _mark_interrupted(out, name, time.time() - since)
        raise
    return Outcome(done, failed, blocked, skipped)


def _failure(out: Path, name: str, rc: int) -> str:
    status = read_status(out, name)
    if status.get("error"):
        return f"exit {rc}: {status['error']}"
    how = f"exit {rc}"
    if rc < 0:  # a signal the worker could not catch (SIGKILL: out of memory, or stopped from outside)
        try:
            how = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
    tail = ""
    log = job_dir(out, name) / LOG
    if log.exists():  # this attempt's last words: after the worker's own last line ("attempt N on ..."), if any
        lines = log.read_text(errors="replace").splitlines()
        marks = [i for i, ln in enumerate(lines) if ln.startswith(MARK)]
        said = [ln for ln in lines[marks[-1] + 1 if marks else 0:] if ln.strip()]
        tail = said[-1][:300] if said else ""
    return how + (f": {tail}" if tail else "")


def _mark_failed(out: Path, name: str, rc: int, reason: str) -> None:
    status = read_status(out, name)
    status.update(state="failed", exit_code=rc)
    status.setdefault("error", reason)  # the worker's own message when it wrote one
    atomic_write_json(job_dir(out, name) / STATUS, status)


def _mark_interrupted(out: Path, name: str, seconds: float) -> None:
    """What a stopped worker writes itself (local jobs get SIGTERM), for one that could not: Ray kills its tasks
    outright, and a worker still running after its grace period is killed. Resumes on the next run."""
    status = read_status(out, name)
    if status.get("state") == "running":
        before = status.get("seconds")
        before = before if isinstance(before, (int, float)) else 0.0  # advisory: a bad value must not hide the stop
        status.update(state="interrupted", seconds=before + seconds,
                      ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write_json(job_dir(out, name) / STATUS, status)


def _progress(out: Path, job: Job) -> str:
    """How far a job is, from the files it writes: search epochs, or progressive-selection tune epochs."""
    run = job_dir(out, search_name(job.mode, job.seed)) / RUN if job.mode else None
    if run is None:
        return ""
    if job.kind == "search":
        path, total = run / "metrics.jsonl", job.spec.get("config", {}).get("epochs", "?")
        what = "epoch"
    else:
        path, total, what = run / "selections" / f"{job.method}.tune.jsonl", "", "tune epoch"
    n = sum(1 for _ in open(path)) if path.exists() else 0
    return f"({what} {n}{'/' + str(total) if total else ''})"
