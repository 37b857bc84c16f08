"""Stand-alone DARTS network, training protocols, `train_network` (checkpoint/resume) and `dnas train`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnas.cli import main
from dnas.data import BatchLoader, load_dataset
from dnas.data.loader import cut_holes
from dnas.errors import DnasError
from dnas.evaluate import DartsNetwork, build_network, genotype_from_run, make_config, preset, train_network
from dnas.evaluate.darts_net import DartsEvalCell, auxiliary_fits
from dnas.evaluate.train import lr_at
from dnas.io import atomic_write_json, read_jsonl
from dnas.spaces import DartsGenotype, get_space
from dnas.spaces.ops import FactorizedReduce

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
DARTS_G = ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_3x3', 0), ('max_pool_3x3', 2), "
           "('avg_pool_3x3', 1), ('skip_connect', 3), ('sep_conv_5x5', 0), ('dil_conv_5x5', 4)], "
           "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('skip_connect', 1), ('skip_connect', 0), "
           "('sep_conv_3x3', 2), ('avg_pool_3x3', 1), ('dil_conv_3x3', 3), ('skip_connect', 2), "
           "('max_pool_3x3', 4)], reduce_concat=[2, 3, 4, 5])")
TINY_NB201 = dict(epochs=2, channels=4, layers=1, batch_size=32, subset=64, test_subset=40, quiet=True)
TINY_DARTS = dict(epochs=2, channels=4, layers=3, batch_size=16, subset=32, test_subset=20, resolution=32,
                  cutout=8, drop_path=0.3, quiet=True)


# -- DARTS evaluation network ---------------------------------------------------------------------------------

def test_darts_network_structure_and_outputs():
    torch.manual_seed(0)
    net = DartsNetwork(DartsGenotype.parse(DARTS_G), channels=4, layers=3, num_classes=7, auxiliary=True)
    cells = list(net.cells)
    assert [c.reduction for c in cells] == [False, True, True]
    assert isinstance(cells[2].pre0, FactorizedReduce)  # the cell after a reduction cell
    assert all(isinstance(c, DartsEvalCell) for c in cells)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and not m.affine for m in net.modules())
    x = torch.randn(2, 3, 32, 32)
    net.train()
    logits, aux = net(x)
    assert logits.shape == aux.shape == (2, 7)
    net.eval()
    assert net(x).shape == (2, 7)  # no auxiliary output outside training


def test_auxiliary_head_input_sizes():
    """auxiliary_fits is exactly the set of input sizes where the head runs (32, 36, 40 here)."""
    torch.manual_seed(0)
    net = DartsNetwork(DartsGenotype.parse(DARTS_G), channels=4, layers=3, num_classes=7, auxiliary=True).train()
    for r in range(28, 45):
        try:
            net(torch.randn(2, 3, r, r))
            ran = True
        except RuntimeError:
            ran = False
        assert ran == auxiliary_fits(r), r


def test_drop_path_only_in_training_and_never_on_identity():
    torch.manual_seed(0)
    g = DartsGenotype.parse(DARTS_G.replace("('sep_conv_3x3', 0), ('skip_connect', 1)",
                                            "('skip_connect', 0), ('skip_connect', 1)"))
    net = DartsNetwork(g, channels=4, layers=3)
    cell = net.cells[0]
    s = torch.randn(4, 12, 8, 8)
    cell.eval()
    a = cell(s, s, 0.9)
    assert torch.equal(a, cell(s, s, 0.9))  # eval: deterministic, no drop
    cell.train()
    torch.manual_seed(1)
    out = cell(s, s, 0.999)
    # Node 2 = skip(s0') + skip(s1'): identity edges are never dropped, so node 2 survives whole.
    pre = cell.pre0(s) + cell.pre1(s)
    assert torch.allclose(out[:, :4], pre, atol=1e-5)
    # Node 3 = dil_conv(s0') + max_pool(node 2), both droppable: gone at p = 0.999, there at p = 0.
    assert (out[:, 4:8] == 0).all()
    torch.manual_seed(1)
    assert not (cell(s, s, 0.0)[:, 4:8] == 0).all()


# -- channels-last stand-alone networks ------------------------------------------------------------------------

# DNAS_TEST_DEVICE=cuda runs the layout tests on a GPU, TF32 off (it rounds conv inputs far outside 1e-5).
DEVICE = torch.device(os.environ.get("DNAS_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
LAYOUT_CASES = [("nb201", NB201_ARCH, dict(channels=4, layers=1)),
                ("darts", DARTS_G, dict(channels=4, layers=3, auxiliary=True))]


def _layout_pair(space: str, arch: str, kw: dict, dtype: torch.dtype, in_channels: int = 3):
    """The network in NCHW and a copy loaded from its state_dict that runs channels-last (the default)."""
    sp = get_space(space)
    torch.manual_seed(0)
    nchw = build_network(sp, sp.parse(arch), in_channels=in_channels, **kw)
    nchw.memory_format = torch.contiguous_format
    cl = build_network(sp, sp.parse(arch), in_channels=in_channels, **kw)
    assert cl.memory_format == torch.channels_last
    cl.load_state_dict(nchw.state_dict())
    for net in (nchw, cl):
        if hasattr(net, "drop_path_prob"):
            net.drop_path_prob = 0.3
    return nchw.to(DEVICE, dtype), cl.to(DEVICE, dtype)


def _train_step(net, x, y):
    """Forward (drop-path masks seeded alike), main + auxiliary loss, backward; outputs and input gradient."""
    net.train()
    x = x.clone().requires_grad_()
    torch.manual_seed(7)
    out = net(x)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = torch.nn.functional.cross_entropy(logits, y)
    if aux is not None:
        loss = loss + 0.4 * torch.nn.functional.cross_entropy(aux, y)
    loss.backward()
    return [t for t in (logits, aux) if t is not None], x.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("space, arch, kw", LAYOUT_CASES, ids=["nb201", "darts"])
def test_channels_last_network_equals_nchw(space, arch, kw, dtype):
    """Channels-last activations compute the NCHW network's function: outputs (train with drop-path and the
    auxiliary head, then eval), every parameter gradient, the input gradient and the BN running statistics
    agree, to 1e-10 in float64 (the certificate) and 1e-4 in float32 (a changed summation order may flip a
    ReLU input within rounding of 0), relative to each tensor's scale or, for gradients, at least the largest
    one (a BN bias feeding a training-mode BN has a structurally-zero gradient, all rounding). Parameters stay
    NCHW, as do their gradients."""
    tol = 1e-10 if dtype == torch.float64 else 1e-4

    def close(a, b, what, floor=1e-30):
        scale = max(float(b.detach().abs().max()) if b.numel() else 0.0, floor)
        torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol * scale,
                                   msg=lambda m: f"{what}: {m}")

    nchw, cl = _layout_pair(space, arch, kw, dtype)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 32, 32, generator=gen, dtype=dtype).to(DEVICE)
    y = torch.randint(0, 10, (6,), generator=gen).to(DEVICE)
    layouts = []
    cells = cl.cells if space == "darts" else cl.layers
    hooks = [m.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
             for m in cells]
    outs_cl, gx_cl = _train_step(cl, x, y)
    for h in hooks:
        h.remove()
    assert layouts and all(layouts)  # the cells really ran channels-last
    outs, gx = _train_step(nchw, x, y)
    assert len(outs) == len(outs_cl) == (2 if space == "darts" else 1)
    for a, b in zip(outs_cl, outs):
        close(a, b, "train output")
    close(gx_cl, gx, "input gradient")
    largest = max(float(p.grad.abs().max()) for p in nchw.parameters())
    for (name, p), q in zip(nchw.named_parameters(), cl.parameters()):
        assert q.is_contiguous() and q.grad.is_contiguous(), name
        close(q.grad, p.grad, f"grad {name}", largest)
    for (name, b), c in zip(nchw.named_buffers(), cl.buffers()):
        close(c.to(b.dtype), b, f"buffer {name}")
    nchw.eval()
    cl.eval()
    with torch.no_grad():
        close(cl(x), nchw(x), "eval output")
    assert all(t.is_contiguous() for t in cl.state_dict().values())  # checkpoints keep their layout


@pytest.mark.parametrize("space, arch, kw", LAYOUT_CASES, ids=["nb201", "darts"])
def test_channels_last_network_on_one_channel_input(space, arch, kw):
    """A 1-channel batch is NCHW and channels-last at once (conv would answer NCHW): the stem's output is
    converted too, so the cells run channels-last; the function is the NCHW network's."""
    nchw, cl = _layout_pair(space, arch, kw, torch.float64, in_channels=1)
    layouts = []
    first_cell = (cl.cells if space == "darts" else cl.layers)[0]
    hook = first_cell.register_forward_hook(  # its first input is the stem's output
        lambda m, i, o: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last) and not i[0].is_contiguous()))
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64).to(DEVICE)
    cl.eval()
    nchw.eval()
    with torch.no_grad():
        torch.testing.assert_close(cl(x), nchw(x), rtol=1e-10, atol=1e-12)
    hook.remove()
    assert layouts == [True]


