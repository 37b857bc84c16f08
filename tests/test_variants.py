"""Supernet training variants: SDARTS-RS noise, SPOS sampling, DARTS-PRIME schedule / regularisers, resume."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from dnas.cli import build_parser
from dnas.cli.search_cmd import config_from_args
from dnas.errors import DnasError
from dnas.search import SearchConfig, Searcher, build_run, get_mode, run_search
from dnas.search.prime import Admm, PrimeSchedule, Proximity, discretization_mask
from dnas.search.variants import (SdartsNoise, SposSampler, load_arch_list, perturb_weights, prune_nonpositive,
                                  sample_path, uniform_noise)
from dnas.spaces import DARTS, NB201
from dnas.spaces.darts import NODE_EDGES
from dnas.supernet import ArchState


def tiny_fields(out=None, **kw) -> dict:
    base = dict(space="nb201", dataset="synthetic", out=str(out) if out else None, epochs=2, batch_size=16,
                subset=64, channels=4, cells=1, device="cpu", seed=3)
    base.update(kw)
    return base


def tiny(out=None, **kw) -> SearchConfig:
    return SearchConfig(**tiny_fields(out, **kw))


def fake_searcher(arch, **kw):
    base = dict(model=SimpleNamespace(arch=arch), generator=torch.Generator().manual_seed(0), epoch=0,
                total_epochs=10, progress=0.0)
    return SimpleNamespace(**{**base, **kw})


# -- DARTS-PRIME schedule ---------------------------------------------------------------------------------
def test_prime_schedule_follows_the_threshold_rule_on_a_scripted_fi_sequence():
    sched = PrimeSchedule(schedfreq=2, dynamic=True)
    fis = [0.5, 2.0, 2.0, 0.0, 3.0, 0.1]
    decisions, thresholds = [], []
    for step, fi in enumerate(fis):
        decisions.append(sched.decide(step))  # start of the mini-batch
        thresholds.append(sched.threshold)
        sched.observe_fisher(fi)                # after the w backward
    # by hand: ewma -1 (none yet) -> 0.5 -> 0.8 -> 1.04 -> 0.832 -> 1.2656
    d = 1.05 ** -2
    exp_thr = [1.05, 1.05 * d, 1.05 * d * d, 1.05 * d * d * 1.05, 1.05 * d * d * 1.05 * d,
               1.05 * d * d * 1.05 * d * 1.05]
    assert decisions == [False, True, True, False, True, False]
    assert thresholds == pytest.approx(exp_thr, rel=1e-12)
    assert sched.fi_ewma == pytest.approx(0.2 * 0.1 + 0.8 * (0.2 * 3.0 + 0.8 * 0.832))


def test_prime_schedule_averages_one_arch_step_per_schedfreq_w_steps():
    sched = PrimeSchedule(schedfreq=10, dynamic=True)
    steps = 0
    for step in range(2200):
        steps += sched.decide(step)
        sched.observe_fisher(7.3)
    assert abs(steps - 200) <= 3  # equilibrium: p·(−10) + (1 − p) = 0 -> p = 1/11 of the mini-batches
    fixed = PrimeSchedule(schedfreq=4, dynamic=False)
    # the code's ``(step + 1) % schedfreq == 0``: the first α step comes before the schedfreq-th w step
    assert [fixed.decide(s) for s in range(9)] == [False, False, False, True, False, False, False, True, False]
    assert not fixed.needs_fisher and sched.needs_fisher


def test_trainer_reports_fisher_before_clipping():
    run = build_run(tiny(mode="prime", grad_clip=1e-3))
    s = run.searcher(quiet=True)
    seen = []
    s.recipe.schedule.observe_fisher = seen.append
    x, y = next(iter(run.train.epoch(0)))
    grads = torch.autograd.grad(F.cross_entropy(run.model(x), y), s.w_params, allow_unused=True)
    want = sum(float((g ** 2).sum()) for g in grads if g is not None)
    s.w_step(x, y)
    clipped = sum(float((p.grad ** 2).sum()) for p in s.w_params if p.grad is not None)
    assert len(seen) == 1 and seen[0] == pytest.approx(want, rel=1e-4)
    assert want > 1e-4 and clipped == pytest.approx(1e-6, rel=1e-3)  # FI is Σ g² before the clip


# -- proximity / ADMM / crb -------------------------------------------------------------------------------
def _discrete_darts_alpha(arch):
    with torch.no_grad():
        for ct in arch.cell_types:
            a = arch.alphas[ct]
            a.zero_()
            for node, edges in NODE_EDGES.items():
                for j, e in enumerate(edges[:2]):
                    a[e, 1 + (e + j) % 7] = 1.0


def test_proximity_is_zero_on_discrete_alpha_and_its_gradient_points_to_d():
    arch = ArchState(DARTS, activation="crb")
    _discrete_darts_alpha(arch)
    prox = Proximity(rho=0.1)
    term = prox.term(arch)
    term.backward()
    assert float(term.detach()) == 0.0
    assert all(float(a.grad.abs().max()) == 0.0 for a in arch.alphas.values())

    # interior crb α: act = α, so ∂/∂α ‖α − D‖ = (α − D)/‖α − D‖ and −grad points straight at D
    arch = ArchState(DARTS, activation="crb")
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for a in arch.alphas.values():
            a.copy_(0.1 + 0.8 * torch.rand(a.shape, generator=g))
    s = fake_searcher(arch, progress=0.5)
    d = discretization_mask(DARTS, {ct: arch.activated(ct) for ct in arch.cell_types})
    prox.loss(s).backward()
    for ct, a in arch.alphas.items():
        diff = d[ct] - a.detach()
        assert torch.allclose(-a.grad, 0.5 * 0.05 * diff / diff.norm(), atol=1e-7)
    assert float(prox.loss(fake_searcher(arch, progress=0.0)).detach()) == 0.0  # t/T ramp starts at 0


def test_proximity_step_moves_softmax_alpha_toward_d():
    arch = ArchState(NB201)
    prox = Proximity(rho=0.1)
    d = discretization_mask(NB201, {"cell": arch.activated("cell")})
    before = float((arch.activated("cell") - d["cell"]).norm().detach())
    prox.term(arch).backward()
    with torch.no_grad():
        arch.alphas["cell"] -= 0.5 * arch.alphas["cell"].grad
    assert float((arch.activated("cell") - d["cell"]).norm().detach()) < before


def test_admm_updates_z_and_u_every_freq_arch_steps_and_round_trips():
    arch = ArchState(NB201, activation="crb")
    admm = Admm(rho=0.2, freq=2)
    s = fake_searcher(arch)
    assert float(admm.loss(s).detach()) == 0.0  # Z starts at act(α), U at 0
    z0 = {k: v.clone() for k, v in admm.z.items()}
    admm.after_arch_step(s)
    assert torch.equal(admm.z["cell"], z0["cell"])
    admm.after_arch_step(s)
    a = arch.activated("cell").detach()
    want_z = discretization_mask(NB201, {"cell": a})["cell"]
    assert torch.equal(admm.z["cell"], want_z) and set(admm.z["cell"].unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(admm.u["cell"], a - want_z)
    assert float(admm.loss(s).detach()) == pytest.approx(0.1 * float((2 * a - 2 * want_z).norm()), rel=1e-5)
    other = Admm(rho=0.2, freq=2)
    other.load_state_dict(admm.state_dict())
    assert other.count == 2 and torch.equal(other.u["cell"], admm.u["cell"])


def test_crb_prune_removes_nonpositive_ops_for_good():
    arch = ArchState(NB201, activation="crb")
    with torch.no_grad():
        arch.alphas["cell"][0, 2] = -0.01
        arch.alphas["cell"][3, 4] = 0.0
    assert prune_nonpositive(arch) == 2
    assert arch.mask("cell")[0, 2] == 0 and arch.mask("cell")[3, 4] == 0 and arch.weights("cell")[0, 2] == 0
    with torch.no_grad():
        arch.alphas["cell"][0, 2] = 0.5  # momentum brings it back up: still removed, and pinned to 0
    assert prune_nonpositive(arch) == 0
    assert arch.weights("cell")[0, 2] == 0 and arch.alphas["cell"][0, 2] == 0
    # A decided edge keeps its op whatever its α does (weight decay alone drives it down during tuning).
    arch.fix_edge("cell", 1, 3)
    with torch.no_grad():
        arch.alphas["cell"][1, 3] = -0.5
    assert prune_nonpositive(arch) == 0
    assert arch.mask("cell")[1, 3] == 1 and arch.weights("cell")[1, 3] == 1


# -- SDARTS-RS --------------------------------------------------------------------------------------------
def test_sdarts_epsilon_ramp_and_noise_bounds():
    noise = SdartsNoise()
    s = fake_searcher(ArchState(NB201))
    eps = []
    for e in (0, 5, 10):
        s.epoch = e
        eps.append(noise.epsilon(s))
    assert eps == pytest.approx([0.03, 0.165, 0.3])
    assert SdartsNoise(epsilon=0.3).epsilon(s) == 0.3
    g = torch.Generator().manual_seed(0)
    n = uniform_noise((20000,), 0.07, g)
    assert float(n.abs().max()) <= 0.07 and float(n.max()) > 0.069 and float(n.min()) < -0.069


def test_sdarts_perturbation_stays_within_eps_and_respects_decisions():
    arch = ArchState(NB201, activation="sigmoid")  # no renormalisation: the change is the clipped noise itself
    s = fake_searcher(arch, epoch=3)
    noise = SdartsNoise()
    eps = noise.epsilon(s)
    base = arch.base_weights("cell").detach()
    for _ in range(50):
        w = noise.weights(s)["cell"]
        assert float((w - base).abs().max()) <= eps + 1e-6 and not torch.equal(w, base)

    arch = ArchState(NB201)  # softmax: rows stay distributions; decided edges one-hot, removed ops 0
    arch.fix_edge("cell", 2, 3)
    arch.remove_op("cell", 0, 1)
    arch.remove_edge("cell", 5)
    s = fake_searcher(arch)
    base = arch.base_weights("cell").detach()
    for _ in range(50):
        w = SdartsNoise(epsilon=0.3).weights(s)["cell"]
        assert torch.equal(w[2], base[2]) and torch.equal(w[5], torch.zeros(5)) and w[0, 1] == 0
        live = [0, 1, 3, 4]
        assert torch.allclose(w[live].sum(1), torch.ones(4)) and float(w.min()) >= 0 and float(w.max()) <= 1


def test_sdarts_row_clamped_to_zero_keeps_its_best_op():
    base = torch.tensor([[0.2, 0.3, 0.5]])
    noise = torch.tensor([[-0.3, -0.35, -0.6]])  # noisy row (-0.1, -0.05, -0.1) clamps to all zeros
    w = perturb_weights(base, noise, torch.ones(1, 3), torch.tensor([-1]))
    assert torch.equal(w, torch.tensor([[0.0, 1.0, 0.0]]))


# -- SPOS -------------------------------------------------------------------------------------------------
def test_spos_nb201_samples_every_op_uniformly():
    arch = ArchState(NB201)
    g = torch.Generator().manual_seed(11)
    counts = torch.zeros(6, 5)
    n = 4000
    for _ in range(n):
        w = sample_path(arch, g)["cell"]
        assert torch.equal(w.sum(1), torch.ones(6))
        counts += w
    for e in range(6):
        assert chisquare(counts[e].numpy()).pvalue > 1e-3, counts[e]


def test_spos_sampling_respects_masks_and_fixed_edges():
    arch = ArchState(NB201)
    arch.fix_edge("cell", 2, 3)
    arch.remove_op("cell", 0, 0)
    arch.remove_op("cell", 0, 1)
    g = torch.Generator().manual_seed(2)
    for _ in range(200):
        w = sample_path(arch, g)["cell"]
        assert w[2, 3] == 1 and w[0, :2].sum() == 0 and w[0].sum() == 1


def test_spos_darts_samples_uniform_genotypes():
    arch = ArchState(DARTS)
    g = torch.Generator().manual_seed(5)
    n = 2000
    counts = {ct: torch.zeros(14, 8) for ct in arch.cell_types}
    for i in range(n):
        ws = sample_path(arch, g)
        if i < 100:  # each sample is a valid DARTS genotype's mask
            genotype = DARTS.discretize(ws)
            assert all(torch.equal(DARTS.genotype_mask(genotype)[ct], ws[ct]) for ct in ws)
        for ct in ws:
            counts[ct] += ws[ct]
    for ct, c in counts.items():
        assert c[:, 0].sum() == 0  # never none
        for node, edges in NODE_EDGES.items():
            p_edge = 2 / len(edges)
            for e in edges:
                observed = torch.cat([c[e, 1:], (n - c[e].sum()).view(1)]).numpy()
                expected = [n * p_edge / 7] * 7 + [n * (1 - p_edge)]
                if p_edge == 1:
                    observed, expected = observed[:7], expected[:7]
                assert chisquare(observed, expected).pvalue > 1e-3, (ct, e, observed)


def test_spos_restricted_to_an_arch_list(tmp_path):
    archs = ["|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
             "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
             "|none~0|+|nor_conv_1x1~0|none~1|+|nor_conv_3x3~0|avg_pool_3x3~1|none~2|"]
    path = tmp_path / "archs.txt"
    path.write_text("# pruned space\n" + "\n".join(archs) + "\n\n")
    (tmp_path / "archs.json").write_text(json.dumps(archs))
    assert [str(a) for a in load_arch_list(NB201, tmp_path / "archs.json")] == archs
    sampler = get_mode("spos").build(tiny(mode="spos", options={"spos_archs": str(path)})).override
    s = fake_searcher(ArchState(NB201))
    seen = {a: 0 for a in archs}
    for _ in range(600):
        seen[str(NB201.discretize(sampler.weights(s)))] += 1
    assert chisquare(list(seen.values())).pvalue > 1e-3
    with pytest.raises(DnasError, match="no such file"):
        get_mode("spos").build(tiny(mode="spos", options={"spos_archs": str(tmp_path / "missing.txt")}))


def test_spos_w_step_computes_only_the_sampled_path():
    run = build_run(tiny(mode="spos", impl="reference"))  # per-op hooks need the per-op loop
    s = run.searcher(quiet=True)
    assert isinstance(s.recipe.override, SposSampler)
    calls = []
    for ci, cell in enumerate(m for m in run.model.modules() if hasattr(m, "mixed")):
        for e, mixed in enumerate(cell.mixed):
            for k, op in enumerate(mixed.ops):
                op.register_forward_hook(lambda m, i, o, key=(ci, e, k): calls.append(key))
    state = s.generator.get_state()
    x, y = next(iter(run.train.epoch(0)))
    s.w_step(x, y)
    replay = torch.Generator()
    replay.set_state(state)
    w = sample_path(run.model.arch, replay)["cell"]
    names = NB201.cells["cell"].ops[0]
    want = {(e, int(w[e].argmax())) for e in range(6) if names[int(w[e].argmax())] != "none"}
    assert {(e, k) for _, e, k in calls} == want and len(calls) == 3 * len(want)  # 3 stages x 1 cell
    for cell in (m for m in run.model.modules() if hasattr(m, "mixed")):
        for e, mixed in enumerate(cell.mixed):
            for k, op in enumerate(mixed.ops):
                for p in op.parameters():
                    assert (p.grad is not None) == ((e, k) in want)
    assert s.arch_steps == 0


# -- resume and CLI ---------------------------------------------------------------------------------------
def _final(out):
    ck = torch.load(out / "checkpoint.pt", weights_only=False)["searcher"]
    return ck, json.loads((out / "result.json").read_text())["genotype"]


@pytest.mark.parametrize("mode,kw", [
    ("sdarts-rs", {}),
    ("spos", {}),
    ("prime", {"train_portion": 10 / 11, "options": {"threshold": 50.0}}),
    ("prime", {"activation": "crb", "options": {"reg": "admm", "admm_freq": 2, "prime_dynamic": False,
                                                "schedfreq": 2}}),
])
def test_every_variant_resumes_bit_for_bit(tmp_path, mode, kw, stop_search_at):
    from dnas.search.modes import make_config

    full, cut = tmp_path / "full", tmp_path / "cut"
    kw = {"lr_per_step": True, **kw}  # SPOS's schedule, so a mid-run restart must land on the same step's lr

    def tiny(out, mode, **kw):
        return make_config(mode, **tiny_fields(out, **kw))

    run_search(tiny(full, mode=mode, **kw), quiet=True)
    stop_search_at(1)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny(cut, mode=mode, **kw), quiet=True)
    stop_search_at(None)
    run_search(tiny(cut, mode=mode, **kw), resume=True, quiet=True)
    (a, ga), (b, gb) = _final(full), _final(cut)
    assert ga == gb and a["arch_steps"] == b["arch_steps"] and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["generator"], b["generator"])
    assert repr(a["pieces"]) == repr(b["pieces"])
    if mode == "prime":
        assert a["arch_steps"] > 0


def test_cli_options_flow_into_the_config(tmp_path):
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["search", "--out", "x", "--mode", "prime", "--option", "schedfreq=5"]))
    assert cfg.options == {"schedfreq": 5} and cfg.train_portion == pytest.approx(5 / 6)
    assert get_mode("prime").build(cfg).schedule.divider == pytest.approx(1.05 ** -5)
    cfg = config_from_args(parse(["search", "--out", "x", "--mode", "prime", "--option", "prime_split=false"]))
    assert cfg.train_portion == 0.5
    cfg = config_from_args(parse(["search", "--out", "x", "--mode", "prime"]))
    assert cfg.train_portion == pytest.approx(10 / 11)
    path = tmp_path / "a.txt"
    path.write_text("|none~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|\n")
    cfg = config_from_args(parse(["search", "--out", "x", "--mode", "spos", "--option", f"spos_archs={path}"]))
    assert cfg.options["spos_archs"] == str(path) and len(get_mode("spos").build(cfg).override.archs) == 1
    assert (cfg.batch_size, cfg.w_lr, cfg.w_lr_min, cfg.w_nesterov, cfg.w_wd, cfg.grad_clip) == (
        256, 0.1, 0.0, True, 5e-4, 5.0)


@pytest.mark.parametrize("mode,options,activation,msg", [
    ("prime", {"reg": "l1"}, "softmax", "reg"),
    ("prime", {"schedfreq": "often"}, "softmax", "schedfreq"),
    ("prime", {"prime_dynamic": "maybe"}, "softmax", "prime_dynamic"),
    ("prime", {"prime_dynamic": False, "schedfreq": 2.5}, "softmax", "schedfreq"),
    ("sdarts-rs", {}, "linear", "sdarts-rs"),
    ("sdarts-rs", {"sdarts_eps_max": -1}, "softmax", "sdarts_eps_max"),
])
def test_bad_options_are_one_line_errors(mode, options, activation, msg):
    with pytest.raises(DnasError, match=msg):
        get_mode(mode).build(tiny(mode=mode, options=options, activation=activation))


def test_cli_rejects_bad_options_before_creating_the_run(tmp_path, capsys):
    from dnas.cli import main
    for mode, opt in (("prime", "reg=l1"), ("spos", f"spos_archs={tmp_path / 'none.txt'}"),
                      ("sdarts-rs", "sdarts_eps_min=x")):
        out = tmp_path / mode
        assert main(["search", "--out", str(out), "--mode", mode, "--option", opt, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--option" in err and not out.exists()


def test_options_a_mode_never_reads_are_refused():
    """An option is checked against what the mode's recipe actually reads with the other settings."""
    from dnas.search.modes import make_config

    assert make_config("prime", options={"reg": "admm", "admm_freq": 5}).options["admm_freq"] == 5
    with pytest.raises(DnasError, match="admm_freq: not used by mode prime"):
        make_config("prime", options={"admm_freq": 5})  # the default regulariser is prox
    with pytest.raises(DnasError, match="crb_prune: not used"):
        make_config("darts1", options={"crb_prune": False})  # only the crb activation prunes
    assert make_config("darts1", activation="crb", options={"crb_prune": False}).options == {"crb_prune": False}
    assert make_config("darts2", options={"fd_r": 0.02}).options == {"fd_r": 0.02}


