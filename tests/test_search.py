import contextlib
import math
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from dnas.errors import DnasError
from dnas.search import SearchConfig, Searcher, build_run, cosine_lr, run_search
from dnas.search.pieces import SecondOrder
from dnas.select import select_magnitude
from dnas.spaces import DARTS, NB201, get_space
from dnas.supernet import ArchState, build_supernet, weight_parameters


def tiny(out=None, **kw) -> SearchConfig:
    base = dict(space="nb201", dataset="synthetic", out=str(out) if out else None, epochs=2, batch_size=32,
                channels=4, cells=1, device="cpu", seed=3)
    base.update(kw)
    return SearchConfig(**base)


@pytest.mark.parametrize("name", ["nb201", "darts", "s5", "s1", "s2", "s3", "s4"])
def test_supernets_forward_backward_all_spaces(name):
    space = get_space(name)
    model = build_supernet(space, channels=4, cells=1 if space.family == "nb201" else 3)
    y = model(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 10)
    y.sum().backward()
    assert all(a.grad is not None for a in model.arch.parameters())


def test_darts_supernet_weight_count_matches_darts_search_network():
    # DARTS's search log reports 1.930618 M parameters for the 8-cell C=16 CIFAR-10 supernet (α excluded)
    model = build_supernet(DARTS, channels=16, cells=8)
    assert sum(p.numel() for p in weight_parameters(model)) == 1930618


def test_zero_weight_ops_are_not_computed():
    model = build_supernet(NB201, channels=4, cells=1, impl="reference")  # per-op hooks
    calls = []
    for mixed in model.modules():
        if hasattr(mixed, "names") and hasattr(mixed, "ops"):
            for name, op in zip(mixed.names, mixed.ops):
                op.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    w = torch.zeros(6, 5)
    w[:, 3] = 1.0  # nor_conv_3x3 only
    with model.arch.overriding({"cell": w}):
        model(torch.randn(2, 3, 8, 8))
    assert set(calls) == {"nor_conv_3x3"} and len(calls) == 3 * 6  # 3 stages x 1 cell x 6 edges


def test_arch_state_fixed_and_masked_weights():
    arch = ArchState(NB201)
    arch.fix_edge("cell", 2, 4)
    arch.remove_op("cell", 0, 1)
    w = arch.weights("cell")
    assert torch.equal(w[2], torch.tensor([0.0, 0, 0, 0, 1]))
    assert w[0, 1] == 0 and w[0, 0] > 0
    assert arch.undecided_edges("cell") == [0, 1, 3, 4, 5]
    arch.remove_edge("cell", 2)
    assert arch.weights("cell")[2].sum() == 0


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_frozen_arch_gives_the_same_w_gradients_and_no_alpha_graph(impl):
    torch.manual_seed(0)
    model = build_supernet(DARTS, channels=4, cells=3, impl=impl).double()
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 7])
    # An override that depends on α, as SDARTS-RS's perturbed weights do.
    noisy = {ct: model.arch.weights(ct) + 0.1 * torch.rand(14, 8, dtype=torch.float64) for ct in ("normal", "reduce")}
    grads = []
    for frozen in (False, True):
        model.zero_grad(set_to_none=True)
        with model.arch.overriding(noisy), model.arch.frozen() if frozen else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
        alphas = list(model.arch.parameters())
        if frozen:
            with pytest.raises(RuntimeError):  # α is not in the graph at all
                torch.autograd.grad(loss, alphas, retain_graph=True)
        else:
            assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss, alphas, retain_graph=True))
        loss.backward()
        grads.append([p.grad.clone() for p in weight_parameters(model)])
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(*grads))


def test_magnitude_selection_hand_made_alpha():
    arch = ArchState(NB201)
    with torch.no_grad():
        a = arch.alphas["cell"]
        a.zero_()
        for e, k in enumerate([1, 1, 3, 0, 2, 4]):
            a[e, k] = 2.0
    sel = select_magnitude(arch)
    assert str(sel.genotype) == "|skip_connect~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    assert sel.method == "magnitude" and len(sel.scores["cell"]) == 6


def test_magnitude_darts_uses_weights_not_raw_alpha():
    arch = ArchState(DARTS)
    with torch.no_grad():
        for ct in ("normal", "reduce"):
            arch.alphas[ct].zero_()
            arch.alphas[ct][:, 4] = 1.0            # sep_conv_3x3 everywhere
            arch.alphas[ct][[0, 1, 3, 4, 7, 8, 12, 13], 4] = 3.0  # node inputs: 2<-0,1; 3<-1,2; 4<-2,3; 5<-3,4
    g = select_magnitude(arch).genotype
    assert [j for _, j in g.normal] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert all(op == "sep_conv_3x3" for op, _ in g.reduce)


