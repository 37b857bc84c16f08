import csv
import gzip
import itertools
import json
import math
import sys

import numpy as np
import pytest
import torch

from dnas.analysis import (RankingSettings, bottom_k_overlap, evaluate_genotype, kendall_tau, load_truth,
                           percentile_of, preserved_bn, rank_run, recalibrate_bn, spearman_rho, summarize,
                           top_k_overlap, top_k_size, true_op_strength)
from dnas.analysis.ops import analyze_ops, compare
from dnas.analysis.ranking import batch_norms, read_records, sample_rows
from dnas.cli import main
from dnas.errors import DnasError
from dnas.io import read_jsonl
from dnas.search import SearchConfig, run_search
from dnas.spaces import DARTS, NB201, Nb201Genotype
from dnas.spaces.ops import NB201_OPS
from dnas.supernet import build_supernet


# -- metrics -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tau_and_rho_match_scipy_with_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40).astype(float)  # many ties on both sides
    y = x + rng.integers(-3, 4, 40)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    z = rng.normal(size=200)
    w = rng.normal(size=200)
    assert kendall_tau(z, w, chunk=7) == pytest.approx(stats.kendalltau(z, w).statistic, abs=1e-12)


def test_rank_metrics_edge_cases():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman_rho([5], [5]))
    assert math.isnan(spearman_rho([1, math.nan, 0.5, 2], [0.9, 0.5, 0.8, 0.3]))  # as scipy: NaN propagates
    assert math.isnan(kendall_tau([1, math.nan, 0.5, 2], [0.9, 0.5, 0.8, 0.3]))
    assert kendall_tau(range(50), range(50), chunk=7) == kendall_tau(range(50), range(50)) == 1.0
    with pytest.raises(DnasError):
        kendall_tau([1, 2], [1, 2, 3])


def test_darts_runs_need_their_own_table(monkeypatch):
    monkeypatch.setenv("DNAS_NB201_TABLE", "/somewhere/nb201.csv.gz")
    with pytest.raises(DnasError, match="darts runs need a ground-truth table: pass --table"):
        load_truth(None, DARTS)


def test_truth_table_refuses_non_finite_accuracies(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("arch,acc\n|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|skip_connect~2|,nan\n")
    with pytest.raises(DnasError, match=r"t.csv:2: 'acc' is not a number: 'nan'"):
        load_truth(p, NB201)


def test_top_k_and_percentile_by_hand():
    pred = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    truth = [50, 90, 80, 10, 20, 30, 40, 60, 70, 100]
    assert top_k_size(0.01, 10) == 1 and top_k_size(0.1, 200) == 20 and top_k_size(0.05, 101) == 6
    assert top_k_overlap(pred, truth, 0.1) == 0.0            # top-1: index 0 vs index 9
    assert top_k_overlap(pred, truth, 0.3) == pytest.approx(2 / 3)  # {0,1,2} vs {9,1,2}
    assert bottom_k_overlap(pred, truth, 0.2) == 0.0          # {9,8} vs {3,4}
    assert percentile_of(50, truth) == 0.5                   # 10,20,30,40,50 of 10 values are <= 50
    assert percentile_of(100, truth) == 1.0


def _fake_table(tmp_path, accs: dict[str, float], name="t.csv"):
    p = tmp_path / name
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch_str", "cifar10_test"])
        for a, v in accs.items():
            w.writerow([a, v])
    return p


def test_summarize_percentiles_against_table_and_sample(tmp_path):
    archs = [str(Nb201Genotype((op,) * 6)) for op in NB201_OPS]
    table = load_truth(_fake_table(tmp_path, dict(zip(archs, [10.0, 20, 30, 40, 50]))), NB201)
    records = [{"arch": archs[1], "supernet_acc": 0.9, "truth": 20.0},
               {"arch": archs[3], "supernet_acc": 0.5, "truth": 40.0},
               {"arch": archs[4], "supernet_acc": 0.1, "truth": 50.0}]
    s = summarize(records, table)
    assert s["supernet_top1"]["arch"] == archs[1]
    assert s["supernet_top1"]["percentile_sampled"] == pytest.approx(1 / 3)
    assert s["supernet_top1"]["percentile_table"] == pytest.approx(2 / 5)
    assert s["kendall_tau"] == -1.0 and s["best_sampled"]["truth"] == 50.0


# -- tables ------------------------------------------------------------------------------------------
def test_table_columns_gzip_and_darts_isomorphic_lookup(tmp_path):
    g = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
         "('skip_connect', 0), ('dil_conv_3x3', 2), ('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2, 3, "
         "4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
         "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, "
         "4, 5])")
    p = tmp_path / "d.csv.gz"
    with gzip.open(p, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["genotype", "params", "val"])
        w.writerow([g, 3.3, 97.0])
    with pytest.raises(DnasError, match="acc column"):
        load_truth(p, DARTS)
    t = load_truth(p, DARTS, acc_column="val")
    swapped = g.replace("[('sep_conv_3x3', 0), ('sep_conv_3x3', 1),", "[('sep_conv_3x3', 1), ('sep_conv_3x3', 0),")
    assert t.lookup(DARTS.parse(swapped)) == 97.0
    with pytest.raises(DnasError, match="no acc column 'x'"):
        load_truth(p, DARTS, acc_column="x")
    with pytest.raises(DnasError, match=":2:"):
        load_truth(p, NB201, acc_column="val")


