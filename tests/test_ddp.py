"""The DDP path on CPU: 2 Gloo processes (as torchrun would start them) against one process."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from dnas.data import BatchLoader, load_dataset
from dnas.errors import DnasError
from dnas.evaluate import make_config, train_network
from dnas.evaluate.distributed import DistContext, init_distributed, shutdown_distributed
from dnas.evaluate import train as train_mod
from dnas.evaluate.train import train_one_epoch

GLOBAL_BATCH = 16
ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
ALL_USED = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"  # no idle weight
# S4: cell input 0 is read only by a noise edge, whose output ignores its input, so that input's
# preprocessing gets no gradient (DDP must be told to look for unused parameters).
S4_NOISE = ("Genotype(normal=[('noise', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), "
            "('sep_conv_3x3', 2), ('sep_conv_3x3', 3), ('sep_conv_3x3', 3), ('sep_conv_3x3', 4)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 2), ('sep_conv_3x3', 2), ('sep_conv_3x3', 3), ('sep_conv_3x3', 3), "
            "('sep_conv_3x3', 4)], reduce_concat=[2, 3, 4, 5])")


def _tiny_net() -> nn.Module:
    # No BatchNorm: with BN each rank normalises its own half-batch, so DDP differs from one big batch.
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 10))


def _two_steps(ctx: DistContext) -> dict:
    """Two SGD steps on the global batches of epoch 0, each rank taking its share."""
    torch.manual_seed(0)
    net = _tiny_net()
    model = nn.parallel.DistributedDataParallel(net) if ctx.distributed else net
    data = load_dataset("synthetic", "train", subset=64, seed=0)
    loader = BatchLoader(data, None, GLOBAL_BATCH // ctx.world_size, augment=True, seed=0, rank=ctx.rank,
                         world_size=ctx.world_size)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    batches = loader.epoch(0)
    first = train_one_epoch(model, itertools.islice(batches, 1), opt, ctx)
    second = train_one_epoch(model, itertools.islice(batches, 1), opt, ctx)  # the loss after one step
    return {"loss1": first["loss"], "loss2": second["loss"], "state": {k: v.clone() for k, v in net.state_dict().items()}}


def _join(rank: int, world: int, port: int):
    """This spawned process as rank ``rank`` of a local gloo group of ``world``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return init_distributed("cpu")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    ctx = _join(rank, world, port)
    try:
        assert ctx.world_size == world and ctx.rank == rank
        steps = _two_steps(ctx)
        if ctx.is_main:
            torch.save(steps, Path(out) / "ddp_steps.pt")
        # 16 images of 16x16 per rank: the size at which this CPU's 1x1 conv hands DDP a gradient with other
        # strides on its size-1 dims (DDP warns once per process: the first network it trains here)
        wide = make_config("nb201", ARCH, "synthetic", epochs=1, channels=4, layers=1, batch_size=32, subset=32,
                           test_subset=10, resolution=16, quiet=True, device="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_network(wide, Path(out) / "wide", ctx=ctx)
        (Path(out) / f"warnings_rank{rank}.json").write_text(json.dumps([str(w.message) for w in caught]))
        cfg = make_config("nb201", ARCH, "synthetic", epochs=1, channels=4, layers=1, batch_size=GLOBAL_BATCH,
                          subset=32, test_subset=30, quiet=True, device="cpu")
        result = train_network(cfg, Path(out) / "run", ctx=ctx)
        (Path(out) / f"result_rank{rank}.json").write_text(json.dumps(result))
        # --force over an old run: every rank takes part when rank 0 clears it, after the first epoch
        train_network(cfg, Path(out) / "forced", ctx=ctx)
        train_network(dataclasses.replace(cfg, seed=1), Path(out) / "forced", force=True, ctx=ctx)
        s4 = make_config("s4", S4_NOISE, "synthetic", epochs=1, channels=4, layers=3, batch_size=GLOBAL_BATCH,
                         subset=32, test_subset=20, resolution=16, drop_path=0.0, quiet=True, device="cpu")
        train_network(s4, Path(out) / "s4", ctx=ctx)  # two steps per rank: fails if DDP expects every gradient
        # One test image for two processes: rank 1 scores none (its empty shard used to fail on rank 1 alone).
        # The genotype leaves no parameter unused: DDP runs without looking for unused ones.
        one = make_config("nb201", ALL_USED, "synthetic", epochs=1, channels=4, layers=1, batch_size=GLOBAL_BATCH,
                          subset=32, test_subset=10, quiet=True, device="cpu")
        train_set, test_set = train_mod._data(one)
        test_set = dataclasses.replace(test_set, images=test_set.images[:1], labels=test_set.labels[:1])
        result = train_mod._train(one, Path(out) / "one", ctx, train_set, test_set, resume=False, force=False,
                                  callback=None)
        (Path(out) / f"one_rank{rank}.json").write_text(json.dumps(result))
    finally:
        shutdown_distributed(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp_steps.pt", weights_only=False)
    single = _two_steps(DistContext())
    assert ddp["loss1"] == pytest.approx(single["loss1"], rel=1e-5, abs=1e-6)
    assert ddp["loss2"] == pytest.approx(single["loss2"], rel=1e-5, abs=1e-6)
    for k, v in single["state"].items():
        assert torch.allclose(ddp["state"][k], v, atol=1e-5), k

    # The whole training path under DDP: both ranks finish with the same result, only rank 0 wrote files.
    results = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["world_size"] == 2 and results[0]["test_acc"] == results[1]["test_acc"]
    run = tmp_path / "run"
    assert json.loads((run / "result.json").read_text())["test_acc"] == results[0]["test_acc"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # Channels-last activations give a 1x1 conv's weight gradient other strides on its size-1 dims than DDP's
    # bucket: DDP's "Grad strides do not match bucket view strides" warning (one per process) is a false alarm.
    for r in range(2):
        assert not [w for w in json.loads((tmp_path / f"warnings_rank{r}.json").read_text()) if "Grad strides" in w]
    assert len(torch.load(run / "checkpoint.pt", weights_only=False)["rank_rng"]) == 2
    assert json.loads((tmp_path / "s4" / "result.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "forced" / "config.json").read_text())["seed"] == 1
    assert len((tmp_path / "forced" / "metrics.jsonl").read_text().splitlines()) == 1
    one = [json.loads((tmp_path / f"one_rank{r}.json").read_text()) for r in range(2)]
    assert one[0]["test_acc"] == one[1]["test_acc"] in (0.0, 100.0)  # one image, counted once


def test_single_process_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.sum([1.0, 2.0]) == [1.0, 2.0] and ctx.gather("x") == ["x"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DnasError, match="WORLD_SIZE is set but RANK is not"):
        init_distributed("cpu")


def test_more_local_ranks_than_gpus_is_one_line(monkeypatch):
    # torchrun --nproc_per_node 4 on a 2-GPU machine: rank 2 used to die in torch.cuda.set_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    for var, value in (("WORLD_SIZE", "4"), ("RANK", "2"), ("LOCAL_RANK", "2")):
        monkeypatch.setenv(var, value)
    with pytest.raises(DnasError, match=r"local rank 2 but this machine has 2 GPU\(s\)"):
        init_distributed("cuda")
    # torchrun says how many it started here: every rank refuses alike, local rank 0 (the one that prints) too
    for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "4")):
        monkeypatch.setenv(var, value)
    with pytest.raises(DnasError, match=r"torchrun started 4 processes on this machine, which has 2 GPU\(s\)"):
        init_distributed("cuda")


def _locked_worker(rank: int, world: int, port: int, out: str) -> None:
    ctx = _join(rank, world, port)
    try:
        cfg = make_config("nb201", ARCH, "synthetic", epochs=1, channels=4, layers=1, batch_size=GLOBAL_BATCH,
                          subset=32, test_subset=30, quiet=True, device="cpu")
        try:
            train_network(cfg, Path(out) / "run", ctx=ctx)
            outcome = "trained"
        except Exception as e:  # noqa: BLE001 - the test compares what each rank saw
            outcome = f"{type(e).__name__}: {e}"
        (Path(out) / f"outcome{rank}.txt").write_text(outcome)
    finally:
        shutdown_distributed(ctx)


def test_every_rank_is_refused_an_out_dir_in_use(tmp_path):
    """Only rank 0 takes the run's lock; when another command holds it, every rank must get the same one-line
    DnasError (not rank 0 alone, leaving the others in a collective: a gloo traceback, or an NCCL hang)."""
    from dnas.rundir import run_lock
    with run_lock(tmp_path / "run"):
        mp.spawn(_locked_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        outcome = (tmp_path / f"outcome{rank}.txt").read_text()
        assert outcome.startswith("DnasError:") and "in use by another dnas command" in outcome, (rank, outcome)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {".lock"}


def _as_rank(monkeypatch, local_rank: int, world: int = 2) -> None:
    """The environment torchrun gives local rank ``local_rank`` of ``world`` processes on one machine."""
    for var, value in (("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", world), ("RANK", local_rank),
                       ("LOCAL_RANK", local_rank)):
        monkeypatch.setenv(var, str(value))


@pytest.mark.parametrize("argv, needle", [
    (["train", "--space", "nb201", "--arch", ARCH, "--out", "{tmp}/t", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--space", "nb201", "--arch", ARCH, "--out", "{tmp}/t", "--bogus"], "unrecognized arguments: --bogus"),
    (["search", "--out", "{tmp}/s", "--dataset", "synthetic"], "only `dnas train` runs under torchrun"),
    (["reproduce", "smoke", "--out", "{tmp}/r"], "only `dnas train` runs under torchrun"),
])
def test_under_torchrun_bad_input_is_one_line_per_machine(tmp_path, capsys, monkeypatch, argv, needle):
    """Every process torchrun starts fails alike on bad input: local rank 0 says so, the others exit 2 silently
    (K identical lines before). Other commands than train are refused (K searches raced on one run directory)."""
    from dnas.cli import main
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    for rank in (0, 1):
        _as_rank(monkeypatch, rank)
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (rank, err)
        assert err.splitlines() == ([err.strip()] if rank == 0 else []) and (needle in err) == (rank == 0), (rank, err)
    assert not any(tmp_path.iterdir())


def test_torchrun_bad_option_prints_one_line(tmp_path):
    """What a user sees: `torchrun --nproc_per_node 2 -m dnas train ... --epochs 0` prints dnas's error once."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(_free_port()), "-m", "dnas", "train", "--space", "nb201", "--arch", ARCH,
                           "--dataset", "synthetic", "--out", str(tmp_path / "t"), "--epochs", "0"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "dnas: error" in ln]
    assert lines == ["dnas: error: --epochs must be >= 1, got 0"], proc.stderr[-3000:]
    assert proc.returncode != 0 and not (tmp_path / "t").exists()


@pytest.mark.parametrize("env, says", [
    ({}, True),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "2"}, True),  # rank 0 of machine 2
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1", "RANK": "1"}, False),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "1", "RANK": "1"}, True),  # another launcher: every rank says it
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "two", "LOCAL_RANK": "1"}, True),  # a bad variable: say it
])
def test_which_processes_print_the_cli_errors(monkeypatch, env, says):
    from dnas.launch import reports_errors
    for var in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert reports_errors() is says