def test_cosine_lr_matches_darts_schedule():
    assert cosine_lr(0, 50, 0.025, 0.001) == pytest.approx(0.025)
    assert cosine_lr(25, 50, 0.025, 0.001) == pytest.approx(0.013)
    sched_lrs = []
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.025)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50, eta_min=0.001)
    for _ in range(50):
        sched_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [cosine_lr(e, 50, 0.025, 0.001) for e in range(50)] == pytest.approx(sched_lrs)


def test_resolution_4_refuses_one_image_batches_up_front():
    # 4 x 4 images end as 1 x 1 maps: a 1-image batch (here the 11th of 11 at batch size 10) made BatchNorm
    # raise a ValueError traceback in the middle of the first epoch.
    with pytest.raises(DnasError, match=r"resolution 4: the w-train split \(11 images, batch size 10\) has a 1-image"):
        build_run(tiny(resolution=4, subset=22, batch_size=10))
    with pytest.raises(DnasError, match=r"the w-train split \(11 images, batch size 1\)"):
        build_run(tiny(resolution=4, subset=22, batch_size=1))
    run = build_run(tiny(resolution=4, subset=22, batch_size=11))  # 11 + 11: no 1-image batch
    m = run.searcher(quiet=True).train_epoch(0)
    assert m["arch_steps_epoch"] == 1 and math.isfinite(m["train_loss"])
    build_run(tiny(resolution=8, subset=22, batch_size=10))  # 2 x 2 maps: a 1-image batch is fine
    # the α half is checked on its own size: 21 images split 10 / 11, and only the α split ends in 1 image
    with pytest.raises(DnasError, match=r"the α-valid split \(11 images, batch size 10\) has a 1-image"):
        build_run(tiny(resolution=4, subset=21, batch_size=10))


def test_second_order_gradient_matches_exact_unrolled_gradient():
    """The finite-difference Hessian-vector product agrees with autograd through the virtual step."""
    torch.manual_seed(0)
    cfg = tiny(mode="darts2", channels=2)
    run = build_run(cfg)
    model = run.model.double()
    s = Searcher(model, cfg, __import__("dnas.search.modes", fromlist=["x"]).get_mode("darts2").build(cfg),
                 run.train, run.valid, torch.device("cpu"), quiet=True)
    s.current_lr = xi = 0.05
    xt, yt = next(iter(run.train.epoch(0)))
    xv, yv = next(iter(run.valid.epoch(0)))
    xt, xv = xt.double(), xv.double()
    model.train()
    for a in s.a_params:
        a.grad = None
    SecondOrder(r=1e-5).backward(s, (xt, yt), (xv, yv))  # small step: exact up to rounding (see docstring)
    g_fd = torch.cat([a.grad.flatten() for a in s.a_params])

    names = [n for n, p in model.named_parameters() if not n.startswith("arch.")]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("arch.")}
    alpha = model.arch.alphas["cell"].detach().clone().requires_grad_(True)

    def loss(params, a, x, y):
        full = dict(params)
        full["arch.alphas.cell"] = a
        return torch.nn.functional.cross_entropy(functional_call(model, full, (x,)), y)

    for n in names:
        w0[n].requires_grad_(True)
    g_tr = torch.autograd.grad(loss(w0, alpha, xt, yt), [w0[n] for n in names], create_graph=True)
    w1 = {n: w0[n] - xi * (g + cfg.w_wd * w0[n]) for n, g in zip(names, g_tr)}
    g_exact = torch.autograd.grad(loss(w1, alpha, xv, yv), alpha)[0].flatten()
    rel = float((g_fd - g_exact).norm() / g_exact.norm())
    assert rel < 1e-6, rel
    # and the second-order term matters: first order alone is clearly different
    g_first = torch.autograd.grad(loss(w0, alpha, xv, yv), alpha)[0].flatten()
    assert float((g_first - g_exact).norm() / g_exact.norm()) > 10 * rel


def _final_state(out):
    ck = torch.load(out / "checkpoint.pt", weights_only=False)["searcher"]
    return ck["model"], json.loads((out / "result.json").read_text())["genotype"]


@pytest.mark.parametrize("mode", ["darts1", "darts2"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, mode, stop_search_at):
    full = tmp_path / "full"
    run_search(tiny(full, mode=mode, epochs=3), quiet=True)
    cut = tmp_path / "cut"
    stop_search_at(2)  # killed during the third epoch
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny(cut, mode=mode, epochs=3), quiet=True)
    stop_search_at(None)
    run_search(tiny(cut, mode=mode, epochs=3), resume=True, quiet=True)
    (sa, ga), (sb, gb) = _final_state(full), _final_state(cut)
    assert ga == gb
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    lines = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]