def test_train_step_benchmark_quick_smoke(tmp_path):
    """benchmarks/train_step.py --quick runs both layouts on both space families and prints its JSON rows."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    timed = [r for r in rows if "step_ms" in r]
    assert {(r["impl"], r["space"]) for r in timed} == {(i, s) for i in ("nchw", "channels_last")
                                                        for s in ("nb201", "darts")}
    assert all(r["images_per_s"] > 0 and r["eval_ms"] > 0 for r in timed)
    assert [r["auxiliary"] for r in timed if r["space"] == "darts"] == [True, True]
    assert {r["summary"] for r in rows if "step_speedup" in r} == {"nb201", "darts"}


def test_cutout_and_lr_schedule():
    x = torch.ones(3, 2, 10, 10)
    y = cut_holes(x, 4, torch.tensor([0, 5, 9]), torch.tensor([0, 5, 2]))
    zeros = (y == 0).all(dim=1).sum(dim=(1, 2))
    assert zeros.tolist() == [4, 16, 12]  # a 4x4 square [c-2, c+2), clipped at the border (2x2, 4x4, 3x4)
    assert (y[1, :, 3:7, 3:7] == 0).all() and y[1].sum() == 2 * (100 - 16)
    # Cutout is drawn with the epoch's plan: the same hole for a sample whichever rank serves it.
    data = load_dataset("synthetic", "train", subset=16, seed=0)
    one = next(iter(BatchLoader(data, None, 16, augment=True, cutout=4, seed=1).epoch(0)))[0]
    halves = [next(iter(BatchLoader(data, None, 8, augment=True, cutout=4, seed=1, rank=r, world_size=2).epoch(0)))[0]
              for r in (0, 1)]
    assert torch.equal(one[0::2], halves[0]) and torch.equal(one[1::2], halves[1])
    assert (one == 0).all(dim=1).any()
    cfg = make_config("nb201", NB201_ARCH, epochs=4, lr=0.1)
    assert [round(lr_at(cfg, e), 6) for e in range(4)] == [0.1, 0.085355, 0.05, 0.014645]


def test_presets():
    nb = preset("nb201", "cifar10")
    assert (nb["epochs"], nb["batch_size"], nb["lr"], nb["weight_decay"], nb["nesterov"]) == (200, 256, 0.1, 5e-4, True)
    d = preset("darts", "cifar10")
    assert (d["epochs"], d["batch_size"], d["lr"], d["weight_decay"], d["grad_clip"]) == (600, 96, 0.025, 3e-4, 5.0)
    assert (d["channels"], d["layers"], d["auxiliary_weight"], d["drop_path"], d["cutout"]) == (36, 20, 0.4, 0.2, 16)
    assert (preset("s3", "cifar100")["channels"], preset("s3", "cifar100")["layers"]) == (16, 8)
    assert (preset("darts", "cifar100")["channels"], preset("darts", "cifar100")["layers"]) == (36, 20)
    assert preset("darts", "synthetic")["cutout"] == 0
    # DARTS's auxiliary head only fits ~32 px inputs (an 8x8 map after two reductions).
    assert preset("darts", "synthetic")["auxiliary_weight"] == 0.0 == preset("s3", "svhn", 16)["auxiliary_weight"]
    assert preset("s3", "svhn")["auxiliary_weight"] == 0.4 == preset("darts", "digits", 32)["auxiliary_weight"]
    assert make_config("darts", DARTS_G, "cifar10", resolution=16).auxiliary_weight == 0.0
    with pytest.raises(DnasError, match="auxiliary head needs 32, 36 or 40 px"):
        make_config("darts", DARTS_G, "cifar10", resolution=16, auxiliary_weight=0.4)
    with pytest.raises(DnasError, match='multiple of 4'):
        make_config('darts', DARTS_G, 'cifar10', resolution=30)
    cfg = make_config("darts", DARTS_G, "cifar10", epochs=3, lr=None)
    assert cfg.epochs == 3 and cfg.lr == 0.025 and cfg.genotype == str(DartsGenotype.parse(DARTS_G))
    with pytest.raises(DnasError, match="unknown training settings"):
        make_config("nb201", NB201_ARCH, warmup=5)
    with pytest.raises(DnasError, match="epochs"):
        make_config("nb201", NB201_ARCH, epochs=0)
    with pytest.raises(DnasError):
        make_config("darts", NB201_ARCH)


def test_train_at_resolution_4_refuses_a_one_image_batch(tmp_path):
    # 33 images at batch 32 leave a 1-image batch; at 4 x 4 px BN sees 1 x 1 maps and torch used to raise mid-epoch
    cfg = make_config("nb201", NB201_ARCH, "synthetic", **{**TINY_NB201, "resolution": 4, "subset": 33})
    with pytest.raises(DnasError, match=r"resolution 4: the training split \(33 images, batch size 32\) has a 1-image"):
        train_network(cfg, tmp_path / "t")
    ok = train_network(make_config("nb201", NB201_ARCH, "synthetic", **{**TINY_NB201, "resolution": 4, "subset": 34}),
                       tmp_path / "u")
    assert ok["finished"] and math.isfinite(ok["test_loss"])


def test_check_finite_names_each_non_finite_quantity():
    """Each of the three checks alone (the diverging run trips whichever fires first): train loss (inf, not
    only NaN), test loss, weights; an epoch without a test evaluation is checked on what it has."""
    import torch.nn as nn

    from dnas.evaluate.train import _check_finite

    cfg = make_config("nb201", NB201_ARCH, "synthetic", **TINY_NB201)
    model = nn.Linear(2, 2)
    ok = {"lr": 0.1, "train_loss": 1.0, "test_loss": 2.0}
    _check_finite(model, ok, 0, cfg)
    _check_finite(model, {"lr": 0.1, "train_loss": 1.0}, 0, cfg)
    for record, what in (({**ok, "train_loss": math.inf}, "train_loss"), ({**ok, "test_loss": math.nan}, "test_loss")):
        with pytest.raises(DnasError, match=rf"diverged in epoch 3 \(non-finite {what}; lr 0.1"):
            _check_finite(model, record, 2, cfg)
    with torch.no_grad():
        model.bias[1] = math.nan
    with pytest.raises(DnasError, match=r"\(non-finite weights; lr 0.1"):
        _check_finite(model, ok, 0, cfg)


def test_train_checks_each_ranks_batches_under_ddp(tmp_path):
    """Under DDP each rank trains on ceil(n / world) images (BatchLoader pads) in batches of batch / world:
    33 images on 2 ranks are 17 per rank at batch 16, a 1-image batch on every rank (1 process: 33 at 32)."""
    from dnas.evaluate import train as train_mod
    from dnas.evaluate.distributed import DistContext

    cfg = make_config("nb201", NB201_ARCH, "synthetic", **{**TINY_NB201, "resolution": 4, "subset": 33})
    train_set, test_set = train_mod._data(cfg)
    with pytest.raises(DnasError, match=r"the training split \(17 images, batch size 16\) has a 1-image"):
        train_mod._train(cfg, tmp_path / "t", DistContext(rank=0, world_size=2), train_set, test_set,
                         resume=False, force=False, callback=None)
    assert not (tmp_path / "t").exists()


# -- training runs ---------------------------------------------------------------------------------------------

def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "metrics.jsonl")]


class Stop(Exception):
    pass


def _stop_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 0:
        raise Stop


@pytest.mark.parametrize("space, arch, tiny", [("nb201", NB201_ARCH, TINY_NB201), ("darts", DARTS_G, TINY_DARTS)])
def test_train_completes_and_resumes_exactly(tmp_path, space, arch, tiny):
    cfg = make_config(space, arch, "synthetic", **tiny)
    straight = train_network(cfg, tmp_path / "a")
    assert straight["finished"] and straight["epochs"] == 2 and 0 <= straight["test_acc"] <= 100
    assert straight["params_M"] > 0 and straight["flops_M"] > 0
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "result.json"} <= files

    with pytest.raises(Stop):
        train_network(cfg, tmp_path / "b", callback=_stop_after_first_epoch)
    assert len(_metrics(tmp_path / "b")) == 1
    resumed = train_network(cfg, tmp_path / "b", resume=True)
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")
    assert resumed["test_acc"] == straight["test_acc"] and resumed["test_loss"] == straight["test_loss"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(DnasError, match="already exists"):
        train_network(cfg, tmp_path / "a")
    other = make_config(space, arch, "synthetic", **{**tiny, "epochs": 3})
    with pytest.raises(DnasError, match="different settings"):
        train_network(other, tmp_path / "a", resume=True)


def test_genotype_from_run(tmp_path):
    run = tmp_path / "search"
    atomic_write_json(run / "config.json", {"space": "nb201", "dataset": "cifar100", "data_dir": "/data/c100"})
    atomic_write_json(run / "result.json", {"space": "nb201", "genotype": NB201_ARCH,
                                            "selections": {"pt": {"genotype": NB201_ARCH.replace("none", "skip_connect")}}})
    found = genotype_from_run(run)
    assert found["genotype"] == NB201_ARCH and found["dataset"] == "cifar100" and found["space"] == "nb201"
    assert found["data_dir"] == "/data/c100"  # train --run reads the data where the search did
    assert "skip_connect~1|avg" in genotype_from_run(run, "pt")["genotype"]
    with pytest.raises(DnasError, match="available: pt"):
        genotype_from_run(run, "magnitude")
    darts_run = tmp_path / "d"
    atomic_write_json(darts_run / "result.json", {"space": "darts", "selections": {
        "magnitude": {"genotype": DartsGenotype.parse(DARTS_G).to_json()}}})
    assert genotype_from_run(darts_run, "magnitude")["genotype"] == str(DartsGenotype.parse(DARTS_G))
    with pytest.raises(DnasError, match="--selection"):
        genotype_from_run(darts_run)
    with pytest.raises(DnasError, match="not found"):
        genotype_from_run(tmp_path / "missing")
    started = tmp_path / "started"  # a search that has not finished: config.json, no result.json yet
    atomic_write_json(started / "config.json", {"space": "nb201", "dataset": "cifar10"})
    with pytest.raises(DnasError, match="has not finished"):
        genotype_from_run(started)


def test_train_cli(tmp_path, capsys):
    run = tmp_path / "search"
    atomic_write_json(run / "config.json", {"space": "nb201", "dataset": "synthetic"})
    atomic_write_json(run / "result.json", {"space": "nb201", "selections": {"pt": {"genotype": NB201_ARCH}}})
    args = ["train", "--run", str(run), "--selection", "pt", "--out", str(tmp_path / "t"), "--epochs", "1",
            "--channels", "4", "--layers", "1", "--batch-size", "32", "--subset", "64", "--test-subset", "40",
            "--quiet"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    assert printed["test_acc"] == result["test_acc"] and result["source"].endswith(":pt")
    assert result["genotype"] == NB201_ARCH and result["dataset"] == "synthetic"
    assert main(args + ["--resume"]) == 0  # already finished: returns the saved result
    capsys.readouterr()
    assert main(["train", "--arch", NB201_ARCH, "--out", str(tmp_path / "x")]) == 2  # no --space
    assert main(["train", "--space", "nb201", "--arch", NB201_ARCH, "--selection", "pt",
                 "--out", str(tmp_path / "x")]) == 2
    assert main(args) == 2  # exists
    err = capsys.readouterr().err
    assert "already exists" in err


def test_train_resume_after_the_last_checkpoint_keeps_its_final_metrics(tmp_path):
    """Killed after the last epoch's checkpoint, before result.json: the resumed result is the same."""
    cfg = make_config("nb201", NB201_ARCH, "synthetic", **TINY_NB201)
    straight = train_network(cfg, tmp_path / "a")

    def stop_after_last(record: dict) -> None:
        if record["epoch"] == cfg.epochs - 1:
            raise Stop

    with pytest.raises(Stop):
        train_network(cfg, tmp_path / "b", callback=stop_after_last)
    assert not (tmp_path / "b" / "result.json").exists()
    resumed = train_network(cfg, tmp_path / "b", resume=True)
    for key in ("train_acc", "train_loss", "test_acc", "test_loss"):
        assert resumed[key] == straight[key], key
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")


