"""The report of a reproduction grid, built only from its job directories (so it can be rebuilt at any
time, also while jobs run): ``DIR/report.json``, ``DIR/report.md`` and ``DIR/accuracy.png``.

Per (mode, method): how many seeds finished, mean ± std over seeds (sample std, n - 1) of the selected
architectures' NAS-Bench-201 test accuracy on CIFAR-10, CIFAR-100 and ImageNet16-120, their mean rank
percentile, the search and selection cost, the device, and the paper's numbers next to them.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from ..errors import DnasError
from ..io import atomic_write_json, atomic_write_text
from ..rundir import read_metrics, read_selection
from .jobs import RUN, Job, is_finished, job_dir, read_status, search_name, selection_file
from .protocols import PAPER, PaperNumber, Protocol, label

DATASETS = (("cifar10", "cifar10_test", "CIFAR-10"), ("cifar100", "cifar100_test", "CIFAR-100"),
            ("imagenet16", "imagenet16_test", "ImageNet16-120"))
FIGURE = "accuracy.png"


def ground_truth(arch: str, carried: dict[str, Any] | None, table: str | None) -> dict[str, Any] | None:
    """The benchmark row of an NB201 architecture: looked up now when ``dnas.bench`` can, else the row
    the selection carried when it was written."""
    try:
        from ..bench import lookup_nb201
    except ImportError:
        return carried or None
    try:
        row = lookup_nb201(arch, table)
    except DnasError:
        return carried or None
    return row or carried or None


def _stats(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0, "mean": None, "std": None}
    return {"n": len(vals), "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None}


def _search_record(out: Path, mode: str, seed: int) -> dict[str, Any]:
    """Cost and final supernet accuracy of one search job (whatever of it exists)."""
    run = job_dir(out, search_name(mode, seed)) / RUN
    status = read_status(out, search_name(mode, seed))
    rec: dict[str, Any] = {"mode": mode, "seed": seed, "state": status.get("state"), "device": status.get("device"),
                           "seconds": status.get("seconds")}
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        rows = read_metrics(metrics)
        rec["epochs_done"] = len(rows)
        rec["train_seconds"] = sum(r.get("seconds", 0.0) for r in rows)
        if rows:
            rec["train_acc"] = rows[-1].get("train_acc")
            rec["valid_acc"] = next((r["valid_acc"] for r in reversed(rows) if "valid_acc" in r), None)
    if rec["seconds"] is None:
        rec["seconds"] = rec.get("train_seconds")
    return rec


def _selection_record(out: Path, job: Job, search: dict[str, Any], table: str | None) -> dict[str, Any] | None:
    path = selection_file(out, job)
    if not is_finished(out, job):
        return None
    sel = read_selection(path)
    gt = ground_truth(sel["genotype"], sel.get("ground_truth"), table) or {}
    status = read_status(out, job.name) if job.kind != "search" else {}
    rec = {"seed": job.seed, "genotype": sel["genotype"],
           "select_seconds": sel.get("cost", {}).get("seconds"),
           "select_job_seconds": status.get("seconds"),
           "search_seconds": search.get("seconds") if job.kind != "zeros" else 0.0,
           "device": status.get("device") or search.get("device"),
           "supernet_valid_acc": search.get("valid_acc") if job.kind != "zeros" else None,
           "percentile": gt.get("percentile"), "rank": gt.get("rank")}
    for key, col, _ in DATASETS:
        rec[key] = gt.get(col)
    return rec


def _paper_json(p: PaperNumber | None) -> dict[str, Any]:
    p = p or PaperNumber(source="not reported")
    return {"cifar10": p.cifar10, "cifar100": p.cifar100, "imagenet16": p.imagenet16, "source": p.source}


def collect(out: str | Path, protocol: Protocol, seeds: list[int], jobs: list[Job],
            table: str | None = None) -> dict[str, Any]:
    """Everything the report shows, as JSON."""
    out = Path(out)
    searches = {(m, s): _search_record(out, m, s) for s in seeds for m in protocol.modes}
    by_key: dict[tuple[str | None, str], list[Job]] = {}
    for j in jobs:
        by_key.setdefault((j.mode, j.method), []).append(j)
    rows = []
    order = [(m, meth) for m in protocol.modes for meth in protocol.methods(m)]
    order += [(None, "zeros")] if protocol.zeros else []
    for mode, method in order:
        per_seed = []
        for j in sorted(by_key.get((mode, method), []), key=lambda j: j.seed):
            rec = _selection_record(out, j, searches.get((mode, j.seed), {}), table)
            if rec is not None:
                per_seed.append(rec)
        row = {"mode": mode, "method": method, "label": label(mode, method), "n": len(per_seed),
               "seeds": per_seed, "paper": _paper_json(PAPER.get((mode, method)))}
        for key in ("cifar10", "cifar100", "imagenet16", "percentile", "search_seconds", "select_seconds",
                    "supernet_valid_acc"):
            row[key] = _stats([r[key] for r in per_seed])
        row["devices"] = sorted({r["device"] for r in per_seed if r["device"]})
        rows.append(row)
    states = {"done": [], "failed": {}, "unfinished": []}
    started, ended, job_seconds = [], [], 0.0
    for j in jobs:
        st = read_status(out, j.name)
        job_seconds += st.get("seconds") or 0.0
        if st.get("started"):
            started.append(st["started"])
        if st.get("ended"):
            ended.append(st["ended"])
        if is_finished(out, j):
            states["done"].append(j.name)
        elif st.get("state") == "failed":
            states["failed"][j.name] = st.get("error", "failed")
        else:
            states["unfinished"].append(j.name)
    return {"protocol": protocol.to_json(), "protocol_id": protocol.id, "seeds": list(seeds),
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "table": table, "rows": rows,
            "supernets": [searches[k] for k in sorted(searches, key=lambda k: (protocol.modes.index(k[0]), k[1]))],
            "jobs": {**states, "total": len(jobs), "job_seconds": job_seconds,
                     "first_start": min(started) if started else None, "last_end": max(ended) if ended else None}}


# -- rendering ------------------------------------------------------------------------------------------

def _fmt(s: dict[str, Any], digits: int = 2, of: int | None = None) -> str:
    """mean ± std; "(k of n)" when only k of the row's n finished seeds have this value (no ground truth)."""
    if not s["n"]:
        return "–"
    text = f"{s['mean']:.{digits}f}" if s["std"] is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return text if of is None or s["n"] == of else f"{text} ({s['n']} of {of})"