def test_a_checkpoint_of_an_earlier_version_resumes_exactly(tmp_path, stop_search_at):
    """Checkpoints written before they held only plain data (numpy's RNG key as an array) still resume, bit for bit;
    the resumed run writes the new form, which torch loads with weights_only=True and nothing allow-listed."""
    import numpy as np
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_search(tiny(full, epochs=3), quiet=True)
    stop_search_at(2)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny(cut, epochs=3), quiet=True)
    stop_search_at(None)
    state = torch.load(cut / "checkpoint.pt", weights_only=False)
    name, key, *rest = state["rng"]["numpy"]
    state["rng"]["numpy"] = (name, np.asarray(key, dtype=np.uint32), *rest)  # as np.random.get_state() gives it
    torch.save(state, cut / "checkpoint.pt")
    run_search(tiny(cut, epochs=3), resume=True, quiet=True)
    (sa, ga), (sb, gb) = _final_state(full), _final_state(cut)
    assert ga == gb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert isinstance(torch.load(cut / "checkpoint.pt", weights_only=True)["rng"]["numpy"][1], list)


def test_fixed_mode_keeps_alpha(tmp_path):
    init = build_run(tiny(None, mode="fixed", epochs=1)).model.arch.alphas["cell"].detach().clone()
    run_search(tiny(tmp_path / "r", mode="fixed", epochs=1), quiet=True)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["searcher"]
    assert ck["arch_steps"] == 0 and ck["step"] > 0
    assert torch.equal(ck["model"]["arch.alphas.cell"], init)  # trained w, α exactly as initialised


def test_existing_run_dir_is_not_overwritten(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DnasError, match="already exists"):
        run_search(tiny(out, epochs=1), quiet=True)
    assert (out / "keep.txt").read_text() == "precious"


def test_python_api_in_a_few_lines(tmp_path):
    # the README's Python example
    from dnas.search import SearchConfig, run_search
    result = run_search(SearchConfig(dataset="synthetic", channels=4, cells=1, epochs=1, out=str(tmp_path / "api")),
                        quiet=True)
    g = NB201.parse(result["genotype"])
    assert result["selections"]["magnitude"]["genotype"] == str(g)
    assert (tmp_path / "api" / "selections" / "magnitude.json").exists()


def test_cifar10_search_from_shared_shards_end_to_end(tmp_path, cifar10_dir):
    """The core issue's small CIFAR-10 setting, shrunk further for CI (the decoded arrays are cached)."""
    result = run_search(SearchConfig(dataset="cifar10", data_dir=str(cifar10_dir), subset=200, resolution=8,
                                     channels=4, cells=1, epochs=1, batch_size=32, out=str(tmp_path / "c10"),
                                     device="cpu"), quiet=True)
    assert NB201.parse(result["genotype"])
    assert 0.0 <= result["final"]["valid_acc"] <= 1.0
    cfg = json.loads((tmp_path / "c10" / "config.json").read_text())
    assert cfg["subset"] == 200 and cfg["resolution"] == 8


def test_selections_carry_nb201_ground_truth(tmp_path, monkeypatch, nb201_table_path):
    monkeypatch.setenv("DNAS_NB201_TABLE", str(nb201_table_path))
    from dnas.cli import main
    assert main(["search", "--out", str(tmp_path / "r"), "--dataset", "synthetic", "--epochs", "1", "--channels", "4",
                 "--cells", "1", "--quiet", "--select", "zeros"]) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    for method in ("magnitude", "zeros"):
        gt = result["selections"][method]["ground_truth"]
        assert gt["arch_str"] == result["selections"][method]["genotype"]
        assert 10.0 <= gt["cifar10_test"] <= 94.38 and 1 <= gt["rank"] <= 15625


def test_second_order_steps_with_ops_out_of_the_graph():
    """Ops whose mixing weight is exactly 0 (a fixed edge, a masked op) are never computed, so their
    weights get no gradient in the virtual step; darts2 must still step (PT fine-tunes darts2 supernets)."""
    from dnas.search.modes import make_config

    cfg = make_config("darts2", **{k: v for k, v in vars(tiny()).items() if k != "mode"})
    run = build_run(cfg)
    s = run.searcher(quiet=True)
    run.model.arch.fix_edge("cell", 0, 3)
    run.model.arch.remove_op("cell", 1, 2)
    before = [a.detach().clone() for a in s.a_params]
    xt, yt = next(iter(run.train.epoch(0)))
    xv, yv = next(iter(run.valid.epoch(0)))
    s.arch_step((xt, yt), (xv, yv))
    assert all(torch.isfinite(a).all() for a in s.a_params)
    assert any(not torch.equal(a, b) for a, b in zip(s.a_params, before))
    with pytest.raises(DnasError, match="fd_r: must be > 0"):
        make_config("darts2", options={"fd_r": 0})


