"""Bad input: one line on stderr naming the problem, exit code 2, nothing written or destroyed."""
import dataclasses
import json
import subprocess
import sys

import pytest

from dnas.cli import main


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


TINY = ["--dataset", "synthetic", "--epochs", "1", "--channels", "4", "--cells", "1", "--quiet"]
NB201_ARCH = "|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|avg_pool_3x3~0|skip_connect~1|avg_pool_3x3~2|"
TRAIN_NB201 = ["train", "--space", "nb201", "--arch", NB201_ARCH, "--dataset", "synthetic", "--out", "{tmp}/a"]
DARTS_ARCH = ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
              "('sep_conv_3x3', 2), ('skip_connect', 1), ('skip_connect', 1), ('skip_connect', 3)], "
              "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('skip_connect', 2), "
              "('sep_conv_3x3', 1), ('skip_connect', 3), ('skip_connect', 1), ('skip_connect', 1), "
              "('sep_conv_3x3', 0)], reduce_concat=[2, 3, 4, 5])")


@pytest.mark.parametrize("args, needle", [
    (["search", "--out", "{tmp}/a", "--space", "nb301"], "unknown space"),
    (["search", "--out", "{tmp}/a", "--dataset", "mnist"], "unknown dataset"),
    (["search", "--out", "{tmp}/a", "--mode", "darts3"], "unknown mode"),
    (["search", "--out", "{tmp}/a", "--channels", "0"], "channels"),
    (["search", "--out", "{tmp}/a", "--space", "darts", "--cells", "2"], "at least 3 cells"),
    (["search", "--out", "{tmp}/a", "--resolution", "2"], "resolution"),
    (["search", "--out", "{tmp}/a", "--dataset", "cifar10", "--data-dir", "{tmp}/nowhere"], "cifar10"),
    (["search", "--out", "{tmp}/a", "--epochs", "x"], "invalid int"),
    (["search", "--out", "{tmp}/a", "--activation", "relu"], "unknown activation"),
    (["search", "--out", "{tmp}/a", "--device", "tpu"], "unknown device"),
    (["select", "--method", "zeros", "--space", "nb201", "--option", "device=5"], "unknown device 5"),  # not a str
    (["search", "--out", "{tmp}/a", "--subset", "5"], "subset"),
    (["search", "--out", "{tmp}/a", "--resolution", "10"], "multiple of 4"),
    (["search", "--out", "{tmp}/a", "--option", "bogus=1"], "--option bogus: not used by mode darts1"),
    (["search", "--out", "{tmp}/a", "--option", "=1"], "--option expects KEY=VALUE"),  # one parser for both commands
    (["select", "--method", "zeros", "--space", "nb201", "--option", "rounds"], "--option expects KEY=VALUE"),
    (["search", "--out", "{tmp}/a", "--mode", "prime", "--option", "admm_freq=5"], "admm_freq: not used"),
    (["search", "--out", "{tmp}/file.txt"], "is a file, not a run directory"),
    ([*TRAIN_NB201, "--layers", "0"], "--layers must be >= 1"),
    ([*TRAIN_NB201, "--channels", "0"], "--channels and --layers must be >= 1"),
    (["train", "--space", "darts", "--arch", DARTS_ARCH, "--dataset", "synthetic", "--out", "{tmp}/a",
      "--channels", "5"], "even channel count"),
    (["train", "--space", "darts", "--arch", DARTS_ARCH, "--dataset", "synthetic", "--out", "{tmp}/a",
      "--auxiliary-weight", "0.4"], "auxiliary head needs 32, 36 or 40 px"),
    (["train", "--space", "nb201", "--arch", NB201_ARCH, "--dataset", "synthetic", "--out", "{tmp}/file.txt"],
     "is a file"),
    (["reproduce", "smoke", "--out", "{tmp}/file.txt"], "is not a directory"),
    # checked before anything is written, not by every job failing on it
    (["reproduce", "smoke", "--out", "{tmp}/a", "--device", "bogus", "--quiet"], "unknown device 'bogus'"),
    (["analyze", "genotype", "--space", "nb201", NB201_ARCH, "--out", "{tmp}/file.txt/cell.png"], "file.txt"),
    (["analyze", "genotype", "--space", "nb201", NB201_ARCH, "--out", "{tmp}/cell.txt"], "cannot write a figure as .txt"),
    ([*TRAIN_NB201, "--momentum", "-1"], "--momentum must be in [0, 1)"),
    ([*TRAIN_NB201, "--lr", "nan"], "--lr must be a finite number"),
    ([*TRAIN_NB201, "--grad-clip", "inf"], "--grad-clip must be a finite number"),
    (["search", "--out", "{tmp}/a", "--lr", "0"], "--lr must be a finite number > 0"),
    (["search", "--out", "{tmp}/a", "--arch-lr", "nan"], "--arch-lr must be a finite number > 0"),
    (["search", "--out", "{tmp}/a", "--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    # beyond float32: torch's overflow error came mid-step, after the run directory was created
    (["search", "--out", "{tmp}/a", *TINY, "--weight-decay", "1e308"], "--weight-decay must be a finite number"),
    (["search", "--out", "{tmp}/a", *TINY, "--arch-lr", "1e308"], "--arch-lr must be a finite number"),
    ([*TRAIN_NB201, "--epochs", "1", "--channels", "4", "--layers", "1", "--subset", "100", "--lr", "1e308"],
     "--lr must be a finite number"),
    (["search", "--out", "{tmp}/a", "--train-portion", "1"], "train portion must be in (0, 1)"),
    (["search", "--out", "{tmp}/a", "--eval-every", "-1"], "--eval-every must be >= 0"),
    (["search", "--out", "{tmp}/a", "--mode", "prime", "--train-portion", "0.5"], "sets train_portion itself"),
    # a mode with a configure hook (prime, spos) still names the bad flag, not "sets w_lr itself" (NaN != NaN)
    (["search", "--out", "{tmp}/a", "--mode", "prime", "--lr", "nan"], "--lr must be a finite number > 0"),
    (["search", "--out", "{tmp}/a", "--mode", "spos", "--momentum", "nan"], "--momentum must be in [0, 1)"),
    (["--threads", "-3", "search", "--out", "{tmp}/a"], "--threads must be between"),
    # seeds beyond torch's 64-bit generator seeds were a ValueError traceback once the data was loaded
    (["search", "--out", "{tmp}/a", *TINY, "--seed", str(2**64 - 1)], "--seed must be a whole number from -2**63"),
    (["search", "--out", "{tmp}/a", *TINY, "--seed", str(-2**63 - 1)], "--seed must be a whole number from -2**63"),
    ([*TRAIN_NB201, "--epochs", "1", "--channels", "4", "--layers", "1", "--seed", str(2**64)], "--seed must be"),
    (["reproduce", "smoke", "--out", "{tmp}/a", "--seeds", f"0,{2**64}", "--quiet"], "--seeds: each seed must be"),
    (["select", "--method", "zeros", "--space", "nb201", "--option", f"seed={2**64}"], "option seed must be"),
    (["search"], "required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    (tmp_path / "file.txt").write_text("keep me")
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "a").exists()  # nothing written
    assert (tmp_path / "file.txt").read_text() == "keep me"


def test_search_runs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["search", "--out", str(out), *TINY], capsys)
    assert code == 0
    printed = json.loads(stdout.strip().splitlines()[-1])
    assert printed["space"] == "nb201" and printed["genotype"].startswith("|")
    result = json.loads((out / "result.json").read_text())
    assert result["genotype"] == printed["genotype"]
    assert set(result["selections"]) >= {"magnitude"}
    before = (out / "result.json").read_bytes()
    code, _, err = run_cli(["search", "--out", str(out), *TINY], capsys)
    assert code == 2 and "already exists" in err
    assert (out / "result.json").read_bytes() == before
    # --resume of a finished run is a no-op that reprints the result
    code, stdout, _ = run_cli(["search", "--out", str(out), *TINY, "--resume"], capsys)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["genotype"] == printed["genotype"]
    # resuming with different settings is refused
    code, _, err = run_cli(["search", "--out", str(out), *TINY, "--epochs", "3", "--resume"], capsys)
    assert code == 2 and "different settings" in err


def test_train_force_refused_for_a_bad_setting_keeps_the_old_run(tmp_path, capsys):
    out = tmp_path / "t"
    tiny = [*(a.replace("{tmp}/a", str(out)) for a in TRAIN_NB201), "--epochs", "1", "--channels", "4", "--layers",
            "1", "--subset", "100", "--test-subset", "50", "--quiet"]
    assert run_cli(tiny, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # NB201 has no auxiliary head: refused before --force deletes the finished run
    code, _, err = run_cli([*tiny, "--force", "--auxiliary-weight", "0.4"], capsys)
    assert code == 2 and "NB201 networks have no auxiliary head" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["search", "--out", str(out), *TINY], capsys)[0] == 0
    (out / "result.json").unlink()  # unfinished: --resume reads the checkpoint
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["search", "--out", str(out), *TINY, "--resume"], capsys)
    assert code == 2 and "corrupt checkpoint" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_that_does_not_fit_the_run_is_one_line(tmp_path, capsys):
    import torch
    out = tmp_path / "run"
    assert run_cli(["search", "--out", str(out), *TINY], capsys)[0] == 0
    (out / "result.json").unlink()  # unfinished: --resume reads the checkpoint
    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    # an older layout (renamed parameters), then a checkpoint with no search state (a training run's)
    state["searcher"]["model"] = {f"old.{k}": v for k, v in state["searcher"]["model"].items()}
    torch.save(state, ckpt)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for args in (["select", str(out), "--method", "magnitude", "--quiet", "--force"],
                 ["search", "--out", str(out), *TINY, "--resume"]):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and "does not fit the supernet" in err and len(err.strip().splitlines()) == 1, err
    torch.save({"model": {}, "rng": state["rng"]}, ckpt)
    files[ckpt] = ckpt.read_bytes()
    code, _, err = run_cli(["select", str(out), "--method", "magnitude", "--quiet", "--force"], capsys)
    assert code == 2 and "not a search checkpoint" in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dnas", "search", "--out", str(tmp_path / "r"), "--space", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_force_deletes_only_runs_and_only_once_the_new_run_can_start(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(["search", "--out", str(precious), *TINY, "--force"], capsys)
    assert code == 2 and "not a dnas run" in err and (precious / "thesis.tex").exists()
    run = tmp_path / "run"
    assert run_cli(["search", "--out", str(run), *TINY], capsys)[0] == 0
    before = (run / "result.json").read_bytes()
    code, _, err = run_cli(["search", "--out", str(run), "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
                            "--force", "--quiet"], capsys)
    assert code == 2 and (run / "result.json").read_bytes() == before  # the failed start cost nothing
    code, _, err = run_cli(["train", "--space", "nb201", "--arch", NB201_ARCH, "--dataset", "synthetic", "--out",
                            str(run), "--epochs", "1", "--resume"], capsys)
    assert code == 2 and "different kind of run" in err  # train --resume on a search run


def test_torn_metrics_line_and_unfinished_or_interrupted_selections(tmp_path, capsys, stop_search_at):
    run = tmp_path / "run"
    args = ["search", "--out", str(run), *[a if a != "1" else "2" for a in TINY]]
    stop_search_at(1)
    assert run_cli(args, capsys)[0] == 130
    code, _, err = run_cli(["select", str(run), "--method", "ostr"], capsys)
    assert code == 2 and "has not finished" in err  # a selection must not describe a half-trained supernet
    code, _, err = run_cli(["analyze", "ranking", str(run), "--table", str(tmp_path / "t.csv")], capsys)
    assert code == 2 and "has not finished" in err and not (run / "analysis").exists()
    stop_search_at(None)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "train_lo')  # the line an interruption tore
    assert run_cli(args + ["--resume"], capsys)[0] == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    # an interrupted progressive selection is never discarded silently
    (run / "selections").mkdir(exist_ok=True)
    (run / "selections" / "pt.ckpt.pt").write_bytes(b"state")
    code, _, err = run_cli(["select", str(run), "--method", "pt"], capsys)
    assert code == 2 and "--resume to continue it or --force" in err and (run / "selections" / "pt.ckpt.pt").exists()


def test_train_resume_without_checkpoint_redoes_its_metric_lines(tmp_path, capsys):
    out = tmp_path / "t"
    args = ["train", "--space", "nb201", "--arch", NB201_ARCH, "--dataset", "synthetic", "--out", str(out),
            "--epochs", "2", "--channels", "4", "--layers", "1", "--quiet"]
    assert run_cli(args, capsys)[0] == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(lines[0] + "\n")  # killed between the metrics line and the checkpoint
    (out / "checkpoint.pt").unlink()
    (out / "result.json").unlink()
    assert run_cli(args + ["--resume"], capsys)[0] == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_torn_or_garbled_metrics_log_for_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert run_cli(["search", "--out", str(out), *TINY], capsys)[0] == 0
    metrics = out / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"epoch": 1, "train_lo')  # a kill or a full disk mid-append: dropped, as on resume
    code, stdout, err = run_cli(["analyze", "plots", str(out), "--engine", "matplotlib"], capsys)
    assert code == 0, err
    assert (out / "analysis" / "accuracy.png").exists()
    for bad, needle in (("garbage\n" + good, "metrics.jsonl:1: not a JSON line"),
                        ("[1, 2]\n" + good, "metrics.jsonl:1: not a JSON object")):
        metrics.write_text(bad)
        code, _, err = run_cli(["analyze", "plots", str(out), "--engine", "matplotlib"], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    metrics.write_bytes(b"\xff\xfe" + good.encode())
    code, _, err = run_cli(["analyze", "plots", str(out), "--engine", "matplotlib"], capsys)
    assert code == 2 and "not a JSON-lines file" in err and len(err.strip().splitlines()) == 1, err



def test_bad_threads_variable_and_bad_table_fail_up_front(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DNAS_THREADS", "abc")
    code, _, err = run_cli(["search", "--out", str(tmp_path / "a"), *TINY], capsys)
    assert code == 2 and "DNAS_THREADS must be a whole number" in err
    monkeypatch.delenv("DNAS_THREADS")
    bad = tmp_path / "table.csv"
    bad.write_text("arch,cifar10_test\n|bogus|,1\n")
    monkeypatch.setenv("DNAS_NB201_TABLE", str(bad))
    code, _, err = run_cli(["search", "--out", str(tmp_path / "a"), *TINY], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


def test_search_cli_exposes_the_optimiser_and_split_settings():
    """The search recipe's hyper-parameters (method notes §0.4) can be set from the command line; unset
    ones keep the mode's paper defaults."""
    from dnas.cli import build_parser
    from dnas.cli.search_cmd import config_from_args

    parse = build_parser().parse_args
    cfg = config_from_args(parse(["search", "--out", "x"]))
    assert (cfg.w_lr, cfg.w_lr_min, cfg.w_momentum, cfg.w_nesterov, cfg.w_wd, cfg.grad_clip, cfg.arch_lr,
            cfg.arch_wd, cfg.train_portion, cfg.eval_every) == (0.025, 0.001, 0.9, False, 3e-4, 5.0, 3e-4, 1e-3,
                                                                0.5, 1)
    cfg = config_from_args(parse(["search", "--out", "x", "--lr", "0.05", "--lr-min", "0", "--momentum", "0.8",
                                  "--nesterov", "--weight-decay", "1e-4", "--grad-clip", "0", "--arch-lr", "6e-4",
                                  "--arch-weight-decay", "0", "--train-portion", "0.8", "--eval-every", "0"]))
    assert (cfg.w_lr, cfg.w_lr_min, cfg.w_momentum, cfg.w_nesterov, cfg.w_wd, cfg.grad_clip, cfg.arch_lr,
            cfg.arch_wd, cfg.train_portion, cfg.eval_every) == (0.05, 0.0, 0.8, True, 1e-4, 0.0, 6e-4, 0.0, 0.8, 0)
    cfg = config_from_args(parse(["search", "--out", "x", "--mode", "spos", "--lr", "0.2"]))
    assert cfg.w_lr == 0.2 and cfg.w_nesterov  # the user's value over SPOS's, SPOS's others kept
    cfg = config_from_args(parse(["search", "--out", "x", "--mode", "prime", "--option", "prime_split=false",
                                  "--train-portion", "0.7"]))
    assert cfg.train_portion == 0.7


def test_every_option_with_a_default_names_it_in_its_help():
    """The README sends users to --help for the defaults (`dnas search --help` lists each option's default)."""
    import argparse

    from dnas.cli import build_parser

    def unnamed(parser, prog):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from unnamed(sub, f"{prog} {name}")
            elif a.option_strings and not isinstance(a.default, bool) and a.default not in (None, "", [],
                                                                                         argparse.SUPPRESS):
                text = a.help or ""  # flags (False), optional values (None) and lists of repeats name none
                if "default" not in text or str(a.default) not in text:
                    yield f"{prog} {a.option_strings[-1]} (default {a.default!r}): {text!r}"

    assert list(unnamed(build_parser(), "dnas")) == []


def test_os_errors_name_the_file_and_keep_what_was_written(tmp_path, capsys, monkeypatch):
    """A full disk or a read-only folder: one line naming the file that could not be written (not a
    temporary file, not no file at all), exit 2, and the files already there unchanged."""
    import errno
    import os

    import dnas.io as dio
    from dnas.search import SearchConfig, run_search
    run = tmp_path / "r"
    run_search(SearchConfig(space="nb201", dataset="synthetic", resolution=8, subset=64, channels=4, cells=1,
                            epochs=1, batch_size=32, out=str(run)), quiet=True)
    files = lambda: {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".lock"}  # noqa: E731
    before = files()
    target = run / "selections" / "magnitude.json"

    def fail(code):
        def raise_(*a, **k):
            raise OSError(code, os.strerror(code))
        return raise_

    for what, code in (("fsync", errno.ENOSPC), ("mkstemp", errno.EROFS)):
        with monkeypatch.context() as m:
            m.setattr(dio.os if what == "fsync" else dio.tempfile, what, fail(code))
            assert main(["select", str(run), "--method", "magnitude", "--quiet", "--force"]) == 2
        err = capsys.readouterr().err
        assert err == f"dnas: error: {target}: {os.strerror(code)}\n"
        assert files() == before

    class FullFile:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dio, "open", FullFile, raising=False)
    with pytest.raises(OSError, match="No space left") as e:
        dio.append_jsonl(run / "metrics.jsonl", {"epoch": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(run / "metrics.jsonl")


def test_a_run_saved_with_a_numbered_gpu_on_a_machine_without_it(tmp_path, capsys, monkeypatch):
    """A search run on GPU 1 (``--device cuda:1``, kept in config.json), selected or resumed on a machine with
    no GPU, or with one: one line naming the device (pass --device), not a traceback from deep inside torch."""
    import torch

    run = tmp_path / "run"
    assert run_cli(["search", "--out", str(run), *TINY, "--device", "cpu"], capsys)[0] == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["device"] = "cuda:1"
    (run / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(["select", str(run), "--method", "magnitude", "--force"], capsys)
    assert code == 2 and "cuda:1" in err and "no CUDA device" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, err = run_cli(["select", str(run), "--method", "magnitude", "--force"], capsys)
    assert code == 2 and "cuda:1" in err and "1 CUDA device" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["search", "--out", str(tmp_path / "b"), *TINY, "--device", "cuda:x"], capsys)
    assert code == 2 and "unknown device" in err
    assert run_cli(["select", str(run), "--method", "magnitude", "--device", "cpu", "--force"], capsys)[0] == 0

def test_run_files_that_are_json_but_not_objects(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["search", "--out", str(out), *TINY], capsys)[0] == 0
    train = ["train", "--run", str(out), "--out", str(tmp_path / "t"), "--quiet"]
    ops = ["analyze", "ops", str(out), "--table", str(tmp_path / "none.csv"), "--no-plot"]
    plots = ["analyze", "plots", str(out)]
    originals = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cases = [("config.json", "[]", train, "config.json: not a dnas run configuration"),
             ("result.json", "[]", train, "result.json: not a dnas result"),
             ("result.json", '{"space": "nb201", "selections": ["magnitude"]}', [*train, "--selection", "magnitude"],
              "selections must be a JSON object"),
             ("config.json", "[]", ops, "config.json: not a dnas run configuration"),
             ("config.json", "{}", ops, "config.json: not a dnas run configuration"),
             ("config.json", "null", plots, "config.json: not a dnas run configuration"),
             ("selections/magnitude.json", '{"method": "magnitude", "scores": "x"}', ops, "scores must be a JSON object")]
    for name, text, args, needle in cases:
        for p, data in originals.items():
            p.write_bytes(data)
        (out / name).write_text(text)
        files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        code, _, err = run_cli(args, capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (name, text, err)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
        assert not (tmp_path / "t").exists()


# torch's CPU allocator raises a plain RuntimeError; CUDA raises torch.OutOfMemoryError; numpy a MemoryError.
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")


def _oom(exc):
    def raise_(*a, **k):
        raise exc
    return raise_


def test_out_of_memory_is_one_line_naming_the_sizes_and_keeps_the_old_run(tmp_path, capsys, monkeypatch):
    """A size too large for the machine (no upper limit on --channels, --batch-size, --resolution...): one line
    naming what was being built or run, its sizes and the options to lower, exit 2; and --force clears nothing
    when the failure could be found before it (data, model build, moving and running the network once)."""
    import torch

    import dnas.evaluate.train as train_mod
    import dnas.search.run as search_mod
    from dnas.search import Searcher
    from dnas.select import run as select_run

    run = tmp_path / "run"
    assert run_cli(["search", "--out", str(run), *TINY], capsys)[0] == 0
    files = lambda d: {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.suffix != ".lock"}  # noqa: E731
    before = files(run)

    def one_line(args, *needles):
        code, out, err = run_cli(args, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("dnas: error: out of memory") and all(n in err for n in needles), err
        return err

    with monkeypatch.context() as m:
        m.setattr(search_mod, "build_supernet", _oom(RuntimeError(CPU_OOM)))
        one_line(["search", "--out", str(run), *TINY, "--channels", "100000", "--force"], "building the supernet",
                 "channels 100000", "batch 64", "resolution 8", "could not allocate 40 GB", "lower --channels")
    assert files(run) == before
    with monkeypatch.context() as m:
        cuda_oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        m.setattr(Searcher, "train_epoch", _oom(cuda_oom))
        one_line(["search", "--out", str(tmp_path / "b"), *TINY, "--batch-size", "4096"], "training the supernet",
                 "batch 4096", "could not allocate 2.00 GiB", "--batch-size")
    with monkeypatch.context() as m:
        real = select_run.METHODS["magnitude"]
        m.setitem(select_run.METHODS, "magnitude", dataclasses.replace(real, fn=_oom(MemoryError())))
        one_line(["select", str(run), "--method", "magnitude", "--quiet", "--force"], "selecting with magnitude",
                 "eval_batch_size")
    assert files(run) == before

    # train: the network is moved to the device and run once (the FLOP count) before --force clears the old run
    t = tmp_path / "t"
    tiny = [*(a.replace("{tmp}/a", str(t)) for a in TRAIN_NB201), "--epochs", "1", "--channels", "4", "--layers",
            "1", "--subset", "100", "--test-subset", "50", "--quiet"]
    assert run_cli(tiny, capsys)[0] == 0
    trained = files(t)
    with monkeypatch.context() as m:
        m.setattr(train_mod, "count_flops", _oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")))
        one_line([*tiny, "--force", "--channels", "64"], "building the network", "channels 64", "--layers")
    assert files(t) == trained
    with monkeypatch.context() as m:
        m.setattr(train_mod, "train_one_epoch", _oom(RuntimeError(CPU_OOM)))
        one_line([*tiny, "--out", str(tmp_path / "t2"), "--batch-size", "50"], "training the network", "batch 50")

    # data: held in memory at --resolution; anything else: still one line, naming the command
    import dnas.data.load as load_mod
    with monkeypatch.context() as m:
        m.setattr(load_mod, "load_synthetic_split", _oom(RuntimeError(CPU_OOM)))
        one_line(["search", "--out", str(run), *TINY, "--resolution", "4000", "--force"], "loading the train split",
                 "resolution 4000", "--resolution or --subset")
    assert files(run) == before
    import dnas.evaluate.query as query_mod
    with monkeypatch.context() as m:
        m.setattr(query_mod, "query_architecture", _oom(MemoryError()))
        one_line(["query", "--space", "nb201", "--arch", NB201_ARCH], "in dnas query")


@pytest.mark.parametrize("command", ["search", "train"])
def test_force_keeps_the_old_run_until_the_first_epoch_has_run(tmp_path, capsys, command):
    """--force clears an old run only once the new run's first epoch has finished: running out of memory in its
    first training step, or Ctrl-C during it, leaves every file of the old run as it was (it used to be deleted
    before the first step); a start that succeeds replaces the old run entirely."""
    import torch

    import dnas.evaluate.train as train_mod
    from dnas.search import Searcher

    out = tmp_path / "run"
    if command == "search":
        args, target, step = ["search", "--out", str(out), *TINY], Searcher, "train_epoch"
    else:
        args = [*(a.replace("{tmp}/a", str(out)) for a in TRAIN_NB201), "--epochs", "1", "--channels", "4",
                "--layers", "1", "--subset", "100", "--test-subset", "50", "--quiet"]
        target, step = train_mod, "train_one_epoch"
    assert run_cli(args, capsys)[0] == 0
    files = lambda: {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"}  # noqa: E731
    before = files()
    for exc, code in ((torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 2),
                      (KeyboardInterrupt(), 130)):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(target, step, _oom(exc))
            code_now, _, err = run_cli([*args, "--seed", "1", "--force"], capsys)
        assert code_now == code and files() == before, exc
        if code == 130:  # not "resume with --resume", which would continue the old run (or refuse the new settings)
            assert err.strip() == (f"dnas: interrupted ({out} still holds its old run; run the same command to "
                                   "start over)")
    assert run_cli([*args, "--seed", "1", "--force"], capsys)[0] == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0]


def test_parse_options_keeps_config_json_standard(capsys):
    """--option values end up in config.json, which is standard JSON: 1e999 (inf) is refused, NaN and Infinity
    are not numbers."""
    from dnas.cli import parse_options
    assert parse_options(["a=NaN", "b=-Infinity", "c=0.5", "d=null"]) == {"a": "NaN", "b": "-Infinity", "c": 0.5,
                                                                         "d": None}
    code, _, err = run_cli(["select", "--method", "zeros", "--space", "nb201", "--option", "rounds=1e999"], capsys)
    assert code == 2 and "--option rounds: 1e999 is beyond the range of a float" in err


def test_every_json_writer_writes_standard_json(tmp_path):
    """One writer (dnas.io.to_json) for every JSON file and stdout line: NaN/inf as null, never bare NaN."""
    import math
    from pathlib import Path

    import numpy as np

    import dnas
    from dnas.io import append_jsonl, atomic_write_json, read_json, read_jsonl
    from dnas.rundir import truncate_metrics

    src = Path(dnas.__file__).parent
    raw = [str(p.relative_to(src)) for p in src.rglob("*.py") if "json.dump" in p.read_text() and p.name != "io.py"]
    assert raw == []
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))  # noqa: E731
    atomic_write_json(tmp_path / "a.json", {"x": [math.nan, math.inf, -math.inf, np.float32(0.5), 1]})
    assert strict((tmp_path / "a.json").read_text()) == {"x": [None, None, None, 0.5, 1]}
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "loss": NaN}\n{"epoch": 1, "loss": 1.0}\n')  # an old file
    assert math.isnan(next(read_jsonl(tmp_path / "metrics.jsonl"))["loss"])  # still reads
    append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 2, "loss": math.inf})
    truncate_metrics(tmp_path, 3)  # rewrites the old lines too
    assert [strict(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [None, 1.0,
                                                                                                       None]
    (tmp_path / "old.json").write_text('{"s": [NaN, Infinity]}')
    assert [math.isnan(read_json(tmp_path / "old.json")["s"][0]), read_json(tmp_path / "old.json")["s"][1]] == [
        True, math.inf]


def _files(run):
    """Every file of a run but the lock files (empty, made by whoever takes a lock), with its bytes."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def test_resume_of_finished_work_changes_nothing(tmp_path, capsys):
    """search / select / train --resume on work that has finished: one stderr line saying so, the usual JSON
    line, exit 0, and not a byte changes (the search used to redo its magnitude selection: new cost and time)."""
    run, trained = tmp_path / "run", tmp_path / "t"
    assert run_cli(["search", "--out", str(run), *TINY, "--select", "ostr"], capsys)[0] == 0
    train = [*(a.replace("{tmp}/a", str(trained)) for a in TRAIN_NB201), "--epochs", "1", "--channels", "4",
             "--layers", "1", "--subset", "100", "--test-subset", "50", "--quiet"]
    assert run_cli(train, capsys)[0] == 0
    before = {**_files(run), **_files(trained)}
    import torch  # what float32 results also depend on (README, Seeds): recorded with each result

    from dnas.supernet import native
    kernels = native.status()
    assert kernels in ("on", "off")  # the search trained the fast supernet on the CPU (this process, so far)
    for d in (run, trained):
        assert json.loads((d / "result.json").read_text())["environment"] == {
            "torch": torch.__version__, "threads": torch.get_num_threads(), "native_kernels": kernels}
    for args, what in ((["search", "--out", str(run), *TINY, "--resume"], "the search"),
                       (["search", "--out", str(run), *TINY, "--select", "ostr", "--resume"], "the search"),
                       (["select", str(run), "--method", "magnitude", "--resume"], "selection magnitude"),
                       (["select", str(run), "--method", "ostr", "--resume", "--quiet"], "selection ostr"),
                       ([*train, "--resume"], "the training")):
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert {**_files(run), **_files(trained)} == before, args
        assert err.strip() == f"dnas: {run if args[0] != 'train' else trained}: {what}" + \
            (" (with these options)" if args[0] == "select" else "") + " has already finished; nothing to resume"
        assert json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A finished search and a finished training, copied by each test that edits them."""
    base = tmp_path_factory.mktemp("runs")
    assert main(["search", "--out", str(base / "search"), *TINY]) == 0
    assert main([*(a.replace("{tmp}/a", str(base / "train")) for a in TRAIN_NB201), "--epochs", "1", "--channels",
                 "4", "--layers", "1", "--subset", "100", "--test-subset", "50", "--quiet"]) == 0
    return base


@pytest.mark.parametrize("name, key, value, command, needle", [
    # `select` wrote selections/magnitude.json, then failed on the list with a traceback
    ("search/result.json", "selections", ["magnitude"], ["select", "{run}", "--method", "magnitude", "--force"],
     "result.json: selections must be a JSON object, got [\"magnitude\"]"),
    ("search/result.json", "selections", {"magnitude": {"genotype": 5}},
     ["select", "{run}", "--method", "magnitude", "--force"],
     "result.json: selections.magnitude.genotype must be a string or a JSON object, got 5"),
    ("search/result.json", "finished", ["yes"], ["analyze", "ranking", "{run}", "--table", "{run}/none.csv"],
     "result.json: finished must be a string or true/false"),
    ("search/config.json", "epochs", "ten", ["search", "--out", "{run}", *TINY, "--resume"],
     "config.json: epochs must be an integer, got \"ten\""),
    ("search/config.json", "w_lr", None, ["select", "{run}", "--method", "magnitude"],
     "config.json: w_lr must be a number, got null"),
    ("search/config.json", "options", [1], ["select", "{run}", "--method", "magnitude", "--resume"],
     "config.json: options must be a JSON object"),
    ("search/config.json", "arch_betas", 5, ["analyze", "ranking", "{run}", "--table", "{run}/none.csv"],
     "config.json: arch_betas must be a list of 2 numbers, got 5"),
    ("search/config.json", "dataset", 5, ["train", "--run", "{run}", "--out", "{run}/t", "--epochs", "1"],
     "config.json: dataset must be a string, got 5"),
    ("search/config.json", "dataset", 5, ["analyze", "ops", "{run}", "--table", "{run}/none.csv", "--no-plot"],
     "config.json: dataset must be a string, got 5"),
    ("search/config.json", "epochs", 0, ["select", "{run}", "--method", "magnitude"],
     "config.json: --epochs must be >= 1, got 0"),
    ("train/config.json", "lr", None, [*TRAIN_NB201, "--epochs", "1", "--resume"], "config.json: lr must be a number"),
    ("search/metrics.jsonl", "epoch", "x", ["analyze", "plots", "{run}"], "metrics.jsonl:1: epoch must be an integer"),
    ("search/selections/magnitude.json", "decisions", [1], ["analyze", "ops", "{run}", "--table", "{run}/none.csv"],
     "magnitude.json: decisions[0] must be a JSON object, got 1"),
    ("search/selections/magnitude.json", "genotype", 5, ["select", "{run}", "--method", "magnitude", "--resume"],
     "magnitude.json: genotype must be a string, got 5"),
])
def test_hand_edited_run_files_of_the_wrong_type(tmp_path, capsys, finished_runs, name, key, value, command, needle):
    """A wrong JSON type in any run file: one line naming the file and the field, exit 2, nothing written."""
    import shutil
    shutil.copytree(finished_runs, tmp_path, dirs_exist_ok=True)
    path = tmp_path / name
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        path.write_text("\n".join([json.dumps({**json.loads(lines[0]), key: value}), *lines[1:]]) + "\n")
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    run = tmp_path / name.split("/")[0]
    before = _files(tmp_path)
    args = [a.replace("{run}", str(run)).replace("{tmp}/a", str(run)) for a in command]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("kind, edit, needle", [
    ("search", lambda s: {**s, "rng": {}}, "checkpoint.pt: rng is not the RNG states dnas saves"),
    ("search", lambda s: {**s, "rng": [1]}, "checkpoint.pt: rng must be a JSON object, got [1]"),
    ("train", lambda s: {**s, "model": {"x": s["rng"]["torch"]}}, "checkpoint.pt: does not fit the network of"),
    ("train", lambda s: {**s, "optimizer": {}}, "checkpoint.pt: does not fit the network of"),
    ("train", lambda s: {k: v for k, v in s.items() if k != "epoch"}, "checkpoint.pt: epoch is missing"),
    ("train", lambda s: {**s, "epoch": "1"}, "checkpoint.pt: epoch must be an integer, got \"1\""),
    ("train", lambda s: {**s, "epoch": 7}, "checkpoint.pt: epoch must be between 0 and 1, got 7"),
    ("train", lambda s: {**s, "rank_rng": [{"torch": 1}]}, "checkpoint.pt: rng is not the RNG states dnas saves"),
])
def test_a_resumed_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys, finished_runs, kind, edit, needle):
    """search / train --resume from a checkpoint torch reads but that lacks a key, has a wrong type or does not
    fit the network: one line naming the file, exit 2, nothing written (was a KeyError or torch traceback)."""
    import shutil

    import torch
    shutil.copytree(finished_runs, tmp_path, dirs_exist_ok=True)
    run = tmp_path / kind
    (run / "result.json").unlink()  # unfinished: --resume reads the checkpoint
    torch.save(edit(torch.load(run / "checkpoint.pt", weights_only=False)), run / "checkpoint.pt")
    before = _files(tmp_path)
    args = ["search", "--out", str(run), *TINY] if kind == "search" else \
        [*(a.replace("{tmp}/a", str(run)) for a in TRAIN_NB201), "--epochs", "1", "--channels", "4", "--layers", "1",
         "--subset", "100", "--test-subset", "50", "--quiet"]
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert _files(tmp_path) == before


class _RunsCode:
    """A pickle that runs a command when unpickled (what a checkpoint from someone else could hold)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind, command", [
    ("search", ["search", "--out", "{run}", *TINY, "--resume"]),
    ("search", ["select", "{run}", "--method", "magnitude", "--force"]),  # a finished search's supernet
    ("train", [*TRAIN_NB201, "--epochs", "1", "--channels", "4", "--layers", "1", "--subset", "100",
               "--test-subset", "50", "--quiet", "--resume"]),
])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, finished_runs, kind, command):
    """Checkpoints load as tensors and plain data only: one that would run code when unpickled is one line naming
    the file, the object and DNAS_TRUST_CHECKPOINTS, exit 2, and its code never runs (torch.load ran it)."""
    import shutil

    import torch
    shutil.copytree(finished_runs, tmp_path, dirs_exist_ok=True)
    run, marker = tmp_path / kind, tmp_path / "marker"
    if command[0] != "select":
        (run / "result.json").unlink()  # unfinished: --resume reads the checkpoint
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    torch.save({**state, "epoch_note": _RunsCode(marker)}, run / "checkpoint.pt")
    before = _files(tmp_path)
    code, _, err = run_cli([a.replace("{run}", str(run)).replace("{tmp}/a", str(run)) for a in command], capsys)
    assert not marker.exists()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{run / 'checkpoint.pt'}: refused: it holds posix.system" in err and "DNAS_TRUST_CHECKPOINTS=1" in err
    assert _files(tmp_path) == before


def test_checkpoints_hold_only_what_weights_only_loading_reads(finished_runs):
    """A search's and a training's checkpoints load with torch.load(weights_only=True), nothing allow-listed: the
    RNG states are tensors and plain numbers (numpy's used to be an array, which only full unpickling reads)."""
    import random

    import numpy as np
    import torch

    from dnas.rundir import rng_state, set_rng_state
    for kind in ("search", "train"):
        state = torch.load(finished_runs / kind / "checkpoint.pt", weights_only=True)
        assert isinstance(state["rng"]["numpy"][1], list) and len(state["rng"]["numpy"][1]) == 624
    saved = rng_state()
    draws = (np.random.random(3).tolist(), np.random.standard_normal(), random.random(), torch.rand(2))
    set_rng_state(saved)
    again = (np.random.random(3).tolist(), np.random.standard_normal(), random.random(), torch.rand(2))
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])


def test_trusting_checkpoints_loads_what_is_refused_otherwise(tmp_path, monkeypatch):
    """DNAS_TRUST_CHECKPOINTS=1 loads a file holding other objects (full unpickling); an earlier version's numpy RNG
    state loads without it, except on a torch without safe_globals (< 2.5), where it is refused in one line."""
    from fractions import Fraction

    import numpy as np
    import torch

    from dnas.errors import DnasError
    from dnas.io import torch_load
    odd, legacy = tmp_path / "odd.pt", tmp_path / "legacy.pt"
    torch.save({"x": Fraction(1, 3)}, odd)
    torch.save({"numpy": np.random.get_state()}, legacy)
    with pytest.raises(DnasError, match=r"odd\.pt: refused: it holds fractions\.Fraction, .*DNAS_TRUST_CHECKPOINTS=1"):
        torch_load(odd)
    assert torch_load(legacy)["numpy"][1].dtype == np.uint32
    monkeypatch.delattr(torch.serialization, "safe_globals")
    with pytest.raises(DnasError, match=r"legacy\.pt: refused: it holds numpy\."):
        torch_load(legacy)
    monkeypatch.setenv("DNAS_TRUST_CHECKPOINTS", "1")
    assert torch_load(odd) == {"x": Fraction(1, 3)}
    assert torch_load(legacy)["numpy"][1].dtype == np.uint32


@pytest.mark.parametrize("core", ["core", "_core"])
def test_an_earlier_versions_rng_state_loads_whichever_numpy_wrote_it(tmp_path, core):
    """numpy < 2.1 pickles its arrays' reconstruction as numpy.core.multiarray._reconstruct, later ones as
    numpy._core...: an earlier dnas checkpoint written under either loads without DNAS_TRUST_CHECKPOINTS (one
    written under numpy 1 was refused under numpy 2)."""
    import zipfile

    import numpy as np
    import torch

    from dnas.io import torch_load
    if not torch.__version__ >= (2, 6):
        pytest.skip("torch < 2.6 cannot allow a global under a second name")
    written, legacy = tmp_path / "w.pt", tmp_path / "legacy.pt"
    state = np.random.get_state()
    torch.save({"numpy": state}, written)
    with zipfile.ZipFile(written) as src, zipfile.ZipFile(legacy, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):  # protocol 2: GLOBAL names are plain text lines
                for name in (b"numpy.core.multiarray\n_reconstruct", b"numpy._core.multiarray\n_reconstruct"):
                    data = data.replace(name, f"numpy.{core}.multiarray\n_reconstruct".encode())
                assert f"numpy.{core}.multiarray\n_reconstruct".encode() in data
            dst.writestr(item, data)
    loaded = torch_load(legacy)["numpy"]
    assert loaded[1].dtype == np.uint32 and np.array_equal(loaded[1], state[1])


def test_rng_state_keeps_numpys_cached_gaussian():
    """numpy's legacy normal draws come in pairs, the second cached in the state (has_gauss, gauss): the plain
    data rng_state() saves keeps it, so a resumed run draws the same normal after an odd number of them."""
    import numpy as np

    from dnas.rundir import rng_state, set_rng_state
    np.random.seed(0)
    np.random.standard_normal()  # one of a pair drawn: the other is cached
    saved = rng_state()
    assert saved["numpy"][3] == 1
    first = np.random.standard_normal(3).tolist()
    set_rng_state(saved)
    assert np.random.standard_normal(3).tolist() == first


@pytest.mark.parametrize("message", [
    "Unsupported global: GLOBAL posix.system was not an allowed global by default.",  # torch >= 2.4
    "WeightsUnpickler error: Unsupported class posix.system",  # torch 2.3
    "Can only build Tensor, Parameter, OrderedDict or types allowlisted via `add_safe_globals`, but got "
    "<class 'posix.system'>",
])
def test_every_supported_torchs_refusal_names_the_object(tmp_path, monkeypatch, message):
    """torch words a weights_only refusal differently across the supported versions (>= 2.3): each is the
    one-line refusal naming the object, not "corrupt checkpoint"."""
    import pickle

    import torch

    from dnas.errors import DnasError
    from dnas.io import torch_load
    (tmp_path / "c.pt").write_bytes(b"")

    def refuse(*a, **k):
        raise pickle.UnpicklingError(f"Weights only load failed. ... {message}")
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(DnasError, match=r"c\.pt: refused: it holds posix\.system, which"):
        torch_load(tmp_path / "c.pt")


def test_unknown_settings_are_named_in_order():
    from dnas.errors import DnasError
    from dnas.schema import check_settings
    from dnas.search import SearchConfig
    with pytest.raises(DnasError) as info:
        check_settings({"space": "nb201", "zeta": 1, "epochz": 3}, SearchConfig, "c.json")
    assert str(info.value) == 'c.json: unknown settings "epochz", "zeta"'


@pytest.mark.parametrize("kind, finished", [("search", True), ("search", False), ("train", True), ("train", False)])
def test_an_unknown_key_in_a_resumed_config_is_one_line(tmp_path, capsys, finished_runs, kind, finished):
    """A typo in a hand-edited config.json ("epochz") is refused on --resume of a search or training, finished or
    not (only `select` refused it; resuming ignored it), naming the file and the key; nothing is written."""
    import shutil
    shutil.copytree(finished_runs, tmp_path, dirs_exist_ok=True)
    run = tmp_path / kind
    if not finished:
        (run / "result.json").unlink()
    path = run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "epochz": 3}))
    before = _files(tmp_path)
    args = ["search", "--out", str(run), *TINY] if kind == "search" else \
        [*(a.replace("{tmp}/a", str(run)) for a in TRAIN_NB201), "--epochs", "1", "--channels", "4", "--layers", "1",
         "--subset", "100", "--test-subset", "50", "--quiet"]
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 2 and err.strip() == f'dnas: error: {path}: unknown setting "epochz"', err
    assert _files(tmp_path) == before


def test_is_out_of_memory_recognizes_exactly_the_allocators_errors():
    import torch
    from dnas.errors import OutOfMemory, is_out_of_memory
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("no room"))  # by its type, whatever it says
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    # said already (an inner block named the sizes), or not an allocator's error at all
    assert not is_out_of_memory(OutOfMemory("out of memory building x"))
    assert not is_out_of_memory(ValueError("a value about running out of memory"))
    assert not is_out_of_memory(RuntimeError("shapes do not match"))


