"""Runs one job of a reproduction grid in its own process: ``python -m dnas.reproduce.worker JOB_DIR``.

Reads ``JOB_DIR/job.json``, resumes whatever the job had done before (search checkpoints, progressive
selection checkpoints), and keeps ``JOB_DIR/status.json`` up to date (attempts, seconds summed over
attempts, device, host, error). Exit codes: 0 done, 2 a user-input error (one line), 1 anything else.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import DnasError, interrupted_exit_code, is_out_of_memory, memory_message, stop_on_signal
from ..io import atomic_write_json, read_json
from .jobs import JOB, MARK, RUN, SELECTION, STATUS, read_status_file


def describe_device(device: Any, threads: int) -> str:
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def run_job(job_dir: Path, spec: dict[str, Any]) -> Any:
    """Do the job's work; returns the torch device it ran on."""
    from ..rundir import resolve_device
    from ..select.run import ground_truth_hook, run_selection, select_without_run
    kind = spec["kind"]
    if kind == "search":
        import dataclasses

        from ..search import SearchConfig, make_config, run_search
        saved = SearchConfig.from_json(spec["config"])  # planned by make_config: rebuilding it changes nothing
        cfg = make_config(saved.mode, **{k: v for k, v in dataclasses.asdict(saved).items() if k != "mode"})
        run = job_dir / RUN
        cfg.out = str(run)
        resume = (run / "config.json").exists()
        run_search(cfg, resume=resume, force=run.exists() and not resume, quiet=True,
                   on_selection=ground_truth_hook())
        return resolve_device(cfg.device)
    if kind == "select":
        run = job_dir.parent / spec["search"] / RUN
        run_selection(run, spec["method"], options=spec.get("options") or {}, resume=True, quiet=True,
                      device=spec.get("device"))
        from ..rundir import read_config
        return resolve_device(spec.get("device") or read_config(run)["device"])
    if kind == "zeros":
        entry = select_without_run(spec["method"], options=spec.get("options") or {}, quiet=True)
        atomic_write_json(job_dir / SELECTION, entry)
        return resolve_device(entry["options"].get("device", "cpu"))
    raise DnasError(f"{job_dir / JOB}: unknown job kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dnas.reproduce.worker", description=__doc__)
    p.add_argument("job_dir")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(max(1, a.threads))
    signal.signal(signal.SIGTERM, stop_on_signal)  # a terminated job still records its status
    job_dir = Path(a.job_dir)
    status_path = job_dir / STATUS
    try:
        spec = read_json(job_dir / JOB)
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
            raise DnasError(f"{job_dir / JOB}: not a dnas job (a JSON object with its kind)")
    except DnasError as e:
        print(f"dnas: error: {e}", file=sys.stderr)
        return 2
    if spec.get("table"):
        os.environ["DNAS_NB201_TABLE"] = spec["table"]
    before = read_status_file(status_path)
    status = {"name": job_dir.name, "kind": spec["kind"], "state": "running", "attempts": before.get("attempts", 0) + 1,
              "seconds": before.get("seconds", 0.0), "host": socket.gethostname(), "pid": os.getpid(),
              "threads": a.threads, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(status_path, status)
    print(f"{MARK}{time.strftime('%Y-%m-%d %H:%M:%S')} {job_dir.name}: attempt {status['attempts']} on "
          f"{status['host']} with {a.threads} thread(s)", flush=True)
    t0 = time.time()
    code = 0
    try:
        device = run_job(job_dir, spec)
        status.update(state="done", device=describe_device(device, a.threads))
    except DnasError as e:
        print(f"dnas: error: {e}", file=sys.stderr, flush=True)
        status.update(state="failed", error=str(e))
        code = 2
    except KeyboardInterrupt as e:
        status.update(state="interrupted")  # resumes on the next run
        code = interrupted_exit_code(e)
    except BaseException as e:  # noqa: BLE001  (the status must say why; the traceback goes to the log)
        if is_out_of_memory(e):  # one outside the steps that name their sizes: a user's size, as in the CLI
            line = memory_message(e, f"in job {job_dir.name}", lower="the protocol's sizes")
            print(f"dnas: error: {line}", file=sys.stderr, flush=True)
            status.update(state="failed", error=line)
            code = 2
        else:
            traceback.print_exc()
            status.update(state="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
            code = 1
    status.update(seconds=status["seconds"] + time.time() - t0, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(status_path, status)
    print(f"{MARK}{time.strftime('%Y-%m-%d %H:%M:%S')} {job_dir.name}: {status['state']} "
          f"({time.time() - t0:.1f} s this attempt)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
