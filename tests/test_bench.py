"""NB201 ground truth: the table, lookups, ranks, isomorphism classes, the official-API adapter, `dnas query`."""
from __future__ import annotations

import collections
import gzip
import json
import os
import sys
import types
from pathlib import Path

import pytest

from dnas.bench import Nb201Table, OfficialNb201, canonical_nb201, lookup_nb201, open_benchmark
from dnas.cli import main
from dnas.errors import DnasError
from dnas.spaces import Nb201Genotype

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
# Node 2's ops never reach the output (node 2 -> 3 is none): only the other edges matter.
ISO_A = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
ISO_B = "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"


def shared_table() -> Path | None:
    env = os.environ.get("DNAS_NB201_TABLE")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/nasbench201/nb201_accuracy.csv.gz"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def table() -> Nb201Table:
    path = shared_table()
    if path is None:
        pytest.skip("shared NB201 table not available")
    return Nb201Table.load(path)


HEADER = ["arch_index", "arch_str", "iso_class", "cifar10_test", "cifar100_test", "imagenet16_test"]


def write_table(path: Path, rows: list[list], header: list[str] = HEADER, gz: bool = False) -> Path:
    text = ",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def small_rows() -> list[list]:
    archs = [BEST, ALL_SKIP, ISO_A, ISO_B]
    accs = [(94.0, 73.0, 47.0), (54.0, 15.0, 16.0), (80.0, 50.0, 30.0), (80.0, 51.0, 29.0)]
    return [[i, a, i if i < 3 else 2, *acc] for i, (a, acc) in enumerate(zip(archs, accs))]


# -- the shared table -----------------------------------------------------------------------------------------

def test_best_and_all_skip(table):
    best = table.lookup(BEST)
    assert best["arch_index"] == 6111 and round(best["cifar10_test"], 2) == 94.37
    assert best["rank"] == 1 and best["percentile"] == 100.0 and best["num_archs"] == 15625
    skip = table.lookup(ALL_SKIP)
    assert (round(skip["cifar10_test"], 2), round(skip["cifar100_test"], 2), round(skip["imagenet16_test"], 2)) \
        == (54.30, 15.61, 16.32)
    assert skip["arch_index"] == 1835 and skip["rank"] > 15000
    assert set(best) >= {"cifar10_test_12ep", "imagenet16_valid_12ep", "cifar100_rank", "imagenet16_percentile"}


def test_lookup_by_index_and_genotype(table):
    by_str = table.lookup(BEST)
    assert table.lookup(6111) == by_str
    assert table.lookup(Nb201Genotype.parse(BEST)) == by_str
    assert table.lookup("  " + BEST + "\n") == by_str


def test_isomorphic_strings(table):
    a, b = table.lookup(ISO_A), table.lookup(ISO_B)
    assert a["arch_index"] != b["arch_index"] and a["iso_class"] == b["iso_class"]
    assert table.lookup(ISO_A, iso=True) == table.lookup(ISO_B, iso=True)
    assert table.lookup(ISO_A, iso=True)["arch_index"] == a["iso_class"]


def test_canonical_form_induces_the_benchmark_classes(table):
    classes: dict[str, set[int]] = collections.defaultdict(set)
    for row in table.rows:
        classes[canonical_nb201(row["arch_str"])].add(row["iso_class"])
    assert len(classes) == 6466
    assert all(len(v) == 1 for v in classes.values())  # same canonical form <=> same iso_class
    functional = {canonical_nb201(row["arch_str"], rule="functional") for row in table.rows}
    assert len(functional) == 4930


def test_bad_queries(table):
    with pytest.raises(DnasError, match="3 nodes"):
        table.lookup("|nor_conv_3x3~0|")
    with pytest.raises(DnasError, match="unknown NB201 op"):
        table.lookup(BEST.replace("nor_conv_1x1", "conv_7x7"))
    with pytest.raises(DnasError, match="not in the table"):
        table.lookup(15625)
    with pytest.raises(DnasError):
        table.lookup(3.5)  # type: ignore[arg-type]


# -- canonical form on its own --------------------------------------------------------------------------------