def test_mode_defaults_need_make_config_and_depend_on_the_space(tmp_path):
    """SPOS's paper settings differ per space; a bare SearchConfig(mode="spos") would silently train with
    the DARTS optimiser, so run_search refuses it. Modes without defaults get their checks and derived
    settings (PRIME's 10/11 split) in run_search too."""
    from dnas.search.modes import make_config

    assert make_config("prime", space="darts").node_bn and not make_config("prime").node_bn
    assert not make_config("prime", space="s2", node_bn=False).node_bn and not make_config("darts1", space="darts").node_bn
    with pytest.raises(DnasError, match="node-bn is a DARTS-space option"):
        make_config("darts1", node_bn=True).check()
    nb, darts = make_config("spos"), make_config("spos", space="darts")
    assert (nb.batch_size, nb.w_lr, nb.w_lr_min, nb.w_nesterov, nb.w_wd, nb.lr_per_step) == (256, 0.1, 0.0, True, 5e-4, True)
    assert (darts.batch_size, darts.w_lr, darts.w_lr_min, darts.w_nesterov, darts.w_wd) == (128, 0.025, 0.0, False, 3e-4)
    # the paper code's README trains every supernet for 1000 epochs; its DARTS config's supernet is 20 cells, C=36
    assert (nb.epochs, nb.grad_clip, nb.channels, nb.cells) == (1000, 5.0, 16, None)
    assert (darts.epochs, darts.grad_clip, darts.channels, darts.cells) == (1000, 5.0, 36, 20)
    assert make_config("spos", space="darts", channels=8, cells=3).cells == 3
    assert make_config("spos", space="s2", w_lr=0.05).w_lr == 0.05  # the user's setting wins
    with pytest.raises(DnasError, match=r"make_config\('spos'"):
        run_search(tiny(tmp_path / "bare", mode="spos"), quiet=True)
    assert not (tmp_path / "bare").exists()
    cfg = tiny(tmp_path / "prime", mode="prime", epochs=1)
    run_search(cfg, quiet=True)
    assert cfg.train_portion == pytest.approx(10 / 11)
    with pytest.raises(DnasError, match="threshold: must be > 0"):
        run_search(tiny(tmp_path / "p0", mode="prime", options={"threshold": 0}), quiet=True)