def test_memory_message_names_the_request_and_only_the_known_sizes():
    from dnas.errors import memory_message
    e = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2500000000 bytes")
    assert memory_message(e, "training", {"channels": 64, "batch": None}, "--channels") == (
        "out of memory training (channels 64): could not allocate 2.5 GB; lower --channels")
    assert memory_message(MemoryError("Unable to allocate 1.50 GB for an array"), "loading") == (
        "out of memory loading: could not allocate 1.50 GB")
    assert memory_message(MemoryError("Unable to allocate 3.00 GiB for an array"), "x", {"a": None}) == (
        "out of memory x: could not allocate 3.00 GiB")


def test_memory_limits_raises_a_memory_error_that_is_also_a_dnas_error():
    from dnas.errors import DnasError
    import torch
    from dnas.errors import OutOfMemory, memory_limits
    with pytest.raises(MemoryError) as info:  # callers that catch MemoryError still do
        with memory_limits("building", {"channels": 8}, "--channels"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert isinstance(info.value, OutOfMemory) and isinstance(info.value, DnasError)
    assert str(info.value) == "out of memory building (channels 8): could not allocate 2.00 GiB; lower --channels"
    with pytest.raises(OutOfMemory, match="^out of memory inner"):  # the innermost block names it
        with memory_limits("outer", {}, ""):
            with memory_limits("inner", {}, ""):
                raise MemoryError()
    with pytest.raises(KeyError):  # anything else passes through
        with memory_limits("x", {}, ""):
            raise KeyError("k")


def test_to_json_converts_inside_tuples_too():
    import math
    import numpy as np
    import torch
    from dnas.io import jsonable, to_json
    assert to_json({"t": (math.nan, np.float32(2.0), (math.inf, 1))}) == '{"t": [null, 2.0, [null, 1]]}'
    assert jsonable((torch.tensor(0.5), np.int64(3))) == [0.5, 3]


def test_an_update_that_changes_nothing_leaves_result_json_alone(tmp_path):
    from dnas.rundir import read_result, update_result
    update_result(tmp_path, space="nb201", selections={"a": {"genotype": "g"}})
    before = (tmp_path / "result.json").stat()
    assert update_result(tmp_path, selections={"a": {"genotype": "g"}}) == {"space": "nb201",
                                                                           "selections": {"a": {"genotype": "g"}}}
    after = (tmp_path / "result.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even rewritten alike
    update_result(tmp_path, selections={"b": {"genotype": "h"}})
    assert sorted(read_result(tmp_path)["selections"]) == ["a", "b"]


@pytest.mark.parametrize("obj, fields, needle", [
    ({"lr": True}, {"lr": float}, "lr must be a number, got true"),  # bool is an int to Python, not to a config
    ({"epochs": False}, {"epochs": int}, "epochs must be an integer, got false"),
    ({"arch_betas": [0.5, 0.9, 0.1]}, {"arch_betas": tuple[float, float]}, "arch_betas must be a list of 2 numbers"),
    ({"cost": {"seconds": "1 s"}}, {"cost": dict[str, float | None]},
     'cost.seconds must be a number or null, got "1 s"'),
    ({"alpha": {"cell": [[0.1, "x"]]}}, {"alpha": dict[str, list[list[float]]]}, "alpha.cell[0][1] must be a number"),
    ([1], {}, "not a JSON object, got [1]"),
])
def test_check_fields_refuses_each_wrong_type(obj, fields, needle):
    from dnas.errors import DnasError
    from dnas.schema import check_fields
    with pytest.raises(DnasError) as info:
        check_fields(obj, fields, "f.json")
    assert str(info.value).startswith("f.json: ") and needle in str(info.value), str(info.value)


def test_check_fields_accepts_the_types_json_writes():
    from dnas.schema import check_fields
    ok = {"lr": 1, "betas": [0, 0.9], "cost": {"s": None, "t": 2}, "g": {"normal": []}, "epochs": 3}
    assert check_fields(ok, {"lr": float, "betas": tuple[float, float], "cost": dict[str, float | None],
                             "g": str | dict, "epochs": int}, "f") is ok


def test_selection_and_metrics_files_need_their_key_field(tmp_path):
    from dnas.errors import DnasError
    from dnas.rundir import read_metrics, read_selection
    (tmp_path / "m.json").write_text(json.dumps({"method": "pt", "scores": {}}))
    with pytest.raises(DnasError, match="m.json: genotype is missing"):
        read_selection(tmp_path / "m.json")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "lr": 0.1}\n{"lr": 0.1}\n')
    with pytest.raises(DnasError, match="metrics.jsonl:2: epoch is missing"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_finished_false_is_not_finished(tmp_path):
    """result.json's ``finished`` may be true/false (a training) or a time (a search): false is not finished."""
    from dnas.errors import DnasError
    from dnas.rundir import require_finished, run_finished
    (tmp_path / "result.json").write_text(json.dumps({"space": "nb201", "finished": False}))
    assert not run_finished(tmp_path)
    with pytest.raises(DnasError, match="has not finished"):
        require_finished(tmp_path)
    (tmp_path / "result.json").write_text(json.dumps({"space": "nb201", "finished": True}))
    assert run_finished(tmp_path)


def test_read_config_needs_a_space_name_and_truncate_keeps_the_epochs_before(tmp_path):
    from dnas.errors import DnasError
    from dnas.rundir import read_config, read_metrics, truncate_metrics
    (tmp_path / "config.json").write_text(json.dumps({"space": 5}))
    with pytest.raises(DnasError, match="not a dnas run configuration"):
        read_config(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(4)))
    truncate_metrics(tmp_path, 2)  # epochs 2, 3 are redone
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]


