"""Selection methods on tiny supernets: pt, ostr, zeros (and the shared progressive schedule and CLI)."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from dnas.cli import main as cli_main
from dnas.errors import DnasError
from dnas.search import SearchConfig, SearchRun, build_run, run_search
from dnas.select import ostr as ostr_mod
from dnas.select import pt as pt_mod
from dnas.select import zeros as zeros_mod
from dnas.select.common import current_weights, evaluate_weights, reference_model, scoring_loader
from dnas.select.ostr import operation_strength
from dnas.select.progressive import make_plan
from dnas.select.run import SelectionContext, get_method, run_selection
from dnas.spaces import get_space
from dnas.spaces.darts import NODE_EDGES

TINY = dict(dataset="synthetic", resolution=8, channels=4, batch_size=32, eval_every=0)


def tiny_config(space: str = "nb201", subset: int = 128, epochs: int = 1, **kw) -> SearchConfig:
    cells = 1 if get_space(space).family == "nb201" else 3
    return SearchConfig(space=space, subset=subset, epochs=epochs, **{**TINY, "cells": cells, **kw})


def trained(cfg: SearchConfig, prepare=None) -> SearchRun:
    run = build_run(cfg)
    if prepare is not None:
        prepare(run)
    s = run.searcher(quiet=True)
    for e in range(cfg.epochs):
        s.train_epoch(e)
    return run


def select(method: str, run: SearchRun | None, **options) -> "object":
    return get_method(method).fn(run, SelectionContext(method, options, None, False, True))


# -- the progressive schedule ---------------------------------------------------------------------
def test_plan_matches_darts_pt_code():
    nb = make_plan(get_space("nb201"), 5)
    assert nb.tune_epochs == 25 and nb.decision_epochs == [0, 5, 10, 15, 20, 24]
    assert set(nb.steps.values()) == {"op"}
    d = make_plan(get_space("darts"), 5)
    assert d.tune_epochs == 81 and d.decision_epochs == list(range(0, 81, 5))
    assert [d.steps[e] for e in (65, 70, 75, 80)] == ["op", "topology", "topology", "topology"]
    assert sum(v == "op" for v in d.steps.values()) == 14
    # proj_intv=1: darts-pt's NB201 formula would leave an edge undecided; we tune one epoch per edge
    assert make_plan(get_space("nb201"), 1).decision_epochs == list(range(6))


# -- one op made to dominate an edge: every method must pick it -------------------------------------
DOM_EDGE, DOM_OP = 3, "nor_conv_3x3"  # NB201 edge 3 <- 0


def _only_path(run: SearchRun) -> None:
    """Node 3 (the cell output) = the dominant op on edge 3<-0 only: its other ops and the edges
    3<-1, 3<-2 produce exactly zero, so removing that op zeroes every cell and the logits turn constant."""
    arch, spec = run.model.arch, run.space.cells["cell"]
    for k, name in enumerate(spec.ops[DOM_EDGE]):
        if name != DOM_OP:
            arch.remove_op("cell", DOM_EDGE, k)
    arch.remove_edge("cell", 4)
    arch.remove_edge("cell", 5)


@pytest.fixture(scope="module")
def dominated() -> SearchRun:
    return trained(tiny_config(subset=256, epochs=4), _only_path)


def test_pt_picks_dominant_op(dominated):
    run = build_run(dominated.config)
    run.model.load_state_dict(dominated.model.state_dict())
    sel = select("pt", run, proj_intv=1, max_batches=2)
    d = next(d for d in sel.decisions if d["edge"] == DOM_EDGE)
    assert set(d["candidates"]) == {DOM_OP}  # the removed ops are not candidates
    assert d["chosen"] == DOM_OP and sel.genotype.ops[DOM_EDGE] == DOM_OP


def test_pt_keeps_the_op_whose_removal_hurts_most(monkeypatch):
    """darts-pt's rule on hand-set scores: the lowest accuracy after removal wins, ties to the lower index."""
    correct = {0: 50, 1: 40, 2: 10, 3: 30, 4: 10}
    monkeypatch.setattr(pt_mod.PtDecider, "_eval",
                        lambda self, ct, zero: pt_mod.EvalResult(correct[zero[1]], 1.0, 64, 1))
    chosen, info = pt_mod.PtDecider(build_run(tiny_config()), {**pt_mod.DEFAULTS, "max_batches": 1}).op("cell", 0)
    assert chosen == 2 and len(info["candidates"]) == 5


def test_pt_and_ostr_never_keep_a_removed_op():
    """An op masked before selection (crb pruning, remove_op) is out of the supernet: PT does not score
    it and neither PT nor OStr can keep it, even when removing anything else would hurt less."""
    run = trained(tiny_config())
    arch = run.model.arch
    names = run.space.cells["cell"].ops[0]
    for k, n in enumerate(names):
        if n not in ("skip_connect", "avg_pool_3x3"):
            arch.remove_op("cell", 0, k)
    live = {"skip_connect", "avg_pool_3x3"}
    chosen, info = pt_mod.PtDecider(run, {**pt_mod.DEFAULTS, "max_batches": 1}).op("cell", 0)
    assert set(info["candidates"]) == live and names[chosen] in live
    decider = ostr_mod.OstrDecider(reference_model(run), scoring_loader(run, None), {**ostr_mod.DEFAULTS, "batches": 1})
    decider.model.arch.load_state_dict(arch.state_dict())
    chosen, _ = decider.op("cell", 0)
    assert names[chosen] in live


def test_ostr_picks_dominant_op(dominated):
    for absolute in (False, True):
        sel = select("ostr", dominated, abs=absolute)
        row = sel.scores["cell"][DOM_EDGE]
        k = get_space("nb201").cells["cell"].op_index(DOM_EDGE, DOM_OP)
        assert row[k] > 0 and all(v == 0.0 for i, v in enumerate(row) if i != k)
        assert sel.genotype.ops[DOM_EDGE] == DOM_OP
        assert sel.genotype.ops[4] == sel.genotype.ops[5] == "none"  # removed edges: nothing else is left


def test_magnitude_takes_no_options():
    run = build_run(tiny_config())
    assert select("magnitude", run).method == "magnitude"
    with pytest.raises(DnasError, match="magnitude: unknown option.*it takes none"):
        select("magnitude", run, proj_intv=5)


def test_ostr_picks_none_only_when_asked(monkeypatch):
    """Every op's removal would lower the loss (S < 0) on every edge: the best real op is kept by
    default; include_none=true lets none (S = 0) win, the module's first reading."""
    run = build_run(tiny_config())
    crafted = torch.tensor([[0.0, -1.0, -2.0, -0.5, -3.0]] * 6)  # none, skip, conv1x1, conv3x3, pool
    monkeypatch.setattr(ostr_mod, "operation_strength", lambda *a, **k: ({"cell": crafted.clone()}, 1))
    assert set(select("ostr", run).genotype.ops) == {"nor_conv_3x3"}
    assert set(select("ostr", run, include_none=True).genotype.ops) == {"none"}
    assert select("ostr", run).scores["cell"][0] == crafted[0].tolist()  # scores are reported unmasked


def test_ostr_include_none_keeps_removed_ops_and_fixed_edges_out(monkeypatch):
    """include_none lets none win at S = 0, but a removed none (crb pruning) is not in the supernet any more,
    and a fixed edge keeps its op."""
    run = build_run(tiny_config())
    arch = run.model.arch
    arch.remove_op("cell", 0, 0)  # none is gone from edge 0
    arch.remove_op("cell", 2, 0)
    arch.remove_op("cell", 2, 2)  # edge 2: none and conv1x1 gone (both would score exactly 0)
    arch.fix_edge("cell", 1, 1)   # edge 1 decided: skip_connect
    crafted = torch.tensor([[0.0, -1.0, -2.0, -0.5, -3.0]] * 6)  # none, skip, conv1x1, conv3x3, pool
    crafted[2] = torch.tensor([0.0, -1.0, 0.0, -0.5, -3.0])
    monkeypatch.setattr(ostr_mod, "operation_strength", lambda *a, **k: ({"cell": crafted.clone()}, 1))
    ops = select("ostr", run, include_none=True).genotype.ops
    assert ops == ("nor_conv_3x3", "skip_connect", "nor_conv_3x3", "none", "none", "none")