def test_sampling_uses_iso_representatives_seeded_prefix(tmp_path):
    archs = [str(Nb201Genotype(a)) for a in itertools.islice(itertools.product(NB201_OPS, repeat=6), 20)]
    p = tmp_path / "iso.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch_index", "arch_str", "iso_class", "cifar10_test"])
        for i, a in enumerate(archs):
            w.writerow([i, a, i - i % 2, i])  # every odd row is isomorphic to the even one before it
    t = load_truth(p, NB201)
    rows5, what = sample_rows(t, 5, seed=1)
    rows8, _ = sample_rows(t, 8, seed=1)
    assert "iso-class" in what and all(r % 2 == 0 for r in rows8)
    assert rows8[:5].tolist() == rows5.tolist() and len(set(rows8.tolist())) == 8
    assert sample_rows(t, 5, seed=2)[0].tolist() != rows5.tolist()
    with pytest.raises(DnasError, match="exceeds"):
        sample_rows(t, 11, seed=0)


def test_real_nb201_table_has_6466_classes(nb201_table_path):
    t = load_truth(nb201_table_path, NB201)
    assert len(t) == 15625 and t.unique_rows().size == 6466
    assert t.lookup(NB201.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
                                "nor_conv_1x1~2|")) == pytest.approx(94.3733, abs=1e-3)


# -- BN recalibration --------------------------------------------------------------------------------
def _batches(n, seed=0, bs=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 8, 8, generator=g) * 2 + 1, torch.randint(0, 10, (bs,), generator=g))
            for _ in range(n)]