def test_nested_override_keeps_the_outer_one_for_other_cell_types():
    """``overriding`` one cell type inside ``frozen()`` must leave the other types frozen (detached)."""
    from dnas.spaces import DARTS

    arch = ArchState(DARTS)
    with arch.frozen():
        with arch.overriding({"normal": torch.ones(14, 8)}):
            assert torch.equal(arch.weights("normal"), torch.ones(14, 8))
            assert not arch.weights("reduce").requires_grad
    assert arch.weights("reduce").requires_grad


@pytest.mark.parametrize("mode", ["darts1", "darts2"])
def test_alpha_step_when_no_alpha_reaches_the_loss(mode):
    """PT's last tuning epoch can have every edge decided as `none`: the loss then ignores α, and the α
    step must do nothing rather than fail (darts-pt: α has no gradient and Adam skips it)."""
    from dnas.search.modes import make_config

    run = build_run(make_config(mode, **{k: v for k, v in vars(tiny()).items() if k != "mode"}))
    s = run.searcher(quiet=True)
    arch = run.model.arch
    for e in range(arch.space.cells["cell"].num_edges):
        arch.fix_edge("cell", e, arch.space.cells["cell"].op_index(e, "none"))
    before = arch.alphas["cell"].detach().clone()
    batch = next(iter(run.train.epoch(0)))
    s.arch_step(batch, batch)
    assert torch.equal(arch.alphas["cell"], before)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_build_supernet_refuses_an_arch_state_of_another_space(impl):
    # S2's (skip, sep3) supernet mixed by S4's (noise, sep3) α would compute skip while magnitude names noise.
    with pytest.raises(DnasError, match="ArchState is for space s4"):
        build_supernet(get_space("s2"), channels=4, cells=3, arch=ArchState(get_space("s4")), impl=impl)
    arch = ArchState(get_space("s2"))
    assert build_supernet(get_space("s2"), channels=4, cells=3, arch=arch, impl=impl).arch is arch


