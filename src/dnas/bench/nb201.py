"""NAS-Bench-201 ground truth from a CSV table (the shared ``nb201_accuracy.csv.gz`` format).

Columns: ``arch_index``, ``arch_str``, optionally ``iso_class`` (derived with ``canonical_nb201`` when
absent), then accuracy columns in percent: ``cifar10_test``, ``cifar100_test``, ``imagenet16_test`` (200
epochs) and the 12-epoch ``*_valid_12ep`` / ``*_test_12ep`` columns. Any other numeric column is carried
through to lookups as is.

Ranks and percentiles are among all rows of the table (all 15,625 architectures for the shared table):
``*_rank`` = 1 + the number of architectures with a strictly higher accuracy (1 = best; ties share a
rank); ``*_percentile`` = 100 x the share of architectures whose accuracy is lower than or equal to this
one's (itself included; the best scores 100). ``rank`` / ``percentile`` are the CIFAR-10 test ones.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
from bisect import bisect_right
from pathlib import Path
from typing import Any

from ..errors import DnasError
from ..spaces import Nb201Genotype
from ..spaces.ops import NB201_OPS
from .iso import canonical_nb201

TABLE_ENV = "DNAS_NB201_TABLE"
NUM_ARCHS = 15625
# Ranked column per dataset: the 200-epoch test accuracy that papers report.
RANKED = {"cifar10": "cifar10_test", "cifar100": "cifar100_test", "imagenet16": "imagenet16_test"}
ACCURACY_COLUMNS = ("cifar10_test", "cifar100_test", "imagenet16_test", "cifar10_valid_12ep", "cifar10_test_12ep",
                    "cifar100_valid_12ep", "cifar100_test_12ep", "imagenet16_valid_12ep", "imagenet16_test_12ep")

Arch = str | int | Nb201Genotype
# The standard form of an arch string, matched directly: parsing 15,625 strings one by one is slow.
_ARCH_RE = re.compile(r"\|(\w+)~0\|\+\|(\w+)~0\|(\w+)~1\|\+\|(\w+)~0\|(\w+)~1\|(\w+)~2\|")
_OPS = set(NB201_OPS)


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"  # gzip magic, whatever the file is called
    return gzip.open(path, "rt", newline="") if gz else open(path, newline="")


def _float(value: str, column: str, line: int, path: Path) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DnasError(f"{path}: line {line}: column {column} is not a number ({value!r})") from None
    if math.isnan(v):
        raise DnasError(f"{path}: line {line}: column {column} is missing")
    return v


class Nb201Table:
    """All rows of an NB201 accuracy table in memory, indexed by architecture string and index."""

    def __init__(self, rows: list[dict[str, Any]], source: str = "<memory>"):
        if not rows:
            raise DnasError(f"{source}: NB201 table has no rows")
        self.source = source
        self.rows = sorted(rows, key=lambda r: r["arch_index"])
        self.columns = [c for c in self.rows[0] if c not in ("arch_index", "arch_str", "iso_class")]
        self._by_index: dict[int, dict[str, Any]] = {}
        self._by_str: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            if r["arch_index"] in self._by_index:
                raise DnasError(f"{source}: arch_index {r['arch_index']} appears twice")
            if r["arch_str"] in self._by_str:
                raise DnasError(f"{source}: {r['arch_str']} appears twice")
            self._by_index[r["arch_index"]] = r
            self._by_str[r["arch_str"]] = r
        if any("iso_class" not in r for r in self.rows):
            self._derive_iso_classes()
        # Sorted values per ranked column, for ranks by bisection.
        self._sorted = {c: sorted(r[c] for r in self.rows) for c in RANKED.values() if c in self.columns}

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Nb201Table":
        """Read a CSV table, gzip-compressed or plain."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DnasError(f"NB201 table {path} not found")
        rows = []
        try:
            with _open_text(path) as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                missing = [c for c in ("arch_index", "arch_str", "cifar10_test") if c not in header]
                if missing:
                    raise DnasError(f"{path}: not an NB201 table (missing columns {', '.join(missing)})")
                for line, rec in enumerate(reader, start=2):
                    rows.append(cls._row(rec, header, line, path))
        except (OSError, EOFError, csv.Error, UnicodeDecodeError) as e:
            raise DnasError(f"{path}: cannot read NB201 table ({type(e).__name__}: {e})") from None
        return cls(rows, str(path))

    @staticmethod
    def _row(rec: dict[str, str], header: list[str], line: int, path: Path) -> dict[str, Any]:
        try:
            index = int(rec["arch_index"])
        except (TypeError, ValueError):
            raise DnasError(f"{path}: line {line}: arch_index {rec['arch_index']!r} is not an integer") from None
        arch = (rec["arch_str"] or "").strip()
        m = _ARCH_RE.fullmatch(arch)
        if m is None or not set(m.groups()) <= _OPS:
            # The slow parser explains what is wrong; a string it accepts is just not in the standard form.
            try:
                arch = str(Nb201Genotype.parse(arch))
            except DnasError as e:
                raise DnasError(f"{path}: line {line}: {e}") from None
        row: dict[str, Any] = {"arch_index": index, "arch_str": arch}
        if rec.get("iso_class") not in (None, ""):
            row["iso_class"] = int(rec["iso_class"])
        for c in header:
            if c not in row and c != "iso_class":
                row[c] = _float(rec[c], c, line, path)
        return row

    def _derive_iso_classes(self) -> None:
        first: dict[str, int] = {}
        for r in self.rows:  # ascending index: the first member seen is the smallest index
            r["iso_class"] = first.setdefault(canonical_nb201(r["arch_str"]), r["arch_index"])

    # -- queries -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def row(self, arch: Arch) -> dict[str, Any]:
        """The raw row of an architecture string, index or genotype."""
        if isinstance(arch, bool):
            raise DnasError(f"not an NB201 architecture: {arch!r}")
        if isinstance(arch, int):
            if arch not in self._by_index:
                raise DnasError(f"NB201 arch index {arch} is not in the table ({self.source}; "
                                f"indices {self.rows[0]['arch_index']}..{self.rows[-1]['arch_index']})")
            return self._by_index[arch]
        if isinstance(arch, Nb201Genotype):
            key = str(arch)
        elif isinstance(arch, str):
            key = str(Nb201Genotype.parse(arch))
        else:
            raise DnasError(f"expected an NB201 arch string, index or genotype, got {type(arch).__name__}")
        if key not in self._by_str:
            raise DnasError(f"NB201 architecture {key} is not in the table {self.source}")
        return self._by_str[key]

    def lookup(self, arch: Arch, iso: bool = False) -> dict[str, Any]:
        """Accuracies, iso class, ranks and percentiles of ``arch``.

        With ``iso=True`` the row of the class representative (the smallest index of ``arch``'s isomorphism
        class) is reported, so isomorphic architectures give identical results.
        """
        row = self.row(arch)
        if iso:
            row = self._by_index.get(row["iso_class"], row)
        out = {"arch_index": row["arch_index"], "arch_str": row["arch_str"], "iso_class": row["iso_class"]}
        out.update({c: row[c] for c in self.columns})
        for dataset, column in RANKED.items():
            if column in self._sorted:
                rank, pct = self._rank(column, row[column])
                out[f"{dataset}_rank"], out[f"{dataset}_percentile"] = rank, pct
        if "cifar10_rank" in out:
            out["rank"], out["percentile"] = out["cifar10_rank"], out["cifar10_percentile"]
        out["num_archs"] = len(self.rows)
        return out

    def _rank(self, column: str, value: float) -> tuple[int, float]:
        values = self._sorted[column]
        at_most = bisect_right(values, value)
        return len(values) - at_most + 1, round(100.0 * at_most / len(values), 4)

    def best(self, column: str = "cifar10_test") -> dict[str, Any]:
        if column not in self.columns:
            raise DnasError(f"{self.source}: no column {column!r}")
        return self.lookup(max(self.rows, key=lambda r: r[column])["arch_index"])