def _paper(v: float | None) -> str:
    return "not reported" if v is None else f"{v:.2f}"


def _secs(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "–"
    return f"{s['mean']:.0f}" if s["mean"] >= 10 else f"{s['mean']:.1f}"


def render_markdown(rep: dict[str, Any], rationale: str = "") -> str:
    p = rep["protocol"]
    size = f"C={p['channels']}, N={p['cells']}, {p['resolution'] or 'native'} px, " \
           f"{p['subset'] or 'all'} training images split {p['train_portion']:g} / {1 - p['train_portion']:g}, " \
           f"batch {p['batch_size']}, {p['epochs']} search epochs"
    lines = [f"# Reproduction report: `{rep['protocol_id']}`", "",
             f"{p['summary']}. Space {p['space']}, data {p['dataset']}: {size}. "
             f"Seeds {', '.join(map(str, rep['seeds']))}. Generated {rep['generated']}.", "",
             "NAS-Bench-201 test accuracy (%) of the selected architectures, mean ± std over seeds (sample std); "
             "*paper* = the number the paper reports for that method in the full-scale setting "
             "(C=16, N=5, 32×32, 100 epochs). Percentile: the share of all NAS-Bench-201 architectures whose "
             "CIFAR-10 test accuracy is at most the selected one's (100 = the best). Search s: wall-clock seconds of the supernet's search job; select s: the "
             "selection method's own seconds (magnitude: none). n: seeds finished.", "",
             "| method | n | CIFAR-10 | paper | CIFAR-100 | paper | ImageNet16-120 | paper | C10 percentile | "
             "search s | select s | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        pp = r["paper"]
        n = r["n"]
        lines.append(f"| {r['label']} | {n} | {_fmt(r['cifar10'], of=n)} | {_paper(pp['cifar10'])} | "
                     f"{_fmt(r['cifar100'], of=n)} | {_paper(pp['cifar100'])} | {_fmt(r['imagenet16'], of=n)} | "
                     f"{_paper(pp['imagenet16'])} | {_fmt(r['percentile'], 1, of=n)} | {_secs(r['search_seconds'])} | "
                     f"{_secs(r['select_seconds'])} | {', '.join(r['devices']) or '–'} |")
    lines += ["", f"![accuracy per method, seeds as points]({FIGURE})", "", "## Selected architectures", "",
              "| method | seed | genotype | C10 | C100 | IN16 |", "|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        for s in r["seeds"]:
            acc = [("–" if s[k] is None else f"{s[k]:.2f}") for k, _, _ in DATASETS]
            lines.append(f"| {r['label']} | {s['seed']} | `{s['genotype']}` | {' | '.join(acc)} |")
    lines += ["", "## Supernets", "", "| mode | seed | epochs | train acc | valid acc | search s | device |",
              "|---|---|---|---|---|---|---|"]
    for s in rep["supernets"]:
        ta = "–" if s.get("train_acc") is None else f"{100 * s['train_acc']:.1f}"
        va = "–" if s.get("valid_acc") is None else f"{100 * s['valid_acc']:.1f}"
        secs = "–" if s.get("seconds") is None else f"{s['seconds']:.0f}"
        lines.append(f"| {s['mode']} | {s['seed']} | {s.get('epochs_done', 0)}/{p['epochs']} | {ta} | {va} | "
                     f"{secs} | {s.get('device') or '–'} |")
    j = rep["jobs"]
    lines += ["", "## Jobs", "",
              f"{len(j['done'])} of {j['total']} jobs finished, {len(j['failed'])} failed, "
              f"{len(j['unfinished'])} not finished; {j['job_seconds'] / 60:.1f} min of job time"
              + (f", first start {j['first_start']}, last end {j['last_end']}." if j["first_start"] else ".")]
    for name, why in j["failed"].items():
        lines.append(f"- FAILED `{name}`: {why}")
    if j["unfinished"]:
        lines.append(f"- not finished: {', '.join(f'`{n}`' for n in j['unfinished'])}")
    lines += ["", "## Paper numbers: sources", ""]
    for r in rep["rows"]:
        lines.append(f"- {r['label']}: {r['paper']['source'] or 'not reported'}")
    opts = {k: v for k, v in p["method_options"].items()}
    lines += ["", "## Protocol", "", f"Modes {', '.join(p['modes'])}; selections per mode "
              f"{ {k: ['magnitude', *v] for k, v in p['selections'].items()} }; ZEROS {'on' if p['zeros'] else 'off'}; "
              f"method options {opts}; further search settings {p['search']}; device {p['device']}, "
              f"supernet implementation {p['impl']}."]
    if rationale:
        lines += ["", "```text", rationale, "```"]
    return "\n".join(lines) + "\n"


def render_figure(rep: dict[str, Any], path: Path) -> Path | None:
    """Accuracy per method, one panel per data set: seeds as points, mean as a bar, paper as a star."""
    from ..analysis._mpl import have_matplotlib, new_figure, save
    if not have_matplotlib():
        return None
    rows = rep["rows"]
    fig = new_figure(4.0 * len(DATASETS), 3.0 + 0.12 * max(len(r["label"]) for r in rows))
    axes = fig.subplots(1, len(DATASETS), sharey=False)
    for ax, (key, _, title) in zip(axes, DATASETS):
        for x, r in enumerate(rows):
            vals = [s[key] for s in r["seeds"] if s[key] is not None]
            jitter = [(i - (len(vals) - 1) / 2) * 0.08 for i in range(len(vals))]
            ax.scatter([x + d for d in jitter], vals, s=22, color="tab:blue", zorder=3,
                       label="seeds" if x == 0 else None)
            if vals:
                m = statistics.fmean(vals)
                ax.hlines(m, x - 0.25, x + 0.25, color="black", lw=1.5, zorder=2, label="mean" if x == 0 else None)
            pv = r["paper"][key]
            if pv is not None:
                ax.scatter([x], [pv], marker="*", s=120, color="tab:red", zorder=4, label="paper")
        ax.set_title(f"{title} (NB201 test acc %)", fontsize=9)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["label"] for r in rows], rotation=35, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="outside upper right", fontsize=7, ncols=3)
    fig.suptitle(f"{rep['protocol_id']}: selected architectures, seeds {', '.join(map(str, rep['seeds']))}",
                 fontsize=10)
    return save(fig, path)


def write_report(out: str | Path, protocol: Protocol, seeds: list[int], jobs: list[Job],
                 table: str | None = None) -> dict[str, Any]:
    out = Path(out)
    rep = collect(out, protocol, seeds, jobs, table)
    fig = render_figure(rep, out / FIGURE)
    rep["figure"] = fig.name if fig else None
    atomic_write_json(out / "report.json", rep)
    atomic_write_text(out / "report.md", render_markdown(rep, protocol.rationale))
    return rep