def test_bn_recalibration_changes_running_stats_only_and_averages_batches():
    torch.manual_seed(0)
    model = build_supernet(NB201, channels=4, cells=1)
    params = {k: v.clone() for k, v in model.named_parameters()}
    bn_keys = {k for k, m in model.named_modules() if m in batch_norms(model) for k in
               [f"{k}.running_mean", f"{k}.running_var", f"{k}.num_batches_tracked"]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches(3)
    with preserved_bn(model):
        assert recalibrate_bn(model, batches) == 3
        after = model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and changed <= bn_keys  # only BN buffers moved
        assert all(torch.equal(params[k], v) for k, v in model.named_parameters())
        # momentum=None: the running mean is the plain average of the per-batch means (stem BN sees x directly)
        stem_conv, stem_bn = model.stem[0], model.stem[1]
        with torch.no_grad():
            means = torch.stack([stem_conv(x).mean(dim=(0, 2, 3)) for x, _ in batches])
        assert torch.allclose(stem_bn.running_mean, means.mean(0), atol=1e-5)
        assert int(stem_bn.num_batches_tracked) == 3 and stem_bn.momentum is None
    restored = model.state_dict()
    assert all(torch.equal(before[k], restored[k]) for k in before)
    assert all(bn.momentum == 0.1 for bn in batch_norms(model))


def test_evaluate_genotype_leaves_supernet_unchanged_and_uses_only_its_path():
    torch.manual_seed(0)
    model = build_supernet(NB201, channels=4, cells=1, impl="reference")  # per-op hooks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = NB201.parse("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|")
    calls = set()
    for m in model.modules():
        if hasattr(m, "names") and hasattr(m, "ops"):
            for name, op in zip(m.names, m.ops):
                op.register_forward_hook(lambda mod, i, o, name=name: calls.add(name))
    valid = _batches(2, seed=5)
    r1 = evaluate_genotype(model, NB201, g, valid=valid, recalibration=lambda: _batches(2, seed=9))
    r2 = evaluate_genotype(model, NB201, g, valid=valid, recalibration=lambda: _batches(2, seed=9))
    assert calls == {"nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3"}
    assert (r1.acc, r1.loss) == (r2.acc, r2.loss) and r1.images == 16
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.arch._override is None


# -- end to end on a tiny supernet -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ana") / "run"
    cfg = SearchConfig(space="nb201", dataset="synthetic", out=str(out), epochs=2, batch_size=32, channels=4, cells=1,
                       subset=160, device="cpu", seed=3)
    run_search(cfg, quiet=True)
    return out


ARCHS = [str(Nb201Genotype(a)) for a in itertools.islice(itertools.product(NB201_OPS[1:], repeat=6), 0, 4096, 409)]


def test_ranking_tau_is_one_on_own_scores_and_minus_one_reversed(tiny_run, tmp_path):
    s = RankingSettings(samples=len(ARCHS), table=str(_fake_table(tmp_path, {a: 50.0 for a in ARCHS}, "flat.csv")),
                        bn_batches=2, valid_batches=2)
    first = rank_run(tiny_run, s, quiet=True, plot=False)
    assert first["evaluated"] == len(ARCHS) and math.isnan(first["kendall_tau"] or math.nan)
    own = {r["arch"]: r["supernet_acc"] for r in read_jsonl(tiny_run / "analysis" / "ranking.jsonl")}
    assert len(set(own.values())) > 3  # the architectures differ

    s.table = str(_fake_table(tmp_path, own, "own.csv"))
    with pytest.raises(DnasError, match="other settings"):
        rank_run(tiny_run, s, quiet=True, plot=False)
    same = rank_run(tiny_run, s, quiet=True, plot=False, force=True)
    assert same["kendall_tau"] == pytest.approx(1.0) and same["spearman_rho"] == pytest.approx(1.0)
    assert same["top_k"]["10%"]["overlap"] == 1.0 and same["supernet_top1"]["percentile_sampled"] == 1.0

    s.table = str(_fake_table(tmp_path, {a: -v for a, v in own.items()}, "rev.csv"))
    rev = rank_run(tiny_run, s, quiet=True, plot=True, force=True)
    assert rev["kendall_tau"] == pytest.approx(-1.0) and rev["spearman_rho"] == pytest.approx(-1.0)
    assert (tiny_run / "analysis" / "ranking.png").stat().st_size > 1000
    saved = json.loads((tiny_run / "analysis" / "ranking.json").read_text())
    assert saved["kendall_tau"] == pytest.approx(-1.0) and saved["valid_images"] > 0


def test_ranking_resumes_from_appended_records(tiny_run, tmp_path):
    table = _fake_table(tmp_path, {a: float(i) for i, a in enumerate(ARCHS)}, "r.csv")
    s = RankingSettings(samples=4, table=str(table), bn_batches=1, valid_batches=1, seed=7)
    rank_run(tiny_run, s, quiet=True, plot=False, force=True)
    path = tiny_run / "analysis" / "ranking.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # died while writing the third record
    assert len(read_records(path)) == 2
    s.samples = 6  # a larger K extends the same sample
    res = rank_run(tiny_run, s, quiet=True, plot=False)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert res["evaluated"] == 6 and len(rows) == 6 and len({r["arch"] for r in rows}) == 6
    assert rows[:2] == [json.loads(x) for x in lines[:2]]
    redo = {r["arch"]: r["supernet_acc"] for r in rows}
    assert all(redo[json.loads(x)["arch"]] == json.loads(x)["supernet_acc"] for x in lines[2:4])  # deterministic


def test_a_ranking_that_only_reuses_records_still_records_their_settings(tiny_run, tmp_path, monkeypatch):
    """Records kept without ranking.settings.json (deleted, or an earlier version's) are reused, and the settings
    are written then even though nothing new is computed: a later ranking with other settings is refused, not
    mixed into them."""
    import dnas.analysis.ranking as R
    s = RankingSettings(samples=2, table=str(_fake_table(tmp_path, {a: 1.0 for a in ARCHS}, "t.csv")),
                        bn_batches=1, valid_batches=1, seed=3)
    rank_run(tiny_run, s, quiet=True, plot=False, force=True)
    settings = tiny_run / "analysis" / "ranking.settings.json"
    ident = json.loads(settings.read_text())
    settings.unlink()
    monkeypatch.setattr(R, "evaluate_genotype", lambda *a, **k: pytest.fail("a record was not reused"))
    assert rank_run(tiny_run, s, quiet=True, plot=False)["evaluated"] == 2
    assert json.loads(settings.read_text()) == ident
    s.seed = 4
    with pytest.raises(DnasError, match="was made with other settings"):
        rank_run(tiny_run, s, quiet=True, plot=False)


def test_ranking_records_that_cannot_be_read_are_one_error(tmp_path):
    """Only a torn *last* line is repaired; a bad line before it, or bytes that are not UTF-8, are one
    DnasError naming the file (the last one used to be a UnicodeDecodeError traceback)."""
    path = tmp_path / "ranking.jsonl"
    good = json.dumps({"arch": ARCHS[0], "supernet_acc": 0.5})
    path.write_text("{\"arch\": \n" + good + "\n")
    with pytest.raises(DnasError, match="ranking.jsonl:1: not a JSON line"):
        read_records(path)
    path.write_bytes(good.encode() + b"\n\xff\xfe\n")
    with pytest.raises(DnasError, match="ranking.jsonl: not a JSON-lines file"):
        read_records(path)



def test_one_ranking_at_a_time_per_run(tiny_run, tmp_path):
    """A second `dnas analyze ranking RUN` would append the same records again; a ranking must not run on a
    run being searched (--resume / --force)."""
    from dnas.rundir import run_lock
    s = RankingSettings(samples=2, table=str(_fake_table(tmp_path, {a: 1.0 for a in ARCHS}, "t.csv")),
                        bn_batches=1, valid_batches=1)
    for lock in (run_lock(tiny_run, name="analysis/.ranking.lock"), run_lock(tiny_run)):
        with lock, pytest.raises(DnasError, match="in use by another dnas command"):
            rank_run(tiny_run, s, quiet=True, plot=False, force=True)
    with run_lock(tiny_run, shared=True):  # a selection on the same run may go on meanwhile
        assert rank_run(tiny_run, s, quiet=True, plot=False, force=True)["evaluated"] == 2

def test_ranking_force_keeps_the_old_records_until_a_new_one_is_computed(tiny_run, tmp_path, capsys, monkeypatch):
    """`analyze ranking --force` discards the old records only once the first new record is computed: running
    out of memory in the first evaluation, or Ctrl-C there, leaves analysis/ as it was (the records were
    deleted and the new settings written before the first evaluation)."""
    import dnas.analysis.ranking as R
    s = RankingSettings(samples=2, table=str(_fake_table(tmp_path, {a: 1.0 for a in ARCHS}, "t.csv")),
                        bn_batches=1, valid_batches=1)
    rank_run(tiny_run, s, quiet=True, plot=False, force=True)
    files = lambda: {p: p.read_bytes() for p in (tiny_run / "analysis").rglob("*")  # noqa: E731
                     if p.is_file() and not p.name.endswith(".lock")}
    before = files()
    args = ["analyze", "ranking", str(tiny_run), "--samples", "3", "--table", s.table, "--bn-recalibrate", "1",
            "--valid-batches", "1", "--seed", "5", "--quiet", "--no-plot", "--force"]
    for exc, code in ((MemoryError(), 2), (KeyboardInterrupt(), 130)):
        with monkeypatch.context() as m:
            m.setattr(R, "evaluate_genotype", lambda *a, e=exc, **k: (_ for _ in ()).throw(e))
            capsys.readouterr()
            assert main(args) == code
        assert files() == before, exc
        if code == 130:
            assert f"({tiny_run / 'analysis' / 'ranking.jsonl'} still holds the old records; run the same command " \
                   "to start over)" in capsys.readouterr().err
    capsys.readouterr()
    assert main(args) == 0
    assert len(read_records(tiny_run / "analysis" / "ranking.jsonl")) == 3
    assert json.loads((tiny_run / "analysis" / "ranking.settings.json").read_text())["seed"] == 5


def test_bn_recalibration_forwards_the_requested_number_of_full_batches(tiny_run, tmp_path, monkeypatch):
    """The w half of tiny_run has 80 images: 2 full batches of 32 per epoch. --bn-recalibrate 5 must forward 5
    batches of 32 (not 2 + a partial one of 16, weighted like a full one, while the summary says 5)."""
    import dnas.analysis.ranking as R
    sizes = []
    real = R.recalibrate_bn

    def spy(model, batches):
        batches = list(batches)
        sizes.append([len(y) for _, y in batches])
        return real(model, batches)
    monkeypatch.setattr(R, "recalibrate_bn", spy)
    s = RankingSettings(samples=2, table=str(_fake_table(tmp_path, {a: 1.0 for a in ARCHS}, "t.csv")),
                        bn_batches=5, valid_batches=1)
    rank_run(tiny_run, s, quiet=True, plot=False, force=True)
    assert sizes == [[32] * 5, [32] * 5]


def test_cli_ranking_with_arch_list_and_errors(tiny_run, tmp_path, capsys):
    table = _fake_table(tmp_path, {a: float(i) for i, a in enumerate(ARCHS)}, "c.csv")
    lst = tmp_path / "archs.txt"
    lst.write_text("# three archs\n" + "\n".join(ARCHS[:3]) + "\n")
    rc = main(["analyze", "ranking", str(tiny_run), "--archs", str(lst), "--table", str(table), "--bn-recalibrate",
               "0", "--valid-batches", "1", "--quiet", "--no-plot", "--force"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["evaluated"] == 3
    lst.write_text(str(Nb201Genotype(("none",) * 6)) + "\n")
    assert main(["analyze", "ranking", str(tiny_run), "--archs", str(lst), "--table", str(table), "--force"]) == 2
    assert "is not in" in capsys.readouterr().err
    assert main(["analyze", "ranking", str(tiny_run), "--table", str(tmp_path / "nope.csv")]) == 2
    assert main(["analyze", "ranking", str(tiny_run), "--table", str(table), "--bn-recalibrate", "-1"]) == 2
    capsys.readouterr()
    # numpy's sampling generator takes no negative seed: that was a ValueError traceback
    assert main(["analyze", "ranking", str(tiny_run), "--table", str(table), "--seed", "-1"]) == 2
    assert "--seed must be a whole number from 0 to 2**63 - 1, got -1" in capsys.readouterr().err


def _additive_table(tmp_path, effect):
    """All 15,625 NB201 architectures with accuracy = 50 + Σ_e effect[e, op_e] (exact op strengths)."""
    p = tmp_path / "additive.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch_str", "cifar10_test"])
        for idx in itertools.product(range(5), repeat=6):
            w.writerow([str(Nb201Genotype(tuple(NB201_OPS[k] for k in idx))),
                        50 + sum(effect[e, k] for e, k in enumerate(idx))])
    return p


def test_op_strength_recovers_additive_effects_and_scores_correlate(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    effect = rng.normal(size=(6, 5))
    table = load_truth(_additive_table(tmp_path, effect), NB201)
    truth = true_op_strength(table)["cell"]
    assert np.allclose(truth, effect - effect.mean(1, keepdims=True), atol=1e-9)
    perfect = compare({"cell": truth * 3 + 1}, {"cell": truth}, NB201)
    assert perfect["spearman_mean"] == pytest.approx(1.0) and perfect["kendall_all_cells"] == pytest.approx(1.0)
    assert perfect["best_op_agreement"] == 1.0
    # A PT-style selection whose scores are the reversed truth, with a NaN cell that must be skipped.
    scores = (-effect).tolist()
    scores[0][0] = math.nan
    sel = {"method": "pt", "space": "nb201", "genotype": str(Nb201Genotype(("skip_connect",) * 6)),
           "scores": {"cell": scores}, "decisions": []}
    (tiny_run / "selections" / "pt.json").write_text(json.dumps(sel))
    res = analyze_ops(tiny_run, table_path=str(tmp_path / "additive.csv"), plot=True)
    pt = res["methods"]["pt"]
    assert pt["spearman_mean"] == pytest.approx(-1.0) and pt["cells"] == 29
    assert pt["genotype_truth"] == pytest.approx(50 + effect[:, 1].sum())
    assert "magnitude" in res["methods"] and (tiny_run / "analysis" / "ops.png").exists()
    assert main(["analyze", "ops", str(tiny_run), "--table", str(tmp_path / "additive.csv"), "--no-plot"]) == 0
    assert "pt" in json.loads(capsys.readouterr().out)


def test_plots_and_cell_drawings(tiny_run, tmp_path):
    from dnas.analysis.cells import cell_graph, draw_genotype
    from dnas.analysis.plots import plot_run
    decisions = [{"kind": "op", "cell_type": "cell", "edge": e, "epoch": 5 * e, "chosen": "nor_conv_3x3",
                  "candidates": {o: {"acc": 0.5 + 0.01 * k, "loss": 1.0} for k, o in enumerate(NB201_OPS)}}
                 for e in range(2)]
    del decisions[1]["candidates"]["none"]  # an op removed before the decision is not scored
    decisions[0]["candidates"]["avg_pool_3x3"]["loss"] = None  # a NaN / inf loss, as standard JSON writes it
    sel = json.loads((tiny_run / "selections" / "magnitude.json").read_text())
    sel.update(method="pt", decisions=decisions, options={"criterion": "loss"})
    (tiny_run / "selections" / "pt.json").write_text(json.dumps(sel))
    (tiny_run / "selections" / "pt.tune.jsonl").write_text(
        "".join(json.dumps({"epoch": i, "train_acc": 0.2 + 0.01 * i}) + "\n" for i in range(3)))
    files = {p.name for p in plot_run(tiny_run, tmp_path / "figs", engine="matplotlib")}
    assert {"alpha_cell.png", "accuracy.png", "pt_decisions.png", "genotype_magnitude.png",
            "genotype_pt.png"} <= files
    darts_g = DARTS.parse("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
                          "('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2), ('sep_conv_3x3', 0), "
                          "('skip_connect', 1)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
                          "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
                          "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
    nodes, arcs = cell_graph(DARTS, darts_g)["normal"]
    assert len(arcs) == 8 + 4 and "c_{k}" in nodes
    assert draw_genotype(DARTS, darts_g, tmp_path / "d.png", engine="matplotlib").stat().st_size > 1000
    g = NB201.parse("|none~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_3x3~2|")
    assert len(cell_graph(NB201, g)["cell"][1]) == 2  # none edges are not drawn


def test_tensorboard_is_optional(tiny_run, monkeypatch):
    from dnas import tensorboard as tb
    tb.log_epoch(None, {"train_acc": 0.5}, 0)  # no writer: nothing happens
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were missing
    assert tb.maybe_writer(tiny_run) is None and tb.export_run(tiny_run) is None
    tb.tb_log(tiny_run, {"train_acc": 0.5}, 0, prefix="x")
    tb.close_all()
    assert main(["analyze", "tensorboard", str(tiny_run)]) == 2


def test_tensorboard_event_files_when_installed(tiny_run):
    pytest.importorskip("tensorboard")
    from dnas import tensorboard as tb
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    target = tb.export_run(tiny_run)
    acc = EventAccumulator(str(target))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "search/train_acc" in tags and "alpha/cell/edge0/nor_conv_3x3" in tags
    assert [e.step for e in acc.Scalars("search/train_acc")] == [0, 1]
    for epoch in (0, 1):  # the live hook: op names come from the run's config.json
        tb.tb_log(tiny_run, {"train_acc": 0.1 * epoch, "alpha": {"cell": [[0.2] * 5] * 6}}, epoch, prefix="live")
    tb.close_all()
    live = EventAccumulator(str(tiny_run / "tensorboard" / "live"))
    live.Reload()
    assert "alpha/cell/edge5/avg_pool_3x3" in live.Tags()["scalars"]


def test_iterative_pruning_scores_become_elimination_order(tmp_path):
    from dnas.analysis.ops import load_method_scores
    nan = math.nan
    r0 = [[0.1, 0.5, 0.4, 0.3, 0.2]] * 6
    r1 = [[nan, 0.9, 0.1, 0.8, 0.7]] * 6
    sel = {"method": "zeros", "genotype": str(Nb201Genotype(("skip_connect",) * 6)),
           "scores": {"cell": [[nan, 0.9, nan, 0.8, nan]] * 6},
           "decisions": [{"kind": "round", "round": 0, "scores": {"cell": r0},
                          "removed": {"cell": [[e, "none"] for e in range(6)]}},
                         {"kind": "round", "round": 1, "scores": {"cell": r1},
                          "removed": {"cell": [[e, n] for e in range(6) for n in ("nor_conv_1x1", "avg_pool_3x3")]}}]}
    (tmp_path / "selections").mkdir()
    (tmp_path / "selections" / "zeros.json").write_text(json.dumps(sel))
    m = load_method_scores(tmp_path, NB201)
    order = np.argsort(m["zeros"]["scores"]["cell"][0])
    assert [NB201_OPS[k] for k in order] == ["none", "nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3", "skip_connect"]
    assert np.allclose(m["zeros_round0"]["scores"]["cell"], r0)


def test_evaluate_genotype_refuses_a_genotype_of_another_space():
    # An S4 cell (noise, sep3) scored on an S2 supernet (skip, sep3) would silently measure skip_connect.
    from dnas.spaces import S2, S4
    net = build_supernet(S2, channels=4, cells=3)
    g = S4.parse(str(S2.discretize({ct: torch.zeros(14, 2) for ct in S2.cell_types})).replace("skip_connect", "noise"))
    batch = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))]
    with pytest.raises(DnasError, match="s4 genotype cannot be evaluated on a s2 supernet"):
        evaluate_genotype(net, S4, g, valid=batch, recalibration=None)
    assert 0 <= evaluate_genotype(net, S2, S2.parse(str(g).replace("noise", "skip_connect")), valid=batch,
                                  recalibration=None).acc <= 1