def test_train_mode_bn_scoring_at_resolution_4_refuses_one_image_batches():
    """The search refuses 1-image batches at 4 px; a selector's own eval_batch_size must too (PT scores in
    train-mode BN by default, ostr with bn_mode=train): 12 α images at 11 leave one, and BatchNorm raised a
    ValueError traceback mid-selection. Eval-mode BN, or max_batches stopping before that batch, is fine."""
    run = build_run(tiny_config(subset=24, batch_size=12, resolution=4))
    msg = r"resolution 4: the α-valid \(eval_batch_size\) split \(12 images, batch size 11\) has a 1-image batch"
    with pytest.raises(DnasError, match=msg):
        select("pt", run, eval_batch_size=11, proj_intv=1)
    with pytest.raises(DnasError, match=msg):
        select("ostr", run, eval_batch_size=11, bn_mode="train")
    assert select("ostr", run, eval_batch_size=11).genotype is not None
    assert select("ostr", run, eval_batch_size=11, bn_mode="train", batches=1).genotype is not None

def test_ostr_train_mode_bn_blurs_a_sole_contributor(dominated):
    """Why ostr defaults to eval-mode BN: batch statistics undo a rescaling of the cell output."""
    loader = scoring_loader(dominated)
    model = reference_model(dominated)  # the scoring hooks see per-op modules
    s_train = operation_strength(model, loader, bn_train=True)[0]["cell"][DOM_EDGE].abs().max()
    s_eval = operation_strength(model, loader, bn_train=False)[0]["cell"][DOM_EDGE].abs().max()
    assert s_train < 0.2 * s_eval


def test_zeros_picks_dominant_op():
    """At init: on edge 3<-0 the conv1x1 has zero weights and skip/pool have α = 0, so their
    contributions and hence |α·∂R/∂α| are exactly 0, while the conv3x3 path scores > 0."""
    space = get_space("nb201")
    model = zeros_mod.init_supernet(space, channels=4, cells=1, num_classes=10, in_channels=3,
                                    dtype=torch.float64, seed=0, abs_alpha=True)
    spec = space.cells["cell"]
    with torch.no_grad():
        for cell in (m for m in model.modules() if hasattr(m, "mixed")):
            conv1 = cell.mixed[DOM_EDGE].ops[spec.op_index(DOM_EDGE, "nor_conv_1x1")]
            for p in conv1.parameters():
                p.zero_()
        for name in ("skip_connect", "avg_pool_3x3"):
            model.arch.alphas["cell"][DOM_EDGE, spec.op_index(DOM_EDGE, name)] = 0.0
    scores, log = zeros_mod.iterative_prune(model, 8, 3, rounds=4, bn_train=True, seed=0)
    first = torch.tensor(log[0]["scores"]["cell"][DOM_EDGE])
    k = spec.op_index(DOM_EDGE, DOM_OP)
    assert first[k] > 0 and int((first == 0).sum()) == 4
    assert [DOM_EDGE, "none"] in log[0]["removed"]["cell"]  # ties among the zeros: the lower index goes first
    alive = model.arch.mask("cell")[DOM_EDGE]
    assert alive.tolist() == [1.0 if i == k else 0.0 for i in range(5)]


# -- pt: decision counts, topology, trace ---------------------------------------------------------
def test_pt_nb201_six_decisions():
    run = trained(tiny_config())
    sel = select("pt", run, proj_intv=1, max_batches=1)
    assert [d["kind"] for d in sel.decisions] == ["op"] * 6
    assert sorted(d["edge"] for d in sel.decisions) == list(range(6))
    assert run.model.arch.undecided_edges("cell") == []
    assert list(sel.genotype.ops) == [next(d["chosen"] for d in sel.decisions if d["edge"] == e) for e in range(6)]
    assert all(set(d["candidates"]) == set(get_space("nb201").cells["cell"].ops[0]) for d in sel.decisions)
    assert sel.cost["finetune_epochs"] == 6 and sel.cost["forward_passes"] == 6 * 5
    assert not any(math.isnan(v) for row in sel.scores["cell"] for v in row)


def test_pt_darts_family_op_then_topology():
    """A DARTS-family space (S2: same cells and schedule as DARTS, 2 ops per edge, to stay fast on a CPU)."""
    run = trained(tiny_config("s2", subset=64))
    sel = select("pt", run, proj_intv=1, max_batches=1, eval_batch_size=16)
    arch = run.model.arch
    for ct in ("normal", "reduce"):
        ops = [d for d in sel.decisions if d["cell_type"] == ct and d["kind"] == "op"]
        topo = [d for d in sel.decisions if d["cell_type"] == ct and d["kind"] == "topology"]
        assert len(ops) == 14 and sorted(d["edge"] for d in ops) == list(range(14))
        assert sorted(d["node"] for d in topo) == [3, 4, 5]
        assert all(len(d["kept"]) == 2 and set(d["kept"]) | set(d["removed"]) == set(NODE_EDGES[d["node"]])
                   for d in topo)
        kept_edges = [e for e in range(14) if float(arch.mask(ct)[e].sum()) > 0]
        assert len(kept_edges) == 8
        mask = run.space.genotype_mask(sel.genotype)[ct]
        assert [e for e in range(14) if float(mask[e].sum()) > 0] == kept_edges
    # op decisions come first (epochs 0..13), topology after (14..16), normal before reduce
    assert [d["kind"] for d in sel.decisions] == ["op"] * 28 + ["topology"] * 6
    assert sel.cost["finetune_epochs"] == 17


def test_pt_evaluation_leaves_model_unchanged():
    run = trained(tiny_config())
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    loader = scoring_loader(run)
    w = current_weights(run.model.arch)
    w["cell"][0, 1] = 0.0
    r1 = evaluate_weights(run.model, loader, w, bn_train=True)
    r2 = evaluate_weights(run.model, loader, w, bn_train=True)
    assert (r1.correct, r1.loss_sum) == (r2.correct, r2.loss_sum)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())


@pytest.mark.parametrize("where, mode", [("evaluation", "darts1"), ("tuning", "darts1"), ("tuning", "sdarts-rs")])
def test_pt_resume_is_exact(tmp_path, monkeypatch, where, mode):
    cfg = tiny_config(out=str(tmp_path / "a"), mode=mode)  # sdarts-rs: tuning draws noise from the search's stream
    run_search(cfg, quiet=True)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    opts = {"proj_intv": 2, "max_batches": 1}
    full = run_selection(tmp_path / "a", "pt", options=opts, quiet=True)

    # Interrupt inside the third decision's candidate evaluations, or in the third tune epoch (epoch 2, right
    # after its decision: the resume must not decide again).
    from dnas.search.trainer import Searcher
    owner, name, stop_at = (pt_mod.PtDecider, "_eval", 13) if where == "evaluation" else (Searcher, "train_epoch", 3)
    original = getattr(owner, name)
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(owner, name, flaky)
    with pytest.raises(KeyboardInterrupt):
        run_selection(tmp_path / "b", "pt", options=opts, quiet=True)
    monkeypatch.undo()
    assert (tmp_path / "b" / "selections" / "pt.ckpt.pt").exists()
    with pytest.raises(DnasError, match="different options.*proj_intv"):
        run_selection(tmp_path / "b", "pt", options={**opts, "proj_intv": 3}, resume=True, quiet=True)
    resumed = run_selection(tmp_path / "b", "pt", options=opts, resume=True, quiet=True)
    assert resumed["genotype"] == full["genotype"]
    assert resumed["decisions"] == full["decisions"]  # same edges, same accuracies and losses, bit for bit
    assert not (tmp_path / "b" / "selections" / "pt.ckpt.pt").exists()
    tune_a = (tmp_path / "a" / "selections" / "pt.tune.jsonl").read_text()
    assert (tmp_path / "b" / "selections" / "pt.tune.jsonl").read_text() == tune_a


def _generator_states(monkeypatch):
    """The searcher's generator state before every w step (where SPOS paths and SDARTS noise are drawn)."""
    from dnas.search.trainer import Searcher
    states, real = [], Searcher.w_step
    monkeypatch.setattr(Searcher, "w_step", lambda self, x, y: states.append(self.generator.get_state().clone())
                        or real(self, x, y))
    return states


@pytest.mark.parametrize("mode, method, tune_rng", [("spos", "pt", "continue"), ("sdarts-rs", "pt", "continue"),
                                                    ("sdarts-rs", "ostr", "continue"), ("spos", "pt", "restart")])
