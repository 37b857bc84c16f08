import os
from pathlib import Path

import pytest
import torch

# Tiny nets on a shared 2-core machine: one thread avoids oversubscription stalls.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def shared_file(rel: str, env: str | None = None) -> Path | None:
    """A file under ../shared/data (or the path in an environment variable), or None when absent."""
    if env and os.environ.get(env):
        p = Path(os.environ[env])
        return p if p.exists() else None
    p = SHARED / rel
    return p if p.exists() else None


@pytest.fixture
def nb201_table_path() -> Path:
    p = shared_file("nasbench201/nb201_accuracy.csv.gz", "DNAS_NB201_TABLE")
    if p is None:
        pytest.skip("NAS-Bench-201 table not available")
    return p


@pytest.fixture
def cifar10_dir() -> Path:
    p = shared_file("cifar10", "DNAS_DATA_DIR")
    if p is None or not (p / "cifar10-test-000000.tar.gz").exists() and not (p / "cifar-10-batches-py").exists():
        pytest.skip("CIFAR-10 data not available")
    return p


@pytest.fixture
def stop_search_at(monkeypatch):
    """``stop_search_at(epoch)``: from now on a search stops when it starts training ``epoch`` (fine-tuning
    inside a selection does not count), with a KeyboardInterrupt as from Ctrl-C, or with whatever ``stop()``
    does; ``stop_search_at(None)`` lets searches run through again."""
    from dnas.search import Searcher
    real = Searcher.train_epoch

    def arm(epoch, stop=None) -> None:
        def stopping(self, e, *a, **k):
            if e == epoch and k.get("desc", "search") == "search":
                if stop is None:
                    raise KeyboardInterrupt
                stop()
            return real(self, e, *a, **k)

        monkeypatch.setattr(Searcher, "train_epoch", real if epoch is None else stopping)

    return arm