class _TwoHeads(torch.nn.Module):
    """logits = x @ A, aux = x @ B (x is N x 1): gradients small enough to derive by hand."""

    def __init__(self, a: list[float], b: list[float]):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([a]))
        self.B = torch.nn.Parameter(torch.tensor([b]))

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)[:, :1].float()
        return (x @ self.A, x @ self.B) if self.training else x @ self.A


def test_train_one_epoch_aux_weight_grad_clip_and_loss_average_by_hand():
    from dnas.evaluate.distributed import DistContext
    from dnas.evaluate.train import train_one_epoch
    ctx = DistContext()
    one = [(torch.ones(1, 1), torch.tensor([0]))]
    # A = B = 0: softmax (1/2, 1/2), dCE/dlogits = (-1/2, 1/2); the aux head's gradient is scaled by 0.4.
    m = _TwoHeads([0.0, 0.0], [0.0, 0.0])
    train_one_epoch(m, one, torch.optim.SGD(m.parameters(), lr=1.0), ctx, aux_weight=0.4)
    assert torch.allclose(m.A.data, torch.tensor([[0.5, -0.5]])) and torch.allclose(m.B.data, torch.tensor([[0.2, -0.2]]))
    # Clipped to norm 0.5: the whole update (|g| = sqrt(0.58)) is scaled by 0.5 / sqrt(0.58).
    m = _TwoHeads([0.0, 0.0], [0.0, 0.0])
    train_one_epoch(m, one, torch.optim.SGD(m.parameters(), lr=1.0), ctx, aux_weight=0.4, grad_clip=0.5)
    s = 0.5 / 0.58 ** 0.5
    assert torch.allclose(m.A.data, torch.tensor([[0.5 * s, -0.5 * s]]), atol=1e-5)
    assert torch.allclose(m.B.data, torch.tensor([[0.2 * s, -0.2 * s]]), atol=1e-5)
    # The reported loss/acc are per sample over the epoch (main head only): batches of 1 and 3 samples,
    # logits (1, 0): CE = log(1 + e^-1) for class 0 (right), log(1 + e) for class 1 (wrong).
    m = _TwoHeads([1.0, 0.0], [5.0, -5.0])
    batches = [(torch.ones(1, 1), torch.tensor([0])), (torch.ones(3, 1), torch.tensor([1, 1, 1]))]
    out = train_one_epoch(m, batches, torch.optim.SGD(m.parameters(), lr=0.0), ctx, aux_weight=0.4)
    l0, l1 = math.log(1 + math.exp(-1)), math.log(1 + math.e)
    assert out["loss"] == pytest.approx((l0 + 3 * l1) / 4) and out["acc"] == pytest.approx(25.0)