def test_run_search_writes_nothing_to_stdout_and_reports_epochs_to_a_callback(tmp_path, capsys):
    from dnas.cli import main as cli_main
    records = []
    run_search(tiny(tmp_path / "lib", epochs=2), on_epoch=records.append)  # not quiet: progress bar only
    assert capsys.readouterr().out == ""
    assert [r["epoch"] for r in records] == [0, 1] and all("genotype" in r and "train_acc" in r for r in records)
    # the CLI still prints one line per epoch, then the result
    assert cli_main(["search", "--dataset", "synthetic", "--channels", "4", "--cells", "1", "--epochs", "1",
                     "--out", str(tmp_path / "cli")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/1 train_acc=") and json.loads(lines[-1])["space"] == "nb201"


def test_concurrent_result_updates_lose_nothing(tmp_path, monkeypatch):
    """Two commands merging selections into one result.json at once (dnas select pt / ostr in two
    terminals): each reads, merges and writes; neither may drop the other's entry."""
    import threading

    import dnas.rundir as rd
    rd.update_result(tmp_path, space="nb201", selections={"magnitude": {"genotype": "m"}})
    read = rd.read_result
    both_read = threading.Barrier(2, timeout=1.0)

    def slow_read(run):
        out = read(run)
        try:  # give the other writer every chance to read the same old content (unlocked: a lost update)
            both_read.wait()
        except threading.BrokenBarrierError:
            pass
        return out

    monkeypatch.setattr(rd, "read_result", slow_read)
    threads = [threading.Thread(target=rd.update_result, args=(tmp_path,), kwargs={"selections": {m: {"genotype": m}}})
               for m in ("pt", "ostr")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(rd.read_json(tmp_path / "result.json")["selections"]) == ["magnitude", "ostr", "pt"]
    assert rd.prepare_run_dir(tmp_path / "fresh", resume=False, force=False) == tmp_path / "fresh"
    (tmp_path / "only-locks").mkdir()
    (tmp_path / "only-locks" / ".result.json.lock").touch()  # a lock file alone is no run to protect
    rd.prepare_run_dir(tmp_path / "only-locks", resume=False, force=False)


def test_one_command_at_a_time_writes_a_run(tmp_path):
    """`dnas search --resume` started twice, `search --force` while a selection runs, one selection method
    twice at once: the second command is refused with one line and nothing of the run is touched. Other
    selection methods on the same finished run may run side by side."""
    from dnas.rundir import run_lock
    from dnas.select.run import run_selection
    out = tmp_path / "r"
    run_search(tiny(out, epochs=1), quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def unchanged():
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    with run_lock(out):  # a search (or training) working on the run
        with pytest.raises(DnasError, match="in use by another dnas command"):
            run_search(tiny(out, epochs=1), resume=True, quiet=True)
        with pytest.raises(DnasError, match="in use by another dnas command"):
            run_selection(out, "magnitude", quiet=True, force=True)  # force: redo the search's own selection
    assert unchanged()
    with run_lock(out, shared=True):  # a selection or ranking on the run: no --resume, no --force meanwhile
        with pytest.raises(DnasError, match="in use by another dnas command"):
            run_search(tiny(out, epochs=1), force=True, quiet=True)
        assert unchanged() and (out / "selections" / "magnitude.json").exists()
        with run_lock(out, name="selections/.ostr.lock"):  # ostr running: a second ostr is refused ...
            with pytest.raises(DnasError, match=r"\(selection ostr\) is in use"):
                run_selection(out, "ostr", quiet=True)
            run_selection(out, "magnitude", quiet=True, force=True)  # ... another method is not
    # a search --force that starts after the selection's first check but before its lock: checked again
    import dnas.rundir as rd
    real_lock = rd.run_lock

    def force_meanwhile(run, **kw):
        if kw.get("shared"):
            result = rd.read_result(run)
            result.pop("finished")
            (out / "result.json").write_text(json.dumps(result))
        return real_lock(run, **kw)

    rd.run_lock = force_meanwhile
    try:
        with pytest.raises(DnasError, match="has not finished"):
            run_selection(out, "magnitude", quiet=True, force=True)
    finally:
        rd.run_lock = real_lock
    run_search(tiny(out, epochs=1), resume=True, quiet=True)  # finished again
    lock = (out / ".lock").stat().st_ino
    run_search(tiny(out, epochs=1), force=True, quiet=True)  # --force keeps the lock file others may hold
    assert (out / ".lock").stat().st_ino == lock


def test_train_refuses_an_out_dir_in_use(tmp_path):
    from dnas.evaluate import make_config, train_network
    from dnas.rundir import run_lock
    cfg = make_config("nb201", "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|",
                      "synthetic", epochs=1, channels=2, layers=1, batch_size=16, subset=32, test_subset=32,
                      device="cpu")
    with run_lock(tmp_path / "t"):
        with pytest.raises(DnasError, match="in use by another dnas command"):
            train_network(cfg, tmp_path / "t")
    assert {p.name for p in (tmp_path / "t").iterdir()} == {".lock"}
    assert train_network(cfg, tmp_path / "t")["finished"]  # the lock file alone is no run: a fresh start


@pytest.mark.parametrize("err", ["ENOSYS", "ENOLCK", "EOPNOTSUPP"])
def test_a_file_system_without_flock_runs_unlocked(tmp_path, monkeypatch, err):
    """Lustre mounted without `-o flock` (and some NFS/SMB mounts) answer flock with ENOSYS/ENOLCK/EOPNOTSUPP:
    every command used to work there (only reproduce locked); it must still, unlocked as on Windows."""
    import errno
    import fcntl
    import os

    from dnas.rundir import file_lock

    def no_flock(f, op):
        raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "r"
    assert run_search(tiny(out, epochs=1), quiet=True)["finished"]
    err = "EBADF"  # any other flock error is still an error
    with pytest.raises(OSError, match="Bad file descriptor"):
        with file_lock(tmp_path / "x.lock"):
            pass


def test_arch_state_init_scale_and_activations_by_hand():
    # α starts as 1e-3·N(0, 1) (DARTS), crb near 1/|O| with 1e-4 jitter (DARTS-PRIME)
    g = torch.Generator().manual_seed(5)
    arch = ArchState(NB201, generator=g)
    assert torch.equal(arch.alphas["cell"].data, 1e-3 * torch.randn(6, 5, generator=torch.Generator().manual_seed(5)))
    crb = ArchState(NB201, activation="crb", generator=torch.Generator().manual_seed(5))
    assert torch.allclose(crb.alphas["cell"].data,
                          0.2 + 1e-4 * torch.randn(6, 5, generator=torch.Generator().manual_seed(5)))
    a = torch.tensor([[0.0, math.log(2.0), 0.0, 0.0, 0.0],
                      [-2.0, -0.5, 0.25, 0.5, 1.5]])
    expect = {
        "softmax": torch.tensor([[1 / 6, 2 / 6, 1 / 6, 1 / 6, 1 / 6]]),  # per edge (row), over the ops
        "sigmoid": torch.tensor([[0.5, 2 / 3, 0.5, 0.5, 0.5]]),
        "crb": torch.tensor([[0.0, 0.0, 0.25, 0.5, 1.0]]),
        "linear": torch.tensor([[-2.0, -0.5, 0.25, 0.5, 1.5]]),
    }
    for act, want in expect.items():
        arch = ArchState(NB201, activation=act)
        with torch.no_grad():
            arch.alphas["cell"].zero_()
            arch.alphas["cell"][:2] = a
        row = 0 if act in ("softmax", "sigmoid") else 1
        assert torch.allclose(arch.weights("cell")[row], want[0]), act
        assert torch.allclose(arch.activated("cell")[row], want[0]), act
    # softmax of an all-zero edge is uniform over the ops, not over the edges
    assert torch.allclose(ArchState(NB201, init_std=0.0).weights("cell"), torch.full((6, 5), 0.2))


def test_fixing_an_edge_to_op_0_is_a_decision():
    arch = ArchState(NB201)
    arch.fix_edge("cell", 1, 0)  # op index 0 (none) is a real choice, not "undecided"
    assert torch.equal(arch.weights("cell")[1], torch.tensor([1.0, 0, 0, 0, 0]))
    assert arch.undecided_edges("cell") == [0, 2, 3, 4, 5]
    arch.fix_edge("cell", 3, 2)
    w = arch.weights("cell")
    assert torch.equal(w[1], torch.tensor([1.0, 0, 0, 0, 0])) and torch.equal(w[3], torch.tensor([0.0, 0, 1, 0, 0]))


def test_first_order_alpha_gradient_is_the_valid_loss_gradient():
    cfg = tiny(mode="darts1", subset=64, batch_size=16)
    run = build_run(cfg)
    s = run.searcher(quiet=True)
    train, valid = next(iter(run.train.epoch(0))), next(iter(run.valid.epoch(0)))
    assert not torch.equal(train[0], valid[0])
    model = run.model
    want = torch.autograd.grad(F.cross_entropy(model(valid[0]), valid[1]), s.a_params)
    for a in s.a_params:
        a.grad = None
    s.recipe.arch_update.backward(s, train, valid)
    assert all(torch.allclose(a.grad, g, rtol=1e-5, atol=1e-8) for a, g in zip(s.a_params, want))
    assert all(p.grad is None for p in s.w_params)


def test_each_mini_batch_is_an_alpha_step_on_a_valid_batch_then_a_w_step(monkeypatch):
    cfg = tiny(mode="darts1", subset=64, batch_size=16, epochs=3)
    run = build_run(cfg)
    s = run.searcher(quiet=True)
    calls = []
    monkeypatch.setattr(s, "arch_step", lambda tb, vb: (calls.append(("a", tb[0], vb[0], s.progress)), 0.0)[1])
    monkeypatch.setattr(s, "w_step", lambda x, y: (calls.append(("w", x, None, s.progress)), (0.0, 0))[1])
    m = s.train_epoch(1)
    n = len(run.train)
    train = [x for x, _ in run.train.epoch(1)]
    assert n > 1 and len(calls) == 2 * n and m["arch_steps_epoch"] == n
    for i in range(n):
        (ka, ta, va, pa), (kw, tw, _, pw) = calls[2 * i], calls[2 * i + 1]
        assert (ka, kw) == ("a", "w")
        assert torch.equal(ta, train[i]) and torch.equal(tw, train[i])
        assert not any(torch.equal(va, t) for t in train)  # the α batch comes from the valid split
        assert pa == pw == pytest.approx((1 + i / n) / 3)
    # cosine per epoch, at the start of epoch 1 of 3: lr_min + (lr - lr_min)(1 + cos(π/3))/2
    assert m["lr"] == pytest.approx(cfg.w_lr_min + (cfg.w_lr - cfg.w_lr_min) * 0.75)


def test_optimisers_take_the_configured_hyperparameters():
    cfg = tiny(mode="darts1", subset=64, batch_size=16, w_momentum=0.7, w_nesterov=True, w_wd=1e-2,
               arch_lr=2e-3, arch_betas=(0.3, 0.9), arch_wd=5e-2)
    s = build_run(cfg).searcher(quiet=True)
    w, a = s.w_opt.param_groups[0], s.a_opt.param_groups[0]
    assert (w["momentum"], w["nesterov"], w["weight_decay"]) == (0.7, True, 1e-2)
    assert (a["lr"], tuple(a["betas"]), a["weight_decay"]) == (2e-3, (0.3, 0.9), 5e-2)


def test_w_steps_without_alpha_steps_do_not_accumulate_gradients():
    cfg = tiny(mode="fixed", subset=64, batch_size=16, grad_clip=0.0, w_wd=0.0)
    run = build_run(cfg)
    s = run.searcher(quiet=True)
    s._set_lr(0.0)  # w stays put: both steps see the same gradient
    x, y = next(iter(run.train.epoch(0)))
    s.w_step(x, y)
    first = [p.grad.clone() for p in s.w_params if p.grad is not None]
    s.w_step(x, y)
    second = [p.grad for p in s.w_params if p.grad is not None]
    assert first and all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(first, second))


def test_second_order_step_restores_w_and_bn_statistics():
    cfg = tiny(mode="darts2", subset=64, batch_size=16)
    run = build_run(cfg)
    s = run.searcher(quiet=True)
    model = run.model
    model.train()
    w0 = [p.detach().clone() for p in s.w_params]
    b0 = [b.detach().clone() for b in model.buffers()]
    train, valid = next(iter(run.train.epoch(0))), next(iter(run.valid.epoch(0)))
    s.recipe.arch_update.backward(s, train, valid)
    assert all(torch.equal(p, q) for p, q in zip(s.w_params, w0))
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), b0))
    assert all(a.grad is not None for a in s.a_params)