def test_canonical_examples():
    assert canonical_nb201(ALL_SKIP) == "0+0+0+0"  # x + x + 2x
    zero = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert canonical_nb201(zero) == "#+#+#"
    assert canonical_nb201(zero, rule="functional") == "#"
    assert canonical_nb201(ISO_A) == canonical_nb201(ISO_B) == canonical_nb201(Nb201Genotype.parse(ISO_A))
    # Summation order does not matter, the op on each path does.
    a = "|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"
    b = "|skip_connect~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"
    c = "|nor_conv_1x1~0|+|skip_connect~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"
    assert canonical_nb201(a) == canonical_nb201(b) == "#+#+(0)@nor_conv_3x3+0"  # none edges stay as zeros
    assert canonical_nb201(c) != canonical_nb201(a)
    with pytest.raises(DnasError, match="rule"):
        canonical_nb201(BEST, rule="magic")


# -- small tables the tests write -----------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_small_table_ranks_and_percentiles(tmp_path, gz):
    path = write_table(tmp_path / ("t.csv.gz" if gz else "t.csv"), small_rows(), gz=gz)
    t = Nb201Table.load(path)
    assert len(t) == 4
    assert t.lookup(BEST)["rank"] == 1 and t.lookup(BEST)["percentile"] == 100.0
    # Tied accuracies share a rank; the percentile counts archs at or below (itself included).
    a, b = t.lookup(ISO_A), t.lookup(ISO_B)
    assert a["rank"] == b["rank"] == 2 and a["percentile"] == b["percentile"] == 75.0
    assert t.lookup(ALL_SKIP)["rank"] == 4 and t.lookup(ALL_SKIP)["percentile"] == 25.0
    assert b["cifar100_rank"] == 2 and a["cifar100_rank"] == 3
    assert t.best()["arch_str"] == BEST


def test_small_table_derives_iso_classes(tmp_path):
    header = [h for h in HEADER if h != "iso_class"]
    rows = [[r[0], r[1], *r[3:]] for r in small_rows()]
    t = Nb201Table.load(write_table(tmp_path / "t.csv", rows, header))
    assert t.lookup(ISO_B)["iso_class"] == 2 and t.lookup(BEST)["iso_class"] == 0


@pytest.mark.parametrize("content, message", [
    ("arch_index,cifar10_test\n0,1.0\n", "missing columns arch_str"),
    (",".join(HEADER) + "\n0,|bad|,0,1,2,3\n", "line 2"),
    (",".join(HEADER) + f"\n0,{BEST},0,x,2,3\n", "not a number"),
    (",".join(HEADER) + f"\n0,{BEST},0,1,2,3\n0,{ALL_SKIP},0,1,2,3\n", "twice"),
])
def test_malformed_tables(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DnasError, match=message):
        Nb201Table.load(path)


def test_missing_table(tmp_path):
    with pytest.raises(DnasError, match="not found"):
        Nb201Table.load(tmp_path / "nope.csv")


def test_lookup_nb201_uses_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("DNAS_NB201_TABLE", raising=False)
    assert lookup_nb201(BEST) is None
    path = write_table(tmp_path / "t.csv", small_rows())
    assert lookup_nb201(BEST, path)["cifar10_test"] == 94.0
    monkeypatch.setenv("DNAS_NB201_TABLE", str(path))
    assert lookup_nb201(Nb201Genotype.parse(ALL_SKIP))["arch_index"] == 1
    assert lookup_nb201(ISO_A, iso=True) == lookup_nb201(ISO_B, iso=True)


# -- official API adapter (a fake package standing in for nats_bench / nas_201_api) ---------------------------