def test_evaluate_averages_per_sample_by_hand():
    from dnas.data import ImageDataset
    from dnas.evaluate.distributed import DistContext
    from dnas.evaluate.train import evaluate
    ds = ImageDataset("c", torch.full((4, 1, 1, 1), 255, dtype=torch.uint8), torch.tensor([0, 1, 1, 1]), 2,
                      (0.0,), (1.0,), 0, False)
    m = _TwoHeads([1.0, 0.0], [0.0, 0.0])
    out = evaluate(m, BatchLoader(ds, None, 3, augment=False, shuffle=False), DistContext())
    l0, l1 = math.log(1 + math.exp(-1)), math.log(1 + math.e)
    assert out["loss"] == pytest.approx((l0 + 3 * l1) / 4) and out["acc"] == pytest.approx(25.0)


def test_drop_path_rescales_survivors():
    from dnas.evaluate.darts_net import drop_path
    torch.manual_seed(0)
    y = drop_path(torch.ones(4000, 2, 1, 1), 0.25)
    assert y.unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert (y[:, 0] == y[:, 1]).all()  # whole samples
    assert 0.22 < float((y[:, 0, 0, 0] == 0).float().mean()) < 0.28


def test_lr_schedule_with_lr_min_and_drop_path_ramp_and_eval_every(tmp_path):
    cfg = make_config("nb201", NB201_ARCH, epochs=4, lr=0.1, lr_min=0.01)
    assert [round(lr_at(cfg, e), 6) for e in range(4)] == [0.1, 0.086820, 0.055, 0.023180]
    cfg = make_config("darts", DARTS_G, "synthetic", **{**TINY_DARTS, "epochs": 3, "eval_every": 2})
    train_network(cfg, tmp_path / "r")
    rows = _metrics(tmp_path / "r")
    assert [r["drop_path"] for r in rows] == pytest.approx([0.0, 0.1, 0.2])  # 0.3 * epoch / 3
    assert ["test_acc" in r for r in rows] == [False, True, True]  # epoch 1 (every 2nd) and the last
    opt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert (opt["lr"], opt["momentum"], opt["nesterov"], opt["weight_decay"]) == (lr_at(cfg, 2), 0.9, False, 3e-4)