def test_second_order_virtual_step_uses_momentum_and_weight_decay():
    cfg = tiny(mode="darts2", subset=64, batch_size=16, w_momentum=0.9, w_wd=0.1)
    run = build_run(cfg)
    s = run.searcher(quiet=True)
    run.model.train()
    x, y = next(iter(run.train.epoch(0)))
    s.w_step(x, y)  # leaves a momentum buffer per parameter
    bufs = [s.w_opt.state[p]["momentum_buffer"].clone() for p in s.w_params]
    w0 = [p.detach().clone() for p in s.w_params]
    s.current_lr = xi = 0.05
    g = torch.autograd.grad(s.w_loss(x, y), s.w_params, allow_unused=True)
    want = [p - xi * ((0 if gi is None else gi) + 0.1 * p + 0.9 * b) for p, gi, b in zip(w0, g, bufs)]
    seen = []
    real = s.arch_loss
    s.arch_loss = lambda *b: (seen.append([p.detach().clone() for p in s.w_params]), real(*b))[1]
    s.recipe.arch_update.backward(s, (x, y), next(iter(run.valid.epoch(0))))
    assert len(seen) == 1
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(seen[0], want))


def test_live_ops_are_the_nonzero_weights_negative_included():
    from dnas.supernet.fast_ops import MixingWeights
    from dnas.supernet.mixed import live_ops
    w = torch.tensor([[-0.5, 0.0, 2.0], [0.0, 0.0, -1e-9]])  # linear activation: negative weights are live
    assert live_ops(w) == [[True, False, True], [False, False, True]]
    assert MixingWeights(w).live == [[True, False, True], [False, False, True]]