def test_only_resume_says_already_finished_and_puts_a_lost_selection_back(tmp_path, capsys):
    """--force on finished work does the work again: no "already finished" line (a plain select of a finished
    selection is refused). A selection whose result.json entry was lost (killed between its two writes) is
    put back by --resume."""
    run = tmp_path / "run"
    assert run_cli(["search", "--out", str(run), *TINY], capsys)[0] == 0
    code, _, err = run_cli(["search", "--out", str(run), *TINY, "--force"], capsys)
    assert code == 0 and "already finished" not in err, err
    code, _, err = run_cli(["select", str(run), "--method", "magnitude", "--quiet"], capsys)
    assert code == 2 and "already exists" in err and "already finished" not in err, err
    code, _, err = run_cli(["select", str(run), "--method", "magnitude", "--quiet", "--force"], capsys)
    assert code == 0 and "already finished" not in err, err
    result = json.loads((run / "result.json").read_text())
    saved = result["selections"].pop("magnitude")
    (run / "result.json").write_text(json.dumps(result))
    code, out, err = run_cli(["select", str(run), "--method", "magnitude", "--resume", "--quiet"], capsys)
    assert code == 0 and "already finished" in err, err
    assert json.loads((run / "result.json").read_text())["selections"]["magnitude"] == saved
    train = [*(a.replace("{tmp}/a", str(tmp_path / "t")) for a in TRAIN_NB201),
             "--epochs", "1", "--channels", "4", "--layers", "1", "--subset", "100", "--test-subset", "50", "--quiet"]
    assert run_cli(train, capsys)[0] == 0
    code, _, err = run_cli([*train, "--force"], capsys)
    assert code == 0 and "already finished" not in err, err


