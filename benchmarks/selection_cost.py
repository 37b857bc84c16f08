"""Cost of each selection method on the same small supernet: seconds, forward passes, fine-tuning epochs.

Trains one small supernet (or takes an existing search run with ``--run``), copies the run directory
once per method so that no method sees another's decisions, runs each selector with its defaults
(plus ``--option METHOD:KEY=VALUE``) and prints one JSON line per method and a table.

    python benchmarks/selection_cost.py                       # CIFAR-10 if $DNAS_DATA_DIR / shared data, else synthetic
    python benchmarks/selection_cost.py --run runs/c10 --methods pt,ostr --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from dnas.search import SearchConfig, run_search
from dnas.select.run import run_selection

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="existing search run directory (default: train a small one)")
    p.add_argument("--methods", default="magnitude,pt,ostr,zeros")
    p.add_argument("--space", default="nb201")
    p.add_argument("--dataset", help="default: cifar10 when its shards are found, else synthetic")
    p.add_argument("--data-dir")
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--cells", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the shared machine: 1)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE")
    p.add_argument("--json", help="also write all rows to this file")
    return p.parse_args(argv)


def method_options(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        method, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        try:
            out.setdefault(method, {})[key] = json.loads(value)
        except json.JSONDecodeError:
            out.setdefault(method, {})[key] = value
    return out


def train_small(a: argparse.Namespace, out: Path) -> Path:
    dataset, data_dir = a.dataset, a.data_dir
    if dataset is None:
        cifar = data_dir or os.environ.get("DNAS_DATA_DIR") or (str(SHARED_CIFAR) if SHARED_CIFAR.exists() else None)
        dataset, data_dir = ("cifar10", cifar) if cifar else ("synthetic", None)
    cfg = SearchConfig(space=a.space, dataset=dataset, data_dir=data_dir, out=str(out), subset=a.subset,
                       resolution=a.resolution, channels=a.channels, cells=a.cells, epochs=a.epochs,
                       device=a.device)
    t0 = time.time()
    run_search(cfg, quiet=True)
    print(f"# supernet: {a.space} on {dataset} (subset {a.subset}, {a.resolution}px, C={a.channels}, "
          f"cells={a.cells}, {a.epochs} epochs) trained in {time.time() - t0:.1f}s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    opts = method_options(a.option)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(a.run) if a.run else train_small(a, Path(tmp) / "supernet")
        for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
            work = Path(tmp) / f"run-{method}"
            shutil.copytree(base, work, ignore=shutil.ignore_patterns("selections"))
            t0 = time.time()
            entry = run_selection(work, method, options=opts.get(method), quiet=True, device=a.device)
            row = {"method": method, "space": entry["space"], "genotype": entry["genotype"], **entry["cost"],
                   "wall_seconds": time.time() - t0, "device": a.device, "threads": a.threads}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'method':<10} {'seconds':>9} {'forward passes':>15} {'tune epochs':>12}  genotype")
    for r in rows:
        print(f"{r['method']:<10} {r['seconds']:>9.2f} {r['forward_passes']:>15} {r['finetune_epochs']:>12}  "
              f"{r['genotype']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
