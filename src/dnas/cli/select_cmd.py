"""dnas select: run a selection method on a search run (or a training-free one on a bare space)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DnasError
from . import parse_options, say_finished


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="select an architecture from a trained supernet",
                       description="Run a selection method on a search run directory; writes RUN/selections/"
                                   "<method>.json and adds it to RUN/result.json. A method already selected on RUN "
                                   "(magnitude: by the search) is refused unless --force (selects again) or --resume "
                                   "(leaves a finished one as it is). Training-free methods (zeros) "
                                   "also run without RUN, given --space.")
    p.add_argument("run", nargs="?", help="search run directory (omit for training-free methods)")
    p.add_argument("--method", required=True, help="magnitude, pt, ostr or zeros")
    p.add_argument("--space", help="search space when there is no RUN (zeros)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. proj_intv=5, criterion=loss, progressive=true; repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted progressive selection (pt, ostr); one that finished with the same "
                        "options is left as it is (with other options it runs again)")
    p.add_argument("--force", action="store_true",
                   help="select again, replacing a finished selection (RUN/selections/<method>.json) or discarding "
                        "an interrupted one (its progress stays until the new selection's first decision is saved); "
                        "without RUN: overwrite --out")
    p.add_argument("--device", help="auto, cpu or cuda (default: the run's device)")
    p.add_argument("--out", help="without RUN: also write the selection JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(a: argparse.Namespace) -> int:
    from ..io import atomic_write_json, to_json
    from ..select.run import finished_selection, get_method, run_selection, select_without_run
    get_method(a.method)
    options = parse_options(a.option)
    if a.run is not None:
        if a.space or a.out:
            raise DnasError("--space and --out are for selections without a run directory")
        finished = a.resume and not a.force and finished_selection(a.run, a.method, options) is not None
        entry = run_selection(a.run, a.method, options=options, resume=a.resume, quiet=a.quiet, device=a.device,
                              force=a.force)
        if finished:
            say_finished(a.run, f"selection {a.method} (with these options)")
    else:
        if a.resume:
            raise DnasError("--resume needs a run directory")
        if a.force and not a.out:
            raise DnasError("--force needs a run directory or --out")
        if a.out and Path(a.out).is_dir():
            raise DnasError(f"--out {a.out} is a directory, not a file")
        if a.out and Path(a.out).exists() and not a.force:
            raise DnasError(f"{a.out} exists; pass --force to overwrite it")
        if a.space:
            options["space"] = a.space
        if a.device:
            options["device"] = a.device
        entry = select_without_run(a.method, options=options, quiet=a.quiet)
        if a.out:
            atomic_write_json(a.out, entry)
    line = {"run": a.run, "method": entry["method"], "space": entry["space"], "genotype": entry["genotype"],
            "cost": entry["cost"]}
    if "ground_truth" in entry:
        line["ground_truth"] = entry["ground_truth"]
    print(to_json(line))
    return 0