class FakeApi:
    """Mimics the official API on 4 architectures; ``calls`` records every ``get_more_info``."""

    def __init__(self, path: str, old: bool = False):
        self.path, self.old = path, old
        self.meta_archs = [BEST, ALL_SKIP, ISO_A, ISO_B]
        self.calls: list[tuple] = []

    def __len__(self) -> int:
        return len(self.meta_archs)

    def query_index_by_arch(self, arch: str) -> int:
        return self.meta_archs.index(arch) if arch in self.meta_archs else -1

    def get_more_info(self, index, dataset, iepoch=None, hp=None, is_random=True, use_12epochs_result=None):
        if self.old and hp is not None:
            raise TypeError("unexpected keyword argument 'hp'")
        self.calls.append((index, dataset, hp, use_12epochs_result, is_random))
        base = {"cifar10": 90.0, "cifar10-valid": 88.0, "cifar100": 70.0, "ImageNet16-120": 40.0}[dataset]
        info = {"test-accuracy": base + index}
        if dataset != "cifar10":
            info["valid-accuracy"] = base + index - 0.5
        return info


@pytest.fixture
def fake_nats(monkeypatch):
    created = []
    mod = types.ModuleType("nats_bench")

    def create(path, space, fast_mode=False, verbose=True):
        assert space == "tss"
        created.append(FakeApi(path))
        return created[-1]

    mod.create = create  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nats_bench", mod)
    return created


def test_official_adapter_nats(tmp_path, fake_nats):
    path = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
    path.mkdir()
    bench = OfficialNb201.open(path)
    out = bench.lookup(ALL_SKIP)
    assert out["arch_index"] == 1 and out["arch_str"] == ALL_SKIP
    assert out["cifar10_test"] == 91.0 and out["cifar100_test"] == 71.0 and out["imagenet16_test"] == 41.0
    assert out["cifar10_valid"] == 88.5 and out["cifar100_valid"] == 70.5 and out["rank"] is None
    assert {c[2] for c in fake_nats[0].calls} == {"200"} and not any(c[4] for c in fake_nats[0].calls)
    assert bench.lookup(ISO_B)["iso_class"] == 2 and bench.lookup(ISO_B, iso=True)["arch_index"] == 2
    assert bench.lookup(3)["arch_str"] == ISO_B
    with pytest.raises(DnasError, match="not in"):
        bench.lookup("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(DnasError, match="out of range"):
        bench.lookup(4)
    # A non-CSV path goes to the adapter through the common entry point.
    assert open_benchmark(path).lookup(BEST)["cifar10_test"] == 90.0


def test_official_adapter_old_nb201_api(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nats_bench", None)  # "not installed"
    mod = types.ModuleType("nas_201_api")
    apis = []
    mod.NASBench201API = lambda path, verbose=True: apis.append(FakeApi(path, old=True)) or apis[-1]  # type: ignore
    monkeypatch.setitem(sys.modules, "nas_201_api", mod)
    pth = tmp_path / "NAS-Bench-201-v1_0-e61699.pth"
    pth.write_bytes(b"")
    out = OfficialNb201.open(pth).lookup(BEST)
    assert out["cifar10_test"] == 90.0
    assert all(c[3] is False for c in apis[0].calls)  # fell back to use_12epochs_result=False


def test_official_adapter_without_packages(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nats_bench", None)
    monkeypatch.setitem(sys.modules, "nas_201_api", None)
    pth = tmp_path / "bench.pth"
    pth.write_bytes(b"")
    with pytest.raises(DnasError, match="no official NB201 API"):
        open_benchmark(pth)


# -- dnas query -----------------------------------------------------------------------------------------------

def test_query_cli_nb201(tmp_path, capsys, monkeypatch):
    path = shared_table() or write_table(tmp_path / "t.csv", small_rows())
    monkeypatch.setenv("DNAS_NB201_TABLE", str(path))
    assert main(["query", "--space", "nb201", "--arch", BEST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rank"] == 1 and out["params_M"] == pytest.approx(1.073466) and out["flops_M"] > 100
    assert main(["query", "--arch", ALL_SKIP, "--table", str(write_table(tmp_path / "s.csv", small_rows()))]) == 0
    assert json.loads(capsys.readouterr().out)["cifar10_test"] == 54.0


def test_query_cli_errors(capsys, monkeypatch):
    monkeypatch.delenv("DNAS_NB201_TABLE", raising=False)
    assert main(["query", "--space", "nb201", "--arch", BEST]) == 2
    assert "DNAS_NB201_TABLE" in capsys.readouterr().err
    assert main(["query", "--space", "nb201", "--arch", "|x~0|", "--table", "/nonexistent.csv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