# -- the table a session uses ---------------------------------------------------------------------------

def resolve_table_path(path: str | os.PathLike | None = None, required: bool = True) -> Path | None:
    """``path``, else ``$DNAS_NB201_TABLE``; a DnasError (or None when not ``required``) if neither is set."""
    if path is None or str(path) == "":
        path = os.environ.get(TABLE_ENV) or None
    if path is None:
        if required:
            raise DnasError(f"no NB201 table: pass --table PATH or set {TABLE_ENV}")
        return None
    return Path(path).expanduser()


_CACHE: dict[tuple[str, float], Any] = {}


def open_benchmark(path: str | os.PathLike | None = None) -> Any:
    """The benchmark behind ``path`` (or ``$DNAS_NB201_TABLE``), loaded once per process.

    A ``.csv`` / ``.csv.gz`` file is read as an ``Nb201Table``; anything else (an official ``.pth`` file or
    NATS-Bench folder) goes through ``dnas.bench.official``. Both have ``lookup(arch)``.
    """
    p = resolve_table_path(path)
    assert p is not None
    if not p.exists():
        raise DnasError(f"NB201 table {p} not found")
    key = (str(p.resolve()), p.stat().st_mtime)
    if key not in _CACHE:
        if p.is_file() and (p.name.endswith(".csv") or p.name.endswith(".csv.gz")):
            _CACHE[key] = Nb201Table.load(p)
        else:
            from .official import OfficialNb201
            _CACHE[key] = OfficialNb201.open(p)
    return _CACHE[key]


def lookup_nb201(arch: Arch, table_path: str | os.PathLike | None = None, iso: bool = False) -> dict | None:
    """Ground truth of an NB201 architecture, or None when no table is given or configured."""
    if table_path is None and not os.environ.get(TABLE_ENV):
        return None
    return open_benchmark(table_path).lookup(arch, iso=iso)
