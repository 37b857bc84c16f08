"""dnas reproduce: run a protocol's grid of searches and selections, then report against the papers."""
from __future__ import annotations

import argparse

from ..errors import DnasError


def register(sub: argparse._SubParsersAction) -> None:
    from ..reproduce import PROTOCOLS
    p = sub.add_parser("reproduce", help="run a reproduction protocol and write its report",
                       description="Train every supernet of a protocol (mode x seed), run every selection method "
                                   "on it, look the architectures up in NAS-Bench-201 and write DIR/report.md, "
                                   "DIR/report.json and DIR/accuracy.png. Jobs are separate processes; a finished "
                                   "job is never rerun, an interrupted one resumes.")
    p.add_argument("protocol", help=f"protocol: {', '.join(PROTOCOLS)}")
    p.add_argument("--out", required=True, help="output directory (created; reused to resume or add seeds)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the protocol's)")
    p.add_argument("--workers", type=int, help="jobs at once (default: CPU cores; GPUs for GPU protocols; "
                                                "with --ray the cluster's CPUs / threads)")
    p.add_argument("--threads", type=int, dest="job_threads",
                   help="torch threads per job (default: cores / workers; 1 with --ray); `dnas --threads N "
                        "reproduce` means the same")
    p.add_argument("--ray", metavar="ADDRESS", help="run the jobs as Ray tasks on this cluster ('auto' or host:port; "
                                                    "needs pip install 'dnas[ray]' and a shared file system)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished jobs")
    p.add_argument("--table", help="NAS-Bench-201 table (default $DNAS_NB201_TABLE)")
    p.add_argument("--data-dir", help="dataset folder (default $DNAS_DATA_DIR)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the protocol's); with auto or cuda "
                                     "each local job sees one GPU, cuda:N puts every job on GPU N")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_run)


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise DnasError(f"--seeds expects comma-separated integers, got {text!r}") from None


def _run(a: argparse.Namespace) -> int:
    from ..reproduce import reproduce
    threads = a.job_threads if a.job_threads is not None else a.threads
    r = reproduce(a.protocol, a.out, seeds=parse_seeds(a.seeds), workers=a.workers, threads=threads,
                  ray_address=a.ray, report_only=a.report_only, table=a.table, data_dir=a.data_dir,
                  device=a.device, quiet=a.quiet, say=print)
    jobs = r.report["jobs"]
    print(f"report: {a.out}/report.md ({len(jobs['done'])}/{jobs['total']} jobs finished, "
          f"{len(jobs['failed'])} failed)")
    if jobs["unfinished"] and not a.report_only:
        print(f"unfinished: {', '.join(jobs['unfinished'])}")
    return 1 if jobs["failed"] or (jobs["unfinished"] and not a.report_only) else 0