def test_tuning_continues_the_search_random_stream(tmp_path, monkeypatch, mode, method, tune_rng):
    """PT's and progressive OStr's tuning draw SPOS paths / SDARTS noise on from where the search's checkpoint
    left the generator (darts-pt read as one run); they used to restart it at the search's seed, so the first
    tuning steps repeated the search's first paths / noise (kept as tune_rng=restart)."""
    from dnas.rundir import load_checkpoint
    from dnas.search.modes import make_config
    cfg = make_config(mode, **{**TINY, "space": "nb201", "cells": 1, "subset": 128, "epochs": 1, "out": str(tmp_path)})
    states = _generator_states(monkeypatch)
    run_search(cfg, quiet=True)
    search, end = list(states), load_checkpoint(tmp_path)["searcher"]["generator"]
    states.clear()
    opts = {"proj_intv": 1, **({"max_batches": 1} if method == "pt" else {"progressive": True, "batches": 1})}
    if tune_rng == "restart":
        opts["tune_rng"] = "restart"
    out = run_selection(tmp_path, method, options=opts, quiet=True)
    assert len(states) == out["cost"]["tune_w_steps"] > len(search)
    if tune_rng == "continue":  # the default
        assert torch.equal(states[0], end)
        assert not any(torch.equal(t, s) for t in states for s in search)  # nothing of the search is replayed
    else:
        assert torch.equal(states[0], search[0])  # and so the draws repeat (shifted where a decided edge draws none)
    assert out["options"]["tune_rng"] == tune_rng


def test_in_memory_tuning_does_not_replay_the_search_stream(monkeypatch):
    """Without a run directory there is no saved generator to continue: tuning gets a stream of its own."""
    run = trained(tiny_config(mode="sdarts-rs"))
    start = run.searcher(quiet=True).generator.get_state()  # where the search's stream started
    states = _generator_states(monkeypatch)
    select("pt", run, proj_intv=1, max_batches=1)
    assert states and not torch.equal(states[0], start)
    states.clear()
    select("pt", trained(tiny_config(mode="sdarts-rs")), proj_intv=1, max_batches=1, tune_rng="restart")
    assert torch.equal(states[0], start)


def test_pt_tuning_keeps_the_search_recipe(monkeypatch):
    """Fresh w-optimiser at lr/10; an SDARTS-RS supernet is tuned with its perturbation at ε = 0.3."""
    run = trained(tiny_config(mode="sdarts-rs"))
    seen = []
    original = SearchRun.searcher

    def spy(self, config=None, quiet=False):
        seen.append(config)
        return original(self, config, quiet)

    monkeypatch.setattr(SearchRun, "searcher", spy)
    select("pt", run, proj_intv=1, max_batches=1)
    (cfg,) = seen
    assert cfg.mode == "sdarts-rs" and cfg.options["sdarts_epsilon"] == 0.3
    assert cfg.w_lr == pytest.approx(0.0025) and cfg.w_momentum == 0.9 and cfg.w_wd == 3e-4


@pytest.mark.parametrize("mode", ["fixed", "darts1"])
def test_pt_alpha_steps_follow_the_search_mode(mode):
    run = trained(tiny_config(mode=mode))
    before = run.model.arch.alphas["cell"].detach().clone()
    sel = select("pt", run, proj_intv=1, max_batches=1)
    changed = not torch.equal(before, run.model.arch.alphas["cell"])
    assert changed == (mode == "darts1")
    assert sel.cost["tune_arch_steps"] == (0 if mode == "fixed" else sel.cost["tune_w_steps"])


def test_options_that_would_be_ignored_are_refused():
    run = build_run(tiny_config())
    with pytest.raises(DnasError, match=r"option\(s\) proj_intv, seed only apply with progressive=true"):
        select("ostr", run, proj_intv=3, seed=7)
    with pytest.raises(DnasError, match="include_none only applies to NB201"):
        select("ostr", build_run(tiny_config(space="darts")), include_none=True)
    for key in ("rounds", "channels", "cells"):
        with pytest.raises(DnasError, match=f"option {key} must be a positive integer"):
            select("zeros", None, space="nb201", **{key: 0})


def test_pt_needs_a_run_and_checks_options():
    with pytest.raises(DnasError):
        select("pt", None)
    run = build_run(tiny_config())
    with pytest.raises(DnasError, match="unknown option"):
        select("pt", run, proj_interval=3)
    with pytest.raises(DnasError, match="criterion"):
        select("pt", run, criterion="magic")


# -- ostr ------------------------------------------------------------------------------------------
def test_ostr_is_the_first_order_loss_increase():
    """S(e,o) = d/dε L(w_eo·(1-ε)) at 0: the loss change when o's weight shrinks in every cell sharing α."""
    run = trained(tiny_config(space="nb201", epochs=1, cells=2))
    model, loader = reference_model(run), scoring_loader(run)
    s = operation_strength(model, loader, max_batches=1)[0]["cell"]
    e, o = divmod(int(s.abs().argmax()), s.shape[1])
    eps = 1e-2

    def loss(scale: float) -> float:
        w = current_weights(model.arch)
        w["cell"][e, o] *= scale
        r = evaluate_weights(model, loader, w, bn_train=False, max_batches=1)
        return r.loss

    fd = (loss(1 - eps) - loss(1 + eps)) / (2 * eps)
    assert fd == pytest.approx(float(s[e, o]), rel=0.05)
    none = get_space("nb201").cells["cell"].op_index(0, "none")
    assert all(float(s[r, none]) == 0.0 for r in range(6))


def test_ostr_weighted_option_drops_the_mixing_weight():
    """weighted=false: S(e,o) = -∂L/∂w_eo (no p_{e,o} factor), i.e. the weighted score divided by w_eo."""
    run = trained(tiny_config(space="nb201", epochs=1, cells=2))
    model, loader = reference_model(run), scoring_loader(run)
    s = operation_strength(model, loader, max_batches=2)[0]["cell"]
    bare = operation_strength(model, loader, max_batches=2, weighted=False)[0]["cell"]
    w = model.arch.weights("cell").detach().double().cpu()
    assert torch.allclose(bare * w, s, rtol=1e-6, atol=1e-12) and not torch.allclose(bare, s)
    sel = select("ostr", run, weighted=False, batches=2)
    assert sel.options["weighted"] is False
    assert torch.allclose(torch.tensor(sel.scores["cell"], dtype=torch.float64), bare, rtol=1e-6, atol=1e-12)
    assert select("ostr", run, batches=2).options["weighted"] is True


def test_ostr_darts_space_one_shot_and_progressive_nb201():
    run = trained(tiny_config("darts", subset=64))
    sel = select("ostr", run, batches=1)
    assert get_space("darts").validate(sel.genotype) == sel.genotype
    assert sel.cost["forward_passes"] == 1 and sel.cost["finetune_epochs"] == 0
    none = get_space("darts").cells["normal"].op_index(0, "none")
    assert all(row[none] == 0.0 for row in sel.scores["normal"])

    run = trained(tiny_config())
    sel = select("ostr", run, progressive=True, proj_intv=1, batches=1)
    assert [d["kind"] for d in sel.decisions] == ["op"] * 6
    assert sorted(d["edge"] for d in sel.decisions) == list(range(6))  # every edge decided once


@pytest.mark.parametrize("space", ["s1", "s3", "s4"])
def test_ostr_other_darts_spaces(space):
    run = build_run(tiny_config(space, subset=64))  # untrained is enough for a well-formed genotype
    sel = select("ostr", run, batches=1, eval_batch_size=8)
    assert get_space(space).validate(sel.genotype) == sel.genotype
    assert all(math.isfinite(v) for row in sel.scores["reduce"] for v in row)


def test_ostr_on_a_fast_supernet_scores_its_reference_copy():
    run = trained(tiny_config(impl="fast"))
    ref = build_run(tiny_config())
    ref.model.load_state_dict(run.model.state_dict())
    a, b = select("ostr", run, batches=1), select("ostr", ref, batches=1)
    assert a.scores == b.scores and str(a.genotype) == str(b.genotype)
    with pytest.raises(DnasError, match="no mixed op ran"):
        operation_strength(run.model, scoring_loader(run), max_batches=1)


# -- zeros -----------------------------------------------------------------------------------------
def test_zeros_default_nb201_is_deterministic_and_finite():
    a = select("zeros", None, space="nb201")
    b = select("zeros", None, space="nb201")
    assert str(a.genotype) == str(b.genotype) and json.dumps(a.to_json()["scores"]) == json.dumps(b.to_json()["scores"])
    assert a.decisions == b.decisions
    assert a.options["channels"] == 16 and a.options["cells"] == 5 and a.options["bn_mode_used"] == "train"
    assert len(a.decisions) == 4 and a.cost["forward_passes"] == 4
    for rnd in a.decisions:
        assert all(math.isfinite(v) for row in rnd["scores"]["cell"] for v in row)
    survivors = [[v for v in row if not math.isnan(v)] for row in a.scores["cell"]]
    assert all(len(r) == 1 for r in survivors)


@pytest.mark.parametrize("space", ["darts", "s1", "s2", "s3", "s4", "s5"])
def test_zeros_every_darts_space(space):
    sel = select("zeros", None, space=space, channels=4, cells=3, resolution=8)
    again = select("zeros", None, space=space, channels=4, cells=3, resolution=8)
    assert str(sel.genotype) == str(again.genotype)  # S4's noise op is seeded
    assert get_space(space).validate(sel.genotype) == sel.genotype