def test_per_step_cosine_follows_the_mini_batches(monkeypatch):
    """lr_per_step anneals after every mini-batch over epochs x batches steps (SPOS's scheduler)."""
    from dnas.search.trainer import cosine_lr

    cfg = tiny(mode="fixed", lr_per_step=True, w_lr=0.1, w_lr_min=0.0)
    run = build_run(cfg)
    s = run.searcher(quiet=True)
    seen = []
    real = Searcher.w_step
    monkeypatch.setattr(Searcher, "w_step", lambda self, x, y: (seen.append(self.w_opt.param_groups[0]["lr"]),
                                                                 real(self, x, y))[1])
    n = len(run.train)
    for epoch in range(cfg.epochs):
        s.train_epoch(epoch)
    assert seen == pytest.approx([cosine_lr(t, cfg.epochs * n, 0.1, 0.0) for t in range(cfg.epochs * n)])
    assert n > 1 and seen[1] < seen[0]


def test_nb201_searches_default_to_darts_pt_100_epochs():
    """darts-pt trains its NB201 supernets for 100 epochs (DARTS-PT projects from epoch 100); the DARTS
    spaces keep DARTS's 50. A user's value and a mode's own default win."""
    from dnas.cli import build_parser
    from dnas.cli.search_cmd import config_from_args
    from dnas.search.modes import make_config

    for mode in ("darts1", "darts2", "fixed", "sdarts-rs"):
        assert make_config(mode).epochs == 100 and make_config(mode, space="nb201").epochs == 100
        assert make_config(mode, space="darts").epochs == 50 and make_config(mode, space="s3").epochs == 50
    assert make_config("darts1", epochs=7).epochs == 7
    parse = build_parser().parse_args
    assert config_from_args(parse(["search", "--out", "x", "--dataset", "cifar10"])).epochs == 100
    assert config_from_args(parse(["search", "--out", "x", "--dataset", "cifar10", "--space", "s5"])).epochs == 50
    assert config_from_args(parse(["search", "--out", "x"])).epochs == 20  # the small built-in set's supernet