def test_none_is_never_computed_even_with_a_nonzero_weight():
    model = build_supernet(NB201, channels=4, cells=1, impl="reference")
    calls = []
    for mixed in model.modules():
        if hasattr(mixed, "names") and hasattr(mixed, "ops"):
            for name, op in zip(mixed.names, mixed.ops):
                op.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with model.arch.overriding({"cell": torch.ones(6, 5)}):
        model(torch.randn(2, 3, 8, 8))
    assert "none" not in calls and len(calls) == 3 * 6 * 4


def test_magnitude_counts_fixed_edges_as_one_hot_and_skips_removed_ops():
    arch = ArchState(NB201)
    with torch.no_grad():
        a = arch.alphas["cell"]
        a.zero_()
        a[:, 3] = 5.0  # nor_conv_3x3 strongest everywhere
        a[:, 2] = 4.0  # then nor_conv_1x1
    arch.fix_edge("cell", 0, 1)      # skip_connect, although α prefers nor_conv_3x3
    arch.remove_op("cell", 5, 3)     # edge 5 loses nor_conv_3x3: nor_conv_1x1 is next
    g = select_magnitude(arch).genotype
    assert g.ops == ("skip_connect", "nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "nor_conv_1x1")


def test_leaving_an_inner_override_restores_the_outer_one():
    arch = ArchState(NB201)
    outer, inner = torch.full((6, 5), 0.5), torch.full((6, 5), 0.25)
    with arch.overriding({"cell": outer}):
        with arch.overriding({"cell": inner}):
            assert torch.equal(arch.weights("cell"), inner)
        assert torch.equal(arch.weights("cell"), outer)
        with arch.frozen():
            assert torch.equal(arch.weights("cell"), outer)
        assert torch.equal(arch.weights("cell"), outer)
    assert torch.equal(arch.weights("cell"), arch.base_weights("cell"))


def test_resume_a_run_saved_on_more_gpus_than_this_machine_has(tmp_path, monkeypatch, stop_search_at):
    """A checkpoint from a process that saw 2 GPUs (one CUDA RNG state each) resumes where only 1 is visible
    (another machine, a smaller CUDA_VISIBLE_DEVICES): the states of the GPUs present are restored."""
    import torch.cuda.random as cuda_random

    out = tmp_path / "r"
    stop_search_at(1)  # stopped during the second epoch (say, the job's time ran out)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny(out, epochs=2), quiet=True)
    stop_search_at(None)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    saved = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    ck["rng"]["cuda"] = saved  # what torch.cuda.get_rng_state_all() gave on the 2-GPU machine
    torch.save(ck, out / "checkpoint.pt")

    restored = {}

    def set_state(state, device="cuda"):  # as torch: default_generators[index], one per GPU present
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= 1:
            raise IndexError("tuple index out of range")
        restored[index] = state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [saved[0]])
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(cuda_random, "set_rng_state", set_state)
    run_search(tiny(out, epochs=2), resume=True, quiet=True)
    assert list(restored) == [0] and torch.equal(restored[0], saved[0])
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_set_rng_state_gives_each_present_gpu_its_own_state(monkeypatch):
    """3 saved CUDA states, 2 GPUs here: GPU i gets state i (not state 0 for all), the third is dropped."""
    from dnas import rundir

    state = rundir.rng_state()
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]
    state["cuda"] = saved
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.__setitem__(device, s))
    rundir.set_rng_state(state)
    assert sorted(restored) == [0, 1] and all(torch.equal(restored[i], saved[i]) for i in (0, 1))