def test_a_resumed_search_restarted_meanwhile_builds_its_supernet(tmp_path, monkeypatch):
    """Finished at the first look (so nothing was built), not under the lock (a --force restart came between):
    the search builds its supernet then and runs."""
    import dnas.search.run as search_mod
    from dnas.search import make_config, run_search
    cfg = make_config("darts1", space="nb201", dataset="synthetic", epochs=1, channels=4, cells=1,
                      out=str(tmp_path / "run"))
    first = run_search(cfg, quiet=True)
    answers = iter([True])
    monkeypatch.setattr(search_mod, "run_finished", lambda run: next(answers, False))
    again = run_search(cfg, resume=True, quiet=True)
    assert again["genotype"] == first["genotype"] and again["finished"]


def test_only_out_of_memory_becomes_the_cli_memory_line(monkeypatch, capsys):
    """The CLI's last-resort handler turns out-of-memory into one line; any other bug keeps its traceback."""
    import dnas.evaluate.query as query_mod

    def bug(*a, **k):
        raise KeyError("a bug")
    monkeypatch.setattr(query_mod, "query_architecture", bug)
    with pytest.raises(KeyError, match="a bug"):
        run_cli(["query", "--space", "nb201", "--arch", NB201_ARCH], capsys)


def test_sigterm_stops_like_ctrl_c_with_the_shells_exit_code(tmp_path, capsys, stop_search_at):
    """SIGTERM is the same clean stop as Ctrl-C (state kept, `--resume` continues), and the exit code says which
    signal it was, as a shell reports a process it killed: 143 (128 + 15), not Ctrl-C's 130."""
    import os
    import signal

    run = tmp_path / "run"
    args = ["search", "--out", str(run), *[a if a != "1" else "2" for a in TINY]]
    # The handler main() installs turns the signal into a clean stop.
    stop_search_at(1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (143, "") and err.strip() == "dnas: interrupted (resume with --resume)"
    assert signal.getsignal(signal.SIGTERM) is not None  # main() put the previous handler back
    stop_search_at(None)
    assert run_cli([*args, "--resume"], capsys)[0] == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`dnas ... | head`: when the pipe's reader has gone, the command stops without a message and with the exit
    code of a process killed by SIGPIPE (141), as Unix tools do; it printed "dnas: error: Broken pipe" (exit 2),
    or Python's "Exception ignored ... BrokenPipeError" (exit 120) when the output was flushed at exit."""
    from pathlib import Path
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen([sys.executable, "-m", "dnas", "query", "--space", "darts", "--genotype", DARTS_ARCH],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    proc.stdout.close()  # gone before the command writes its line
    err = proc.stderr.read().decode()
    assert (proc.wait(timeout=120), err) == (141, "")
