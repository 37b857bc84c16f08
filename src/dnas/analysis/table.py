"""Ground-truth tables: any CSV (optionally gzip) with an architecture column and an accuracy column.

The NAS-Bench-201 table (``arch_str``, ``iso_class``, ``cifar10_test``, ...) and the NAS-Bench-301
sample (``genotype``, ``cifar10_valid``) both load through :func:`load_truth`; architectures are parsed
with the run's space, so isomorphic spellings of a DARTS cell (edges listed in another order within a
node) find the same row.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable

import numpy as np

from ..errors import DnasError
from ..spaces import Genotype, Space

ARCH_COLUMNS = ("arch_str", "genotype", "arch", "architecture")
ACC_COLUMNS = ("cifar10_test", "cifar10_valid", "accuracy", "acc", "test_acc", "valid_acc")
BENCH_DATASETS = ("cifar10", "cifar100", "imagenet16")  # the data sets benchmark tables name columns after
TABLE_ENV = "DNAS_NB201_TABLE"


def arch_key(genotype: Genotype) -> Hashable:
    """Identity used to match architectures: the DARTS order-free key, else the canonical string."""
    key = getattr(genotype, "key", None)
    return key() if callable(key) else str(genotype)


@dataclass
class TruthTable:
    """Parsed rows of a ground-truth table: one genotype and one accuracy per row."""

    space: Space
    path: str
    arch_column: str
    acc_column: str
    genotypes: list[Genotype]
    acc: np.ndarray
    iso_class: np.ndarray | None = None  # NB201: the smallest arch_index of the row's isomorphism class
    arch_index: np.ndarray | None = None
    _rows: dict[Hashable, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rows = {}
        for i, g in enumerate(self.genotypes):
            self._rows.setdefault(arch_key(g), i)

    def __len__(self) -> int:
        return len(self.genotypes)

    def row(self, genotype: Genotype) -> int | None:
        return self._rows.get(arch_key(genotype))

    def lookup(self, genotype: Genotype) -> float | None:
        r = self.row(genotype)
        return None if r is None else float(self.acc[r])

    def unique_rows(self) -> np.ndarray:
        """One row per computational-equivalence class when the table says (NB201's 6,466), else all rows."""
        if self.iso_class is None or self.arch_index is None:
            return np.arange(len(self))
        return np.flatnonzero(self.iso_class == self.arch_index)

    def describe(self) -> dict[str, object]:
        return {"path": self.path, "arch_column": self.arch_column, "acc_column": self.acc_column,
                "rows": len(self), "unique_rows": int(self.unique_rows().size)}


def default_table_path() -> str | None:
    """The NB201 table the session is configured with (``dnas.bench``'s rule: $DNAS_NB201_TABLE)."""
    try:
        from ..bench import resolve_table_path
    except ImportError:
        return os.environ.get(TABLE_ENV) or None
    path = resolve_table_path(None, required=False)
    return None if path is None else str(path)


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8", newline="") if gz else open(path, encoding="utf-8", newline="")


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DnasError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for c in defaults:
        if c in columns:
            return c
    raise DnasError(f"{path}: cannot tell the {what} column; name it with --{what}-column "
                    f"(columns: {', '.join(columns)})")


def _acc_defaults(columns: list[str], dataset: str | None, path: Path) -> tuple[str, ...]:
    """Default accuracy columns for a run on ``dataset``: its own ``<dataset>_test`` / ``_valid`` first.

    A CIFAR-100 supernet must not be ranked against CIFAR-10 ground truth just because that column comes first."""
    if dataset is None or dataset == "cifar10":
        return ACC_COLUMNS
    own = tuple(c for c in (f"{dataset}_test", f"{dataset}_valid") if c in columns)
    if own:
        return own
    if dataset in BENCH_DATASETS:
        raise DnasError(f"{path}: no {dataset} accuracy column for this {dataset} run; name one with --acc-column "
                        f"(columns: {', '.join(columns)})")
    return ACC_COLUMNS


def load_truth(path: str | Path | None, space: Space, arch_column: str | None = None,
               acc_column: str | None = None, dataset: str | None = None) -> TruthTable:
    """Read a ground-truth CSV and parse every architecture with ``space``.

    ``dataset``: the run's data set; without ``acc_column`` its own column (e.g. ``cifar100_test``) is used."""
    if path is None:
        if space.family != "nb201":  # $DNAS_NB201_TABLE cannot describe another space
            raise DnasError(f"{space.name} runs need a ground-truth table: pass --table PATH (e.g. the NB301 sample)")
        path = default_table_path()
        if path is None:
            raise DnasError(f"no ground-truth table: pass --table PATH (or set ${TABLE_ENV})")
    path = Path(path)
    if not path.is_file():
        raise DnasError(f"{path}: ground-truth table not found")
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        arch_c = _pick(columns, arch_column, ARCH_COLUMNS, "arch", path)
        acc_c = _pick(columns, acc_column, _acc_defaults(columns, dataset, path), "acc", path)
        with_iso = "iso_class" in columns and "arch_index" in columns
        genotypes, acc, iso, idx = [], [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                genotypes.append(space.parse(row[arch_c]))
                acc.append(float(row[acc_c]))
                if not math.isfinite(acc[-1]):
                    raise ValueError(row[acc_c])
                if with_iso:
                    iso.append(int(row["iso_class"]))
                    idx.append(int(row["arch_index"]))
            except DnasError as e:
                raise DnasError(f"{path}:{line}: {e}") from None
            except (TypeError, ValueError):
                raise DnasError(f"{path}:{line}: {acc_c!r} is not a number: {row[acc_c]!r}") from None
    if not genotypes:
        raise DnasError(f"{path}: the table has no rows")
    return TruthTable(space, str(path), arch_c, acc_c, genotypes, np.asarray(acc, dtype=np.float64),
                      np.asarray(iso) if with_iso else None, np.asarray(idx) if with_iso else None)


def read_arch_list(path: str | Path, space: Space) -> list[Genotype]:
    """One architecture per line (NB201 string or DARTS genotype); blank lines and # comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise DnasError(f"{path}: architecture list not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(space.parse(line))
        except DnasError as e:
            raise DnasError(f"{path}:{n}: {e}") from None
    if not out:
        raise DnasError(f"{path}: no architectures listed")
    return out