def test_zeros_never_builds_on_nan(monkeypatch):
    real = zeros_mod.connection_sensitivity

    def nan_in_train_mode(model, *a, bn_train, **k):
        s = real(model, *a, bn_train=bn_train, **k)
        return {ct: v * float("nan") for ct, v in s.items()} if bn_train else s

    monkeypatch.setattr(zeros_mod, "connection_sensitivity", nan_in_train_mode)
    sel = select("zeros", None, space="nb201", channels=4, cells=1, resolution=8)
    assert sel.options["bn_mode_used"] == "eval"
    with pytest.raises(DnasError, match="not finite"):
        select("zeros", None, space="nb201", channels=4, cells=1, resolution=8, bn_mode="train")


def test_zeros_with_a_run_uses_its_shapes_not_its_weights():
    run = trained(tiny_config())
    sel = select("zeros", run, rounds=1)
    assert sel.options["channels"] == 4 and sel.options["resolution"] == 8 and sel.cost["forward_passes"] == 1
    with pytest.raises(DnasError, match="only without a run"):
        select("zeros", run, space="darts")


def test_zeros_with_a_node_bn_run_scores_that_network(monkeypatch):
    built = []
    real = zeros_mod.build_supernet

    def spy(*args, **kw):
        model = real(*args, **kw)
        built.append(sum(1 for n, _ in model.named_modules() if "node_bns" in n))
        return model

    monkeypatch.setattr(zeros_mod, "build_supernet", spy)
    run = trained(tiny_config("s5", subset=64, node_bn=True))
    sel = select("zeros", run, rounds=1)
    assert sel.options["node_bn"] is True and built and built[-1] > 0
    assert select("zeros", None, space="s5", channels=4, cells=3, resolution=8, rounds=1).options["node_bn"] is False
    assert built[-1] == 0


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_select_without_run(tmp_path, capsys):
    out = tmp_path / "z.json"
    assert cli_main(["select", "--method", "zeros", "--space", "nb201", "--option", "channels=4",
                     "--option", "cells=1", "--option", "resolution=8", "--out", str(out), "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["method"] == "zeros" and json.loads(out.read_text())["genotype"] == line["genotype"]
    assert cli_main(["select", "--method", "pt", "--space", "nb201"]) == 2
    assert "needs a search run" in capsys.readouterr().err
    assert cli_main(["select", "--method", "zeros", "--space", "nb201", "--option", "rounds"]) == 2
    capsys.readouterr()
    # An existing --out file is kept unless --force; a directory is never a valid --out.
    zeros_tiny = ["select", "--method", "zeros", "--space", "nb201", "--option", "channels=4", "--option", "cells=1",
                  "--option", "resolution=8", "--quiet", "--out"]
    out.write_text("thesis")
    assert cli_main(zeros_tiny + [str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "thesis"
    assert cli_main(zeros_tiny + [str(tmp_path)]) == 2
    capsys.readouterr()
    assert cli_main(zeros_tiny + [str(tmp_path), "--force"]) == 2  # refused up front, not after the selection
    assert f"{tmp_path} is a directory" in capsys.readouterr().err
    assert cli_main(zeros_tiny + [str(out), "--force"]) == 0
    assert json.loads(out.read_text())["method"] == "zeros"


def test_cli_search_then_select(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(["search", "--dataset", "synthetic", "--resolution", "8", "--subset", "128", "--channels", "4",
                     "--cells", "1", "--epochs", "1", "--batch-size", "32", "--select", "ostr,zeros",
                     "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert cli_main(["select", str(run), "--method", "pt", "--option", "proj_intv=1", "--option", "max_batches=1",
                     "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["method"] == "pt" and line["cost"]["finetune_epochs"] == 6
    result = json.loads((run / "result.json").read_text())
    assert set(result["selections"]) == {"magnitude", "ostr", "zeros", "pt"}
    saved = json.loads((run / "selections" / "pt.json").read_text())
    assert saved["genotype"] == line["genotype"] and len(saved["decisions"]) == 6


@pytest.mark.parametrize("seed", ["abc", 1.5, True, 2**64, -2**63 - 1])
def test_seed_options_must_be_whole_numbers(seed):
    from types import SimpleNamespace
    from dnas.select.progressive import SCHEDULE_DEFAULTS, Schedule
    from dnas.select.run import select_without_run
    with pytest.raises(DnasError, match="seed must be a whole number"):
        select_without_run("zeros", options={"space": "nb201", "channels": 2, "cells": 1, "resolution": 8,
                                             "seed": seed})
    run = SimpleNamespace(config=SimpleNamespace(w_lr=0.025, seed=0))
    with pytest.raises(DnasError, match="seed must be a whole number"):
        Schedule.from_options("pt", {**SCHEDULE_DEFAULTS, "seed": seed}, run)
    assert Schedule.from_options("pt", {**SCHEDULE_DEFAULTS, "seed": 7}, run).seed == 7


def test_resumed_selectors_skip_the_finished_ones(tmp_path, monkeypatch):
    """`dnas search --select pt,zeros --resume` after a kill in zeros must not redo PT (hours at paper scale),
    and puts a finished selection back in result.json if the kill came before result.json took it."""
    from dnas.select.run import METHODS, Method, run_selections
    run = tmp_path / "run"
    run_search(tiny_config(out=str(run)), quiet=True)
    real = {name: get_method(name) for name in ("pt", "zeros")}
    calls = {"pt": 0, "zeros": 0}
    failing = {"zeros"}

    class Killed(Exception):
        pass

    def counted(name):
        def fn(r, ctx):
            calls[name] += 1
            if name in failing:
                raise Killed
            return real[name].fn(r, ctx)
        return Method(name, fn, real[name].needs_run)

    for name in real:
        monkeypatch.setitem(METHODS, name, counted(name))
    pt_opts = {"pt": {"proj_intv": 1, "max_batches": 1}}
    with pytest.raises(Killed):
        run_selections(run, ["pt", "zeros"], quiet=True, options=pt_opts)
    result = json.loads((run / "result.json").read_text())
    result["selections"].pop("pt")  # as if killed between selections/pt.json and result.json
    (run / "result.json").write_text(json.dumps(result))
    failing.clear()
    done = run_selections(run, ["pt", "zeros"], resume=True, quiet=True, options=pt_opts)
    assert calls == {"pt": 1, "zeros": 2} and {"pt", "zeros"} <= set(done["selections"])
    assert done["selections"]["pt"]["genotype"] == json.loads((run / "selections" / "pt.json").read_text())["genotype"]
    # asked with other options than the saved selection's: it runs again
    run_selections(run, ["pt"], resume=True, quiet=True, options={"pt": {"proj_intv": 2, "max_batches": 1}})
    assert calls["pt"] == 2
    # a checkpoint beside a finished pt.json (a later `select pt --force`, interrupted): resumed, not skipped
    (run / "selections" / "pt.ckpt.pt").write_bytes(b"")
    failing.add("pt")
    with pytest.raises(Killed):
        run_selections(run, ["pt"], resume=True, quiet=True, options={"pt": {"proj_intv": 2, "max_batches": 1}})
    assert calls["pt"] == 3


def test_a_full_disk_at_the_end_of_a_selection_keeps_its_checkpoint(tmp_path, monkeypatch, capsys):
    """result.json cannot be written (ENOSPC): one line, exit 2, and the finished selection's checkpoint stays,
    so `--resume` records it without redoing a single decision or tune epoch."""
    import errno
    import os

    import dnas.rundir as rd
    from dnas.search.trainer import Searcher
    run = tmp_path / "r"
    run_search(tiny_config(out=str(run)), quiet=True)
    real = rd.atomic_write_json

    def full_disk(path, obj):
        if str(path).endswith("result.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, obj)

    args = ["select", str(run), "--method", "pt", "--option", "proj_intv=2", "--option", "max_batches=1", "--quiet"]
    monkeypatch.setattr(rd, "atomic_write_json", full_disk)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert (run / "selections" / "pt.ckpt.pt").exists() and "pt" not in rd.read_result(run)["selections"]
    monkeypatch.undo()

    def redo(*a, **k):
        raise AssertionError("a finished selection was redone")

    monkeypatch.setattr(Searcher, "train_epoch", redo)
    assert cli_main(args + ["--resume"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert rd.read_result(run)["selections"]["pt"]["genotype"] == line["genotype"]
    assert not (run / "selections" / "pt.ckpt.pt").exists()


# -- hand-derived checks from a mutation review of the selectors ---------------------------------------
def _bare_pt(criterion: str = "acc") -> "pt_mod.PtDecider":
    d = pt_mod.PtDecider.__new__(pt_mod.PtDecider)
    d.criterion = criterion
    return d


def test_pt_loss_criterion_keeps_the_op_whose_removal_raises_the_loss_most():
    d = _bare_pt("loss")
    d.run = build_run(tiny_config())
    d.arch = d.run.model.arch
    loss = {0: 1.0, 1: 3.0, 2: 2.0, 3: 3.0, 4: 0.5}  # accuracies say the opposite: they must be ignored
    d._eval = lambda ct, zero: pt_mod.EvalResult(int(100 * loss[zero[1]]), 64 * loss[zero[1]], 64, 1)
    assert d.op("cell", 0)[0] == 1  # highest loss, tie 1/3 to the lower index


@pytest.mark.parametrize("criterion", ["acc", "loss"])
def test_pt_topology_drops_the_least_important_input_ties_to_the_later_edge(criterion):
    """darts-pt: drop the edge whose removal leaves the highest accuracy (lowest loss), ties to the later
    edge, until two inputs remain. Node 5 (edges 9-13) on hand-set results."""
    acc = {9: 30, 10: 50, 11: 20, 12: 50, 13: 40}
    d = _bare_pt(criterion)
    d.arch = build_run(tiny_config("s5", subset=64)).model.arch
    d._eval = lambda ct, zero: pt_mod.EvalResult(acc[zero[0]], 100.0 - acc[zero[0]], 64, 1)
    removed, info = d.topology("normal", 5, [9, 10, 11, 12, 13])
    assert removed == [12, 10, 13] and [r["dropped"] for r in info["rounds"]] == [12, 10, 13]


def test_pt_topology_never_keeps_an_input_with_no_live_op():
    """crb pruning removed every op of 0->3 before PT fixed that edge: removing it changes nothing (the
    baseline accuracy), and 1->3's removal even helps, yet 1->3 is a live input and 0->3 is not. The node
    keeps its two live inputs and the genotype names no removed op."""
    run = build_run(tiny_config("s5", subset=64))
    arch = run.model.arch
    for ct in arch.cell_types:
        for e in range(14):
            arch.fix_edge(ct, e, 4)  # sep_conv_5x5 everywhere
    for k in range(7):
        arch.remove_op("normal", 2, k)
    d = pt_mod.PtDecider(run, {**pt_mod.DEFAULTS, "max_batches": 1})
    acc = {2: 50, 3: 55, 4: 30}
    d._eval = lambda ct, zero: pt_mod.EvalResult(acc[zero[0]], 1.0, 64, 1)
    removed, info = d.topology("normal", 3, [2, 3, 4])
    assert removed == [2] and info["rounds"][0]["dropped"] == 2
    for e in removed:
        arch.remove_edge("normal", e)
    g = run.space.discretize({ct: arch.base_weights(ct).detach() for ct in arch.cell_types})
    assert sorted(g.normal[2:4], key=lambda p: p[1]) == [("sep_conv_5x5", 1), ("sep_conv_5x5", 2)]
    # more dead inputs than the node can lose: the later one goes, the earlier stays (the genotype needs two)
    arch.mask("normal")[2] = 0.0
    arch.mask("normal")[4] = 0.0
    removed, _ = d.topology("normal", 3, [2, 3, 4])
    assert removed == [4]


def test_pt_candidate_evaluation_zeroes_exactly_one_entry(monkeypatch):
    """No renormalisation: the evaluated weights are the current ones with only (edge, op), or the whole
    edge row, set to 0; BN in train mode by default, eval mode with bn_mode=eval."""
    run = build_run(tiny_config())
    seen = []
    monkeypatch.setattr(pt_mod, "evaluate_weights", lambda model, loader, w, *, bn_train, max_batches:
                        seen.append(({k: v.clone() for k, v in w.items()}, bn_train)) or pt_mod.EvalResult(1, 1.0, 2, 1))
    base = current_weights(run.model.arch)["cell"]
    pt_mod.PtDecider(run, dict(pt_mod.DEFAULTS))._eval("cell", (2, 3))
    pt_mod.PtDecider(run, {**pt_mod.DEFAULTS, "bn_mode": "eval"})._eval("cell", (4, None))
    (w1, bn1), (w2, bn2) = seen
    exp1 = base.clone()
    exp1[2, 3] = 0.0
    exp2 = base.clone()
    exp2[4] = 0.0
    assert torch.equal(w1["cell"], exp1) and torch.equal(w2["cell"], exp2) and float(base[2, 3]) > 0
    assert (bn1, bn2) == (True, False)


def test_pt_score_table_is_one_minus_acc_or_the_loss():
    from types import SimpleNamespace
    space = get_space("nb201")
    k = space.cells["cell"].op_index(2, "skip_connect")
    d = {"kind": "op", "cell_type": "cell", "edge": 2, "candidates": {"skip_connect": {"acc": 0.25, "loss": 1.5}}}
    run = SimpleNamespace(space=space)
    for criterion, value in (("acc", 0.75), ("loss", 1.5)):
        table = pt_mod.score_table(run, [d, {"kind": "topology"}], criterion)["cell"]
        assert table[2][k] == value
        assert sum(math.isnan(v) for row in table for v in row) == 6 * 5 - 1


def test_schedule_defaults_are_darts_pt():
    from types import SimpleNamespace
    from dnas.select.progressive import SCHEDULE_DEFAULTS, Schedule
    s = Schedule.from_options("pt", dict(SCHEDULE_DEFAULTS), SimpleNamespace(config=SimpleNamespace(w_lr=0.025, seed=3)))
    assert (s.proj_intv, s.lr_schedule, s.reset_arch_optimizer, s.sdarts_epsilon, s.seed) == (5, "constant", False, 0.3, 3)
    assert s.lr == pytest.approx(0.0025)
    assert pt_mod.DEFAULTS["criterion"] == "acc" and pt_mod.DEFAULTS["bn_mode"] == "train"


def test_pt_edge_order_is_the_seeded_permutation():
    from dnas.select.progressive import ORDER_SEED
    run = trained(tiny_config())
    sel = select("pt", run, proj_intv=1, max_batches=1, seed=11)
    expected = torch.randperm(6, generator=torch.Generator().manual_seed(11 + ORDER_SEED)).tolist()
    assert [d["edge"] for d in sel.decisions] == expected


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_pt_tune_epochs_continue_the_search_data_epochs_at_the_tuning_lr(monkeypatch, schedule):
    from dnas.search import cosine_lr
    from dnas.search.trainer import Searcher
    run = trained(tiny_config(epochs=2))
    calls, real = [], Searcher.train_epoch
    monkeypatch.setattr(Searcher, "train_epoch", lambda self, epoch, lr=None, desc="": calls.append((epoch, lr))
                        or real(self, epoch, lr=lr, desc=desc))
    select("pt", run, proj_intv=1, max_batches=1, lr_schedule=schedule)
    lrs = [0.0025] * 6 if schedule == "constant" else [cosine_lr(i, 6, 0.0025, run.config.w_lr_min) for i in range(6)]
    assert [c[0] for c in calls] == [2, 3, 4, 5, 6, 7]
    assert [c[1] for c in calls] == pytest.approx(lrs)


@pytest.mark.parametrize("reset", [False, True])
def test_pt_continues_the_search_arch_optimizer(tmp_path, monkeypatch, reset):
    """darts-pt keeps stepping the search's Adam: its step count goes on from the checkpoint's."""
    from dnas.rundir import load_checkpoint
    run_search(tiny_config(out=str(tmp_path)), quiet=True)
    saved = load_checkpoint(tmp_path)["searcher"]["a_opt"]["state"]
    searchers, original = [], SearchRun.searcher
    monkeypatch.setattr(SearchRun, "searcher", lambda self, config=None, quiet=False:
                        searchers.append(original(self, config, quiet)) or searchers[-1])
    out = run_selection(tmp_path, "pt", options={"proj_intv": 1, "max_batches": 1, "reset_arch_optimizer": reset},
                        quiet=True)
    (s,) = searchers
    tuned = out["cost"]["tune_arch_steps"]
    start = 0 if reset else int(saved[0]["step"])
    assert tuned > 0 and (reset or start > 0)
    assert [int(v["step"]) for v in s.a_opt.state.values()] == [start + tuned] * len(s.a_opt.state)


def test_ostr_abs_takes_the_magnitude_per_batch():
    run = trained(tiny_config())
    model, loader = reference_model(run), scoring_loader(run)
    signed = operation_strength(model, loader, max_batches=1)[0]["cell"]
    absolute = operation_strength(model, loader, max_batches=1, absolute=True)[0]["cell"]
    assert bool((signed < 0).any()) and torch.equal(absolute, signed.abs())


def test_ostr_defaults_to_eval_mode_bn():
    run = trained(tiny_config())
    s_eval = operation_strength(reference_model(run), scoring_loader(run), max_batches=1)[0]["cell"]
    sel = select("ostr", run, batches=1)
    assert torch.equal(torch.tensor(sel.scores["cell"], dtype=torch.float64), s_eval)


def test_ostr_decider_on_hand_set_scores(monkeypatch):
    """Op: the best non-none op, ties to the lower index. Topology: keep the two inputs whose chosen op
    (the fixed one once decided, not the edge's best) scores highest, ties to the lower edge."""
    nb = build_run(tiny_config())
    d = ostr_mod.OstrDecider(nb.model, None, dict(ostr_mod.DEFAULTS))
    s = torch.zeros(6, 5, dtype=torch.float64)
    s[0] = torch.tensor([9.0, 2.0, 3.0, 3.0, 1.0])  # none would win; conv1x1 / conv3x3 tie
    d._scores = lambda ct: s
    assert d.op("cell", 0)[0] == 2
    s[1] = torch.tensor([0.0, 1.0, 2.0, 5.0, -1.0])
    nb.model.arch.remove_op("cell", 1, 3)  # a removed op cannot be kept, however high its score
    assert d.op("cell", 1)[0] == 2
    dr = build_run(tiny_config("s2", subset=64))
    d = ostr_mod.OstrDecider(dr.model, None, dict(ostr_mod.DEFAULTS))
    s = torch.zeros(14, 2, dtype=torch.float64)
    s[9], s[10], s[11], s[12], s[13] = (torch.tensor(v) for v in ([0.1, 9.0], [3.0, 1.0], [2.0, 0.0], [0.0, 2.0], [0.3, 0.2]))
    dr.model.arch.fix_edge("normal", 9, 0)  # its chosen op scores 0.1, though the edge's best is 9.0
    d._scores = lambda ct: s
    removed, _ = d.topology("normal", 5, [9, 10, 11, 12, 13])
    assert removed == [9, 12, 13]


def test_ostr_progressive_topology_drops_a_removed_input_first():
    """An input whose ops were all removed (crb pruning) scores exactly 0; the topology step must not keep
    it over live inputs whose chosen op has S < 0."""
    dr = build_run(tiny_config("s2", subset=64))
    arch = dr.model.arch
    for e in range(9, 14):
        arch.fix_edge("normal", e, 1)
    arch.remove_op("normal", 9, 0)
    arch.remove_op("normal", 9, 1)  # input 0 of node 5: nothing left
    d = ostr_mod.OstrDecider(dr.model, None, dict(ostr_mod.DEFAULTS))
    s = torch.zeros(14, 2, dtype=torch.float64)
    s[10:14, 1] = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    d._scores = lambda ct: s
    removed, info = d.topology("normal", 5, [9, 10, 11, 12, 13])
    assert removed == [9, 12, 13]
    assert info["candidates"]["9"]["ostr"] == 0.0  # the record keeps the score itself


def test_ostr_one_shot_keeps_a_fixed_edge(monkeypatch):
    run = build_run(tiny_config())
    skip = run.space.cells["cell"].op_index(0, "skip_connect")
    run.model.arch.fix_edge("cell", 0, skip)
    crafted = torch.tensor([[0.0, 1.0, 2.0, 5.0, 3.0]] * 6, dtype=torch.float64)
    monkeypatch.setattr(ostr_mod, "operation_strength", lambda *a, **k: ({"cell": crafted.clone()}, 1))
    ops = select("ostr", run).genotype.ops
    assert ops[0] == "skip_connect" and set(ops[1:]) == {"nor_conv_3x3"}


def test_ostr_one_shot_darts_never_prefers_a_removed_edge(monkeypatch):
    """crb pruning can remove every op of an edge; those ops are never computed and score exactly 0.
    A node with two live inputs must take them, even when their best S is negative."""
    run = build_run(tiny_config("s5", subset=64))
    for k in range(run.space.cells["normal"].num_ops):
        run.model.arch.remove_op("normal", 2, k)  # edge 0->3 is gone
    crafted = {ct: torch.full((14, 7), -3.0, dtype=torch.float64) for ct in ("normal", "reduce")}
    crafted["normal"][2] = 0.0
    crafted["normal"][3, 1] = -1.0  # 1->3: avg_pool_3x3 (s5 ops: max, avg, skip, ...)
    crafted["normal"][4, 2] = -2.0  # 2->3: skip_connect
    monkeypatch.setattr(ostr_mod, "operation_strength",
                        lambda *a, **k: ({ct: t.clone() for ct, t in crafted.items()}, 1))
    g = select("ostr", run).genotype
    assert sorted(g.normal[2:4], key=lambda p: p[1]) == [("avg_pool_3x3", 1), ("skip_connect", 2)]
    # a node left with a single live input still gets two (the genotype needs them): the removed edge
    for k in range(7):
        run.model.arch.remove_op("normal", 3, k)
    assert {j for _, j in select("ostr", run).genotype.normal[2:4]} == {0, 2}


def test_zeros_init_takes_absolute_values_and_keeps_alpha_sign_per_family():
    from dnas.supernet import ArchState, build_supernet
    space = get_space("nb201")
    kw = dict(channels=4, cells=1, num_classes=10, in_channels=3, dtype=torch.float64, seed=0)
    signed = zeros_mod.init_supernet(space, abs_alpha=False, **kw)
    absolute = zeros_mod.init_supernet(space, abs_alpha=True, **kw)
    a = signed.arch.alphas["cell"]
    assert bool((a < 0).any()) and torch.equal(absolute.arch.alphas["cell"], a.abs())
    raw = build_supernet(space, channels=4, cells=1, num_classes=10, in_channels=3, activation="linear",
                         arch=ArchState(space, "linear"), impl="reference").state_dict()
    assert any(bool((t < 0).any()) for k, t in raw.items() if t.dim() == 1)  # e.g. the classifier bias
    assert all(bool((t >= 0).all()) for t in absolute.state_dict().values() if t.is_floating_point())
    assert select("zeros", None, space="s2", channels=2, cells=3, resolution=8, rounds=1).options["abs_alpha"] is False
    assert select("zeros", None, space="nb201", channels=2, cells=1, resolution=8, rounds=1).options["abs_alpha"] is True


def test_zeros_final_ranks_removed_ops_below_any_survivor():
    space = get_space("nb201")
    model = zeros_mod.init_supernet(space, channels=2, cells=1, num_classes=10, in_channels=3,
                                    dtype=torch.float64, seed=0, abs_alpha=True)
    model.arch.remove_op("cell", 0, 0)
    model.arch.remove_op("cell", 0, 1)
    scores = {"cell": torch.zeros(6, 5, dtype=torch.float64)}
    scores["cell"][0, 1] = 7.0  # a removed op's stale score
    rank, shown = zeros_mod._final(model, scores)
    assert rank["cell"][0].tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0]
    assert math.isnan(shown["cell"][0, 1]) and space.discretize(rank).ops[0] == space.cells["cell"].ops[0][2]


def test_scoring_loader_batch_size_option():
    run = build_run(tiny_config())
    sizes = [len(y) for _, y in scoring_loader(run, 16).epoch(0)]
    assert sizes and set(sizes) == {16}
    assert {len(y) for _, y in scoring_loader(run).epoch(0)} == {32}


def test_scoring_loader_is_the_unaugmented_alpha_half_in_a_fixed_order():
    run = build_run(tiny_config())
    ref = torch.cat([x for x, _ in run.valid_eval.epoch(0)])
    for bs in (16, None, run.valid_eval.batch_size):
        for epoch in (0, 1):
            assert torch.equal(torch.cat([x for x, _ in scoring_loader(run, bs).epoch(epoch)]), ref)


def test_zeros_scores_one_all_ones_image():
    """S = |α ⊙ ∂R/∂α| with R the sum of the logits of a single all-ones image (eval-mode BN: no batch
    statistics, so the input's scale is not normalised away)."""
    space = get_space("nb201")
    model = zeros_mod.init_supernet(space, channels=2, cells=1, num_classes=10, in_channels=3,
                                    dtype=torch.float64, seed=0, abs_alpha=True)
    s = zeros_mod.connection_sensitivity(model, 8, 3, bn_train=False, seed=0)["cell"]
    model.eval()
    a = model.arch.alphas["cell"]
    (g,) = torch.autograd.grad(model(torch.ones(1, 3, 8, 8, dtype=torch.float64)).sum(), [a])
    assert torch.allclose(s, (a * g).abs().detach(), rtol=1e-12, atol=0) and float(s.max()) > 0


@pytest.mark.parametrize("poison, value", [("alpha", math.nan), ("w", math.nan), ("w", math.inf)])
def test_selectors_refuse_a_supernet_with_nan(tmp_path, poison, value):
    # A run whose checkpoint holds NaN (a search that diverged) used to give every selector a genotype:
    # magnitude and pt "|none~0|+|none~0|none~1|+...|" (argmax of NaN, all-tied accuracies), ostr all skips.
    out = tmp_path / "run"
    run_search(tiny_config(out=str(out), subset=64), quiet=True)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    model = state["searcher"]["model"]
    key = next(k for k in model if ("alpha" in k) == (poison == "alpha") and model[k].is_floating_point()
               and (poison == "alpha" or k.endswith("weight")))
    model[key] = torch.full_like(model[key], value)  # inf too: the message says NaN/inf
    torch.save(state, out / "checkpoint.pt")
    for method in ("magnitude", "ostr"):
        with pytest.raises(DnasError, match=rf"checkpoint.pt: the supernet has NaN/inf values \({key}"):
            run_selection(out, method, quiet=True, force=True)  # force: the search selected by magnitude
    assert not (out / "selections" / "ostr.json").exists()
    assert json.loads((out / "result.json").read_text())["selections"].keys() == {"magnitude"}


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_discretize_refuses_nan_scores_but_takes_minus_inf(space):
    sp = get_space(space)
    scores = {ct: torch.rand(c.num_edges, c.num_ops) for ct, c in sp.cells.items()}
    ct = sp.cell_types[0]
    ok = {k: v.clone() for k, v in scores.items()}
    ok[ct][1, 1] = -math.inf
    assert sp.discretize(ok) == sp.discretize({k: torch.where(torch.isinf(v), -1.0, v) for k, v in ok.items()})
    scores[ct][1, 2] = math.nan
    with pytest.raises(DnasError, match=rf"cannot discretise NaN scores \({ct} edge 1:"):
        sp.discretize(scores)


def test_progressive_tuning_keeps_the_search_ramp_at_its_end(monkeypatch):
    # DARTS-PRIME's proximity weight is (t/T)·ρ/2 with T the search's epochs; the tuning config is longer only
    # to continue the data epochs, so the weight must stay at ρ/2 while tuning instead of dropping to E/(E+tune).
    from dnas.search import Searcher
    run = trained(tiny_config(mode="prime", epochs=2, options={"prime_dynamic": False, "schedfreq": 2}))
    seen = []
    orig = Searcher.arch_loss

    def spy(self, x, y):
        seen.append(self.progress)
        return orig(self, x, y)

    monkeypatch.setattr(Searcher, "arch_loss", spy)
    select("pt", run, proj_intv=1, max_batches=1)
    assert len(seen) > 0 and seen == [1.0] * len(seen)


def test_selection_flags_a_genotype_that_names_a_removed_op():
    # Node 2 of a DARTS cell (inputs: edges 0, 1) with every op of edge 0 removed (crb pruning): any parse must
    # still name two inputs, so the genotype names a dead op; the selection must say so, not stay silent.
    from dnas.select.base import Selection, removed_ops_named
    from dnas.select.magnitude import select_magnitude
    from dnas.supernet import ArchState
    space = get_space("darts")
    arch = ArchState(space)
    for k in range(space.cells["normal"].num_ops):
        arch.remove_op("normal", 0, k)
    sel = select_magnitude(arch)
    warn = removed_ops_named(arch, sel.genotype)
    assert warn == [{"kind": "removed_op_named", "cell_type": "normal", "edge": 0,
                     "op": next(op for op, j in sel.genotype.normal[:2] if j == 0)}]
    sel.warnings.extend(warn)
    assert Selection.from_json(space, sel.to_json()).warnings == warn


def test_selection_files_are_standard_json_and_nan_scores_read_back(tmp_path, capsys):
    """Scores that are NaN on purpose (zeros: ops pruned in an earlier round; PT: ops never scored) are written as
    null, which strict readers (jq, JavaScript) accept, not as bare NaN; dnas's readers make them NaN again, and a
    file written with bare NaN (older versions) still reads the same."""
    import numpy as np

    from dnas.analysis.ops import load_method_scores
    from dnas.select import Selection

    sel_dir = tmp_path / "selections"
    out = sel_dir / "zeros.json"
    assert cli_main(["select", "--method", "zeros", "--space", "nb201", "--option", "channels=4", "--option",
                     "cells=1", "--option", "resolution=8", "--out", str(out), "--quiet"]) == 0
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))  # noqa: E731
    strict(capsys.readouterr().out)
    entry = strict(out.read_text())
    table = entry["scores"]["cell"]
    assert any(v is None for row in table for v in row)  # the pruned ops
    space = get_space("nb201")
    nan = np.isnan(np.array(table, dtype=float))
    assert (np.isnan(np.array(Selection.from_json(space, entry).scores["cell"], dtype=float)) == nan).all()
    new = load_method_scores(tmp_path, space)
    assert "zeros_round0" in new  # NaN in the table: scored by elimination order, as before
    old = {**entry, "scores": {"cell": [[math.nan if v is None else v for v in row] for row in table]}}
    out.write_text(json.dumps(old))  # bare NaN
    assert "NaN" in out.read_text()
    again = load_method_scores(tmp_path, space)
    for key in ("zeros", "zeros_round0"):
        np.testing.assert_array_equal(again[key]["scores"]["cell"], new[key]["scores"]["cell"])  # NaN == NaN here
    assert (np.isnan(np.array(Selection.from_json(space, old).scores["cell"], dtype=float)) == nan).all()


# -- saved selections: a hand-made checkpoint, a finished selection ---------------------------------------
PT_TINY = ["--method", "pt", "--option", "proj_intv=1", "--option", "max_batches=1", "--quiet"]


def _files(run):
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="module")
def interrupted_pt(tmp_path_factory):
    """A finished search with a pt selection killed in its second tune epoch (pt.ckpt.pt, pt.tune.jsonl)."""
    from dnas.search.trainer import Searcher
    run = tmp_path_factory.mktemp("interrupted") / "run"
    run_search(tiny_config(out=str(run)), quiet=True)
    real, calls = Searcher.train_epoch, []

    def dying(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    Searcher.train_epoch = dying
    try:
        assert cli_main(["select", str(run), *PT_TINY]) == 130
    finally:
        Searcher.train_epoch = real
    assert (run / "selections" / "pt.ckpt.pt").exists() and (run / "selections" / "pt.tune.jsonl").read_text()
    return run


def _other_model(state):
    return {**state, "searcher": {**state["searcher"], "model": {"x": torch.zeros(1)}}}


@pytest.mark.parametrize("edit, needle", [
    (lambda s: [1, 2], "not a pt selection checkpoint, got [1, 2]"),
    (lambda s: {k: v for k, v in s.items() if k != "rng"}, "rng is missing"),
    (lambda s: {**s, "rng": {}}, "rng is not the RNG states dnas saves"),
    (lambda s: {k: v for k, v in s.items() if k != "orders"}, "orders is missing"),
    (lambda s: {**s, "orders": {}}, "orders.cell is missing"),
    (lambda s: {**s, "next_epoch": "3"}, 'next_epoch must be an integer, got "3"'),
    (lambda s: {**s, "next_epoch": 99}, "next_epoch must be between 0 and 6, got 99"),
    (lambda s: {**s, "method": "ostr"}, "a checkpoint of method ostr, not pt"),
    (lambda s: {**s, "search": {**s["search"], "seed": 99}}, "another search run (its settings differ from "
                                                            "config.json's: seed)"),
    # other options, and a next epoch of 0: the tune log used to be cut to nothing before the refusal
    (lambda s: {**s, "fingerprint": {**s["fingerprint"], "proj_intv": 3}, "next_epoch": 0},
     "--resume with different options than the interrupted selection"),
    (_other_model, "does not fit the supernet of"),
    # saved before the tune_rng option: it tuned with tune_rng=restart, which a default resume would not repeat
    (lambda s: {**s, "fingerprint": {k: v for k, v in s["fingerprint"].items() if k != "tune_rng"}},
     "tune_rng (it was started before the tune_rng option, so with tune_rng=restart: resume it with --option "
     "tune_rng=restart)"),
])
def test_a_selection_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys, interrupted_pt, edit, needle):
    """A checkpoint that torch reads but that lacks a key, has a wrong type, belongs to another method, run or
    supernet, or was saved with other options: one line naming it and --force, exit 2, nothing written."""
    run = tmp_path / "run"
    shutil.copytree(interrupted_pt, run)
    ckpt = run / "selections" / "pt.ckpt.pt"
    torch.save(edit(torch.load(ckpt, weights_only=False)), ckpt)
    before = _files(run)
    assert cli_main(["select", str(run), *PT_TINY, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(ckpt) in err and needle in err, err
    assert err.rstrip().endswith("use --force to start over")
    assert _files(run) == before
    if needle.startswith("not a pt"):  # as the message says (checked once: a whole selection)
        assert cli_main(["select", str(run), *PT_TINY, "--force"]) == 0
        assert not ckpt.exists() and (run / "selections" / "pt.json").exists()


def test_force_keeps_saved_selection_progress_until_the_new_selection_starts(tmp_path, capsys, interrupted_pt,
                                                                              monkeypatch):
    """`select --force` replaces an interrupted selection's checkpoint and tune log (or a finished one's) only at
    the new selection's first save: bad options, a search checkpoint it cannot continue, running out of memory
    in the first decision or Ctrl-C there leave every file as it was (the checkpoint was deleted and the tune log
    emptied before all but the option checks)."""
    from dnas.select import pt as pt_mod
    run = tmp_path / "run"
    shutil.copytree(interrupted_pt, run)

    def refused(args, code=2, needle=""):
        before = _files(run)
        assert cli_main(["select", str(run), *PT_TINY, *args, "--force"]) == code
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
        assert _files(run) == before

    refused(["--option", "criterion=nope"], needle="criterion='nope' must be one of")
    refused(["--option", "bogus=1"], needle="unknown option(s) bogus")
    refused(["--device", "cuda:99"], needle="--device cuda:99")
    search_ckpt = run / "checkpoint.pt"
    saved = search_ckpt.read_bytes()
    state = torch.load(search_ckpt, weights_only=False)
    del state["searcher"]["a_opt"]
    torch.save(state, search_ckpt)
    refused([], needle="searcher.a_opt is missing")
    search_ckpt.write_bytes(saved)
    for exc, code, needle in ((torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), 2,
                               "out of memory selecting with pt"), (KeyboardInterrupt(), 130, "interrupted")):
        with monkeypatch.context() as m:
            m.setattr(pt_mod.PtDecider, "op", lambda *a, e=exc, **k: (_ for _ in ()).throw(e))
            refused([], code, needle)
    assert cli_main(["select", str(run), *PT_TINY, "--force"]) == 0
    log = (run / "selections" / "pt.tune.jsonl").read_text()
    assert not (run / "selections" / "pt.ckpt.pt").exists()
    assert [json.loads(line)["epoch"] for line in log.splitlines()] == list(range(6))  # the new run's only
    with monkeypatch.context() as m:  # a finished selection: its tune log too stays until the first save
        m.setattr(pt_mod.PtDecider, "op", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
        refused([], 2, "out of memory")


def test_the_first_save_of_a_forced_selection_drops_the_old_tune_log(tmp_path, capsys, interrupted_pt, monkeypatch):
    """The old tune log goes with the checkpoint it belonged to: a new selection that saved its first decision
    and then failed in tuning leaves its own checkpoint and none of the old selection's log lines."""
    from dnas.search.trainer import Searcher
    run = tmp_path / "run"
    shutil.copytree(interrupted_pt, run)
    assert (run / "selections" / "pt.tune.jsonl").read_text()
    monkeypatch.setattr(Searcher, "train_epoch", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    assert cli_main(["select", str(run), *PT_TINY, "--force"]) == 2
    capsys.readouterr()
    state = torch.load(run / "selections" / "pt.ckpt.pt", weights_only=True)
    assert (state["next_epoch"], len(state["decisions"]), state["tune_log"]) == (0, 1, [])
    assert (run / "selections" / "pt.tune.jsonl").read_text() == ""


def test_a_selection_checkpoint_from_before_tune_rng_resumes_as_it_began(tmp_path, monkeypatch):
    """An interrupted selection saved before the tune_rng option (no tune_rng in its options; its tuning had
    restarted the search's stream) is refused by a default --resume with one line that says how to finish it,
    and finishes with --option tune_rng=restart bit for bit as that selection run straight through."""
    from dnas.search.trainer import Searcher
    run_search(tiny_config(mode="sdarts-rs", out=str(tmp_path / "a")), quiet=True)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    opts = {"proj_intv": 1, "max_batches": 1}
    full = run_selection(tmp_path / "a", "pt", options={**opts, "tune_rng": "restart"}, quiet=True)
    real, calls = Searcher.train_epoch, []
    monkeypatch.setattr(Searcher, "train_epoch", lambda self, *a, **k: calls.append(1) or (
        (_ for _ in ()).throw(KeyboardInterrupt) if len(calls) == 3 else real(self, *a, **k)))
    with pytest.raises(KeyboardInterrupt):
        run_selection(tmp_path / "b", "pt", options={**opts, "tune_rng": "restart"}, quiet=True)
    monkeypatch.undo()
    ckpt = tmp_path / "b" / "selections" / "pt.ckpt.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["fingerprint"]["tune_rng"]  # as an older dnas saved it
    torch.save(state, ckpt)
    with pytest.raises(DnasError, match=r"tune_rng \(it was started before .* resume it with --option tune_rng=restart"
                                        r"\); use --force to start over$"):
        run_selection(tmp_path / "b", "pt", options=opts, resume=True, quiet=True)
    resumed = run_selection(tmp_path / "b", "pt", options={**opts, "tune_rng": "restart"}, resume=True, quiet=True)
    assert resumed["decisions"] == full["decisions"] and resumed["genotype"] == full["genotype"]
    tune = "selections/pt.tune.jsonl"
    assert (tmp_path / "b" / tune).read_text() == (tmp_path / "a" / tune).read_text()


def test_a_search_checkpoint_without_its_arch_optimizer_is_one_line(tmp_path, capsys):
    """pt continues the search's α optimiser: a search checkpoint without it named, not KeyError: 'a_opt'."""
    run = tmp_path / "run"
    run_search(tiny_config(out=str(run)), quiet=True)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    del state["searcher"]["a_opt"]
    torch.save(state, run / "checkpoint.pt")
    before = _files(run)
    assert cli_main(["select", str(run), *PT_TINY]) == 2
    assert capsys.readouterr().err == f"dnas: error: {run / 'checkpoint.pt'}: searcher.a_opt is missing\n"
    assert _files(run) == before


def test_a_finished_selection_is_kept_without_force(tmp_path, capsys):
    """`dnas select RUN --method M` where M has finished (magnitude: by the search) is refused like an existing
    run directory: nothing rerun or rewritten; --resume leaves it, --force selects again. An interrupted
    progressive ostr is not discarded by a one-shot ostr either."""
    run = tmp_path / "run"
    search = ["search", "--dataset", "synthetic", "--resolution", "8", "--subset", "64", "--channels", "4",
              "--cells", "1", "--epochs", "1", "--batch-size", "32", "--quiet", "--out", str(run)]
    assert cli_main([*search, "--select", "magnitude,ostr"]) == 0  # the search's own magnitude is not redone
    capsys.readouterr()
    before = _files(run)
    for method in ("magnitude", "ostr"):
        assert cli_main(["select", str(run), "--method", method, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err == (f"dnas: error: {run / 'selections' / f'{method}.json'} already exists (selection {method} "
                       "has finished); use --force to select again (--resume with its options leaves it as it is)\n")
        assert _files(run) == before
    assert cli_main(["select", str(run), "--method", "magnitude", "--resume"]) == 0
    assert _files(run) == before
    assert cli_main(["select", str(run), "--method", "ostr", "--option", "batches=1", "--force", "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((run / "selections" / "ostr.json").read_text())["requested_options"] == {"batches": 1}
    ckpt = run / "selections" / "ostr.ckpt.pt"
    ckpt.write_bytes(b"an interrupted progressive ostr")
    assert cli_main(["select", str(run), "--method", "ostr", "--quiet"]) == 2
    assert "--resume to continue it or --force to start over" in capsys.readouterr().err and ckpt.exists()
    before = _files(run)  # nor by a one-shot ostr --resume, which used to finish and then delete it
    assert cli_main(["select", str(run), "--method", "ostr", "--resume", "--quiet"]) == 2
    assert "continue it with --resume --option progressive=true" in capsys.readouterr().err
    assert _files(run) == before


def test_selection_from_json_turns_null_scores_back_into_nan_floats():
    """Not only numpy (whose float arrays read None as NaN): the scores are Python floats, so a tensor can hold
    them and ``math.isnan`` holds at exactly the unscored ops."""
    from dnas.select import Selection
    from dnas.spaces import get_space
    space = get_space("nb201")
    genotype = "|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|avg_pool_3x3~0|skip_connect~1|avg_pool_3x3~2|"
    row = [0.5, None, 1.0, None, 2.0]
    sel = Selection.from_json(space, {"method": "pt", "space": "nb201", "genotype": genotype,
                                      "scores": {"cell": [row] * 6}})
    table = sel.scores["cell"]
    assert all(isinstance(v, float) for r in table for v in r)
    assert [math.isnan(v) for v in table[0]] == [False, True, False, True, False]
    assert torch.tensor(table).shape == (6, 5)