def test_a_diverging_search_stops_before_saving_nan(tmp_path):
    # lr 1e6 without clipping: the loss is finite in epoch 1 and NaN in epoch 2. The run must stop with one
    # clear error, and nothing non-finite may reach metrics.jsonl, the checkpoint or a genotype.
    out = tmp_path / "run"
    cfg = tiny(out, w_lr=1e6, w_lr_min=0.0, grad_clip=0.0, epochs=3, subset=128, resolution=8)
    with pytest.raises(DnasError, match=r"search diverged: the (w|α) loss is nan at epoch \d+, mini-batch \d+"):
        run_search(cfg, quiet=True)
    assert not (out / "result.json").exists() and not (out / "selections" / "magnitude.json").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) < 3
    for r in rows:
        assert math.isfinite(r["train_loss"]) and all(math.isfinite(v) for row in r["alpha"]["cell"] for v in row)
    if rows:
        state = torch.load(out / "checkpoint.pt", weights_only=False)["searcher"]
        assert state["epoch"] == len(rows)
        assert all(torch.isfinite(v).all() for k, v in state["model"].items() if "alpha" in k)


def test_search_stops_at_a_non_finite_loss_or_parameter_and_names_it(monkeypatch):
    """Each check on its own (the diverging run above trips whichever fires first): a NaN α loss stops the
    mini-batch before its w step; an inf w loss stops too (not only NaN); and finite losses with a parameter
    left non-finite by the epoch's last step (w, then α) still stop the epoch before it counts as done."""
    run = build_run(tiny(subset=64))  # 32 w-train images at batch 32: one mini-batch per epoch
    s = run.searcher(quiet=True)
    real_w, real_a = s.w_step, s.arch_step
    w_calls = []
    monkeypatch.setattr(s, "arch_step", lambda train, valid: math.nan)
    monkeypatch.setattr(s, "w_step", lambda x, y: (w_calls.append(1), real_w(x, y))[1])
    with pytest.raises(DnasError, match=r"the α loss is nan at epoch 1, mini-batch 1 "):
        s.train_epoch(0)
    assert w_calls == []
    monkeypatch.setattr(s, "arch_step", real_a)
    monkeypatch.setattr(s, "w_step", lambda x, y: (math.inf, 0))
    with pytest.raises(DnasError, match=r"the w loss is inf at epoch 1, mini-batch 1 "):
        s.train_epoch(0)
    for poison in (s.w_params[0], s.a_params[0]):
        before = poison.detach().clone()

        def poisoned(x, y, p=poison):
            out = real_w(x, y)
            with torch.no_grad():
                p.view(-1)[0] = math.nan
            return out

        monkeypatch.setattr(s, "w_step", poisoned)
        with pytest.raises(DnasError, match=r"search diverged: non-finite w or α after epoch 1 "):
            s.train_epoch(0)
        assert s.epoch == 0
        with torch.no_grad():
            poison.copy_(before)
    monkeypatch.setattr(s, "w_step", real_w)
    assert math.isfinite(s.train_epoch(0)["train_loss"]) and s.epoch == 1


def test_a_diverging_fine_tuning_names_the_selector_not_the_search_flags():
    searcher = build_run(tiny(subset=64)).searcher(quiet=True)
    with pytest.raises(DnasError, match=r"^pt tune diverged: the w loss is nan at epoch 3, mini-batch 2 .* "
                                        r"lower the selector's lr option"):
        searcher._check_finite("w", math.nan, 2, 1, "pt tune")
    with pytest.raises(DnasError, match=r"^search diverged: the α loss is inf .* lower --lr / --arch-lr"):
        searcher._check_finite("α", math.inf, 0, 0, "search")
    searcher._check_finite("w", 1e30, 0, 0, "search")  # large but finite: no error