def test_ground_truth_column_follows_the_runs_dataset(tiny_run, tmp_path, monkeypatch):
    """A CIFAR-100 supernet is ranked against cifar100_test, not the table's first column (cifar10_test)."""
    p = tmp_path / "two.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch_str", "cifar10_test", "cifar100_test"])
        for i, a in enumerate(ARCHS):
            w.writerow([a, 90.0 - i, 60.0 + i])  # reversed order on the two data sets
    assert load_truth(p, NB201).acc_column == "cifar10_test"
    assert load_truth(p, NB201, dataset="cifar10").acc_column == "cifar10_test"
    assert load_truth(p, NB201, dataset="synthetic").acc_column == "cifar10_test"
    t = load_truth(p, NB201, dataset="cifar100")
    assert t.acc_column == "cifar100_test" and t.lookup(Nb201Genotype.parse(ARCHS[1])) == 61.0
    assert load_truth(p, NB201, acc_column="cifar10_test", dataset="cifar100").acc_column == "cifar10_test"
    with pytest.raises(DnasError, match="no cifar100 accuracy column"):
        load_truth(_fake_table(tmp_path, {a: 1.0 for a in ARCHS}, "c10.csv"), NB201, dataset="cifar100")
    # Both commands pass the run's data set on.
    run = tmp_path / "c100run"
    (run / "selections").mkdir(parents=True)
    cfg = json.loads((tiny_run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "dataset": "cifar100"}))
    sel = {"method": "pt", "space": "nb201", "genotype": ARCHS[1], "scores": {"cell": np.eye(6, 5).tolist()},
           "decisions": []}
    (run / "selections" / "pt.json").write_text(json.dumps(sel))
    res = analyze_ops(run, table_path=str(p), plot=False)
    assert res["table"]["acc_column"] == "cifar100_test" and res["methods"]["pt"]["genotype_truth"] == 61.0
    import dnas.analysis.ranking as R
    seen = {}

    def spy(*args, **kw):
        seen.update(kw)
        raise DnasError("stop")
    monkeypatch.setattr(R, "load_truth", spy)
    with pytest.raises(DnasError, match="stop"):
        rank_run(tiny_run, RankingSettings(samples=2, table=str(p)), quiet=True, plot=False)
    assert seen.get("dataset") == "synthetic"


def test_an_architecture_listed_twice_is_refused(tmp_path):
    from dnas.analysis.ranking import candidates
    archs = [str(Nb201Genotype((op,) * 6)) for op in NB201_OPS]
    table = load_truth(_fake_table(tmp_path, dict(zip(archs, [10.0, 20, 30, 40, 50]))), NB201)
    lst = tmp_path / "archs.txt"
    lst.write_text("\n".join([archs[1], archs[2], archs[1]]) + "\n")
    with pytest.raises(DnasError, match="listed twice"):
        candidates(table, samples=None, seed=0, archs_file=str(lst))
    lst.write_text("\n".join(archs[1:4]) + "\n")
    assert [t for _, t in candidates(table, samples=None, seed=0, archs_file=str(lst))[0]] == [20.0, 30.0, 40.0]