def test_prime_regularisers_follow_the_selectors_decisions_during_fine_tuning():
    # PT / progressive OStr keep the search recipe while tuning: the regulariser must see the architecture as
    # it is now (decided edges one-hot, left out of the penalty), not the stale α of decided edges.
    arch = ArchState(NB201, activation="crb")
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        arch.alphas["cell"].copy_(0.1 + 0.8 * torch.rand(arch.alphas["cell"].shape, generator=g))
    a = arch.alphas["cell"].detach().clone()
    stale = int(a[0].argmax())
    arch.fix_edge("cell", 0, (stale + 1) % 5)  # the selector kept an op that is not α's argmax
    arch.fix_edge("cell", 3, int(a[3].argmax()))
    live = [1, 2, 4, 5]
    prox = Proximity(rho=0.1)
    term = prox.term(arch)
    term.backward()
    d = F.one_hot(a[live].argmax(1), 5).float()  # NB201's D: argmax per edge
    want = (a[live] - d).norm()
    assert float(term.detach()) == pytest.approx(float(want), rel=1e-6)
    grad = arch.alphas["cell"].grad
    assert float(grad[[0, 3]].abs().max()) == 0.0  # decided edges: no pull toward their stale argmax
    assert torch.allclose(grad[live], (a[live] - d) / want, atol=1e-7)
    raw = Proximity(rho=0.1, target="raw")  # the named old behaviour
    arch.alphas["cell"].grad = None
    raw.term(arch).backward()
    assert float(arch.alphas["cell"].grad[0].abs().max()) > 0

    admm = Admm(rho=0.2, freq=1)
    s = fake_searcher(arch)
    admm.after_arch_step(s)  # Z, U from the current architecture; U zero on decided edges
    assert float(admm.u["cell"][[0, 3]].abs().max()) == 0.0
    assert torch.equal(admm.z["cell"][live], d)
    arch.alphas["cell"].grad = None
    admm.loss(s).backward()
    assert float(arch.alphas["cell"].grad[[0, 3]].abs().max()) == 0.0


def test_prime_target_option_is_checked():
    from dnas.search.prime import build_prime
    assert build_prime(tiny(mode="prime", options={"prime_target": "raw"})).regularisers[0].target == "raw"
    with pytest.raises(DnasError):
        build_prime(tiny(mode="prime", options={"prime_target": "stale"}))