def test_presets_every_field():
    """Each preset field as the module docstring states it (DARTS: darts-pt's eval-c100/svhn.sh for S1-S4)."""
    nb = preset("nb201", "cifar10")
    assert nb == dict(epochs=200, batch_size=256, lr=0.1, lr_min=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4,
                      grad_clip=0.0, channels=16, layers=5, auxiliary_weight=0.0, drop_path=0.0, cutout=0)
    d = dict(epochs=600, batch_size=96, lr=0.025, lr_min=0.0, momentum=0.9, nesterov=False, weight_decay=3e-4,
             grad_clip=5.0, channels=36, layers=20, auxiliary_weight=0.4, drop_path=0.2, cutout=16)
    assert preset("darts", "cifar10") == d == preset("s1", "cifar10")
    for space in ("s1", "s2", "s3", "s4"):
        for data in ("cifar100", "svhn"):
            assert preset(space, data) == {**d, "channels": 16, "layers": 8}, (space, data)
    assert preset("darts", "svhn") == d  # cutout on SVHN too (a CIFAR-type 32 px set)


def test_a_diverging_training_stops_before_reporting_an_accuracy(tmp_path):
    # lr 1e6 without clipping: NaN weights/BN statistics used to give test_acc ~ 1/num_classes (argmax of NaN
    # logits) in result.json and metrics.jsonl, reported as the architecture's accuracy.
    cfg = make_config("nb201", NB201_ARCH, "synthetic", **{**TINY_NB201, "resolution": 8, "lr": 1e6, "lr_min": 0.0,
                                                          "grad_clip": 0.0, "epochs": 3})
    with pytest.raises(DnasError, match=r"training diverged in epoch \d \(non-finite (train_loss|test_loss|weights)"):
        train_network(cfg, tmp_path / "t")
    assert not (tmp_path / "t" / "result.json").exists()
    for r in _metrics(tmp_path / "t") if (tmp_path / "t" / "metrics.jsonl").exists() else []:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"])


