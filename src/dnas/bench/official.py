"""Ground truth from the official NAS-Bench-201 / NATS-Bench files through their own APIs (optional extra).

``pip install nats_bench`` (or ``nas-bench-201``) and a benchmark file (``NATS-tss-v1_0-3ffb9-simple`` folder,
``NAS-Bench-201-v1_*.pth``): ``OfficialNb201.open(path)`` then ``lookup(arch)`` gives the 200-epoch test
accuracy on CIFAR-10 (``cifar10``, ori-test), CIFAR-100 and ImageNet16-120 (x-test), and the 200-epoch
validation accuracy (``cifar10-valid`` x-valid, the others' x-valid), averaged over seeds
(``is_random=False``). Ranks need every architecture's accuracy and are not computed here (None); use the
CSV table for them.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import DnasError
from ..spaces import Nb201Genotype
from .iso import canonical_nb201

PACKAGES = ("nats_bench", "nas_201_api")
# dnas column -> (official dataset name, metric key)
QUERIES = {
    "cifar10_test": ("cifar10", "test-accuracy"),
    "cifar100_test": ("cifar100", "test-accuracy"),
    "imagenet16_test": ("ImageNet16-120", "test-accuracy"),
    "cifar10_valid": ("cifar10-valid", "valid-accuracy"),
    "cifar100_valid": ("cifar100", "valid-accuracy"),
    "imagenet16_valid": ("ImageNet16-120", "valid-accuracy"),
}


def _import(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def create_api(path: str | os.PathLike, package: str = "auto") -> Any:
    """An API object of whichever official package is installed (``nats_bench`` first)."""
    names = PACKAGES if package == "auto" else (package,)
    if package != "auto" and package not in PACKAGES:
        raise DnasError(f"unknown NB201 API package {package!r} (known: {', '.join(PACKAGES)})")
    for name in names:
        mod = _import(name)
        if mod is None:
            continue
        if name == "nats_bench":
            return mod.create(str(path), "tss", fast_mode=True, verbose=False)
        return mod.NASBench201API(str(path), verbose=False)
    raise DnasError(f"{path} is not a CSV table and no official NB201 API is installed "
                    "(pip install nats_bench, or nas-bench-201)")


class OfficialNb201:
    """``lookup`` over an official API object (anything with ``query_index_by_arch`` and ``get_more_info``)."""

    def __init__(self, api: Any, source: str = "<api>"):
        self.api = api
        self.source = source
        self._iso: dict[int, int] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, package: str = "auto") -> "OfficialNb201":
        path = Path(path).expanduser()
        if not path.exists():
            raise DnasError(f"NB201 benchmark file {path} not found")
        return cls(create_api(path, package), str(path))

    def index(self, arch: str | int | Nb201Genotype) -> int:
        if isinstance(arch, bool):
            raise DnasError(f"not an NB201 architecture: {arch!r}")
        if isinstance(arch, int):
            n = self.num_archs()
            if not 0 <= arch < n:
                raise DnasError(f"NB201 arch index {arch} is out of range 0..{n - 1}")
            return arch
        text = str(arch if isinstance(arch, Nb201Genotype) else Nb201Genotype.parse(arch))
        index = int(self.api.query_index_by_arch(text))
        if index < 0:
            raise DnasError(f"NB201 architecture {text} is not in {self.source}")
        return index

    def num_archs(self) -> int:
        archs = getattr(self.api, "meta_archs", None)
        return len(archs) if archs is not None else len(self.api)

    def arch_str(self, index: int) -> str:
        archs = getattr(self.api, "meta_archs", None)
        return str(archs[index] if archs is not None else self.api.arch(index))

    def _more_info(self, index: int, dataset: str) -> dict[str, Any]:
        try:
            return self.api.get_more_info(index, dataset, hp="200", is_random=False)
        except TypeError:  # nas-bench-201 v1.0 predates ``hp``
            return self.api.get_more_info(index, dataset, use_12epochs_result=False, is_random=False)

    def iso_class(self, index: int) -> int | None:
        """Smallest index with the same canonical cell, from the API's list of all architecture strings."""
        archs = getattr(self.api, "meta_archs", None)
        if archs is None:
            return None
        if self._iso is None:
            first: dict[str, int] = {}
            self._iso = {i: first.setdefault(canonical_nb201(a), i) for i, a in enumerate(archs)}
        return self._iso[index]

    def lookup(self, arch: str | int | Nb201Genotype, iso: bool = False) -> dict[str, Any]:
        index = self.index(arch)
        iso_class = self.iso_class(index)
        if iso and iso_class is not None:
            index = iso_class
        out: dict[str, Any] = {"arch_index": index, "arch_str": self.arch_str(index), "iso_class": iso_class}
        cache: dict[str, dict[str, Any]] = {}
        for column, (dataset, key) in QUERIES.items():
            if dataset not in cache:
                cache[dataset] = self._more_info(index, dataset)
            value = cache[dataset].get(key)
            out[column] = None if value is None else float(value)
        out.update(rank=None, percentile=None, num_archs=self.num_archs(), source=self.source)
        return out