def test_force_keeps_the_old_run_when_the_network_cannot_be_built(tmp_path, monkeypatch):
    # --force used to clear --out before the network was built: a model that cannot be made (out of
    # memory at a huge --channels, say) cost the finished run it was meant to replace.
    import dnas.evaluate.train as train_mod

    out = tmp_path / "t"
    cfg = make_config("nb201", NB201_ARCH, "synthetic", **TINY_NB201)
    train_network(cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def no_memory(*a, **k):
        raise DnasError("cannot allocate the network")

    monkeypatch.setattr(train_mod, "build_network", no_memory)
    with pytest.raises(DnasError, match="cannot allocate"):
        train_network(make_config("nb201", NB201_ARCH, "synthetic", **{**TINY_NB201, "epochs": 3}), out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_ddp_looks_for_unused_parameters_exactly_when_an_nb201_genotype_has_some():
    """DDP's find_unused_parameters: asked for when some parameter gets no gradient (else DDP errors), and only
    then (else a warning from every rank and a graph traversal per step). Checked against a backward pass for
    every pattern of none / parameter-free / parametrised op over the six edges."""
    from itertools import product

    from dnas.evaluate.train import _may_leave_parameters_unused
    from dnas.spaces import Nb201Genotype
    from dnas.supernet import Nb201Network
    torch.manual_seed(0)
    x = torch.randn(2, 1, 4, 4)
    seen = set()
    for ops in product(("none", "skip_connect", "nor_conv_1x1"), repeat=6):
        genotype = Nb201Genotype(ops)
        net = Nb201Network(genotype, channels=1, cells_per_stage=1, num_classes=2, in_channels=1)
        net(x).sum().backward()
        unused = any(p.grad is None for p in net.parameters())
        assert _may_leave_parameters_unused("nb201", genotype) == unused, genotype
        seen.add(unused)
    assert seen == {True, False}
