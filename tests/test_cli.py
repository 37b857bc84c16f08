"""Bad input: one line on stderr naming the problem, exit code 2, nothing written or destroyed."""
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
    (["search", "--out", "{tmp}/a", "--subset", "5"], "subset"),
    (["search", "--out", "{tmp}/a", "--resolution", "10"], "multiple of 4"),
    (["search", "--out", "{tmp}/a", "--option", "bogus=1"], "--option bogus: not used by mode darts1"),
    (["search", "--out", "{tmp}/a", "--mode", "prime", "--option", "admm_freq=5"], "admm_freq: not used"),
    (["search", "--out", "{tmp}/file.txt"], "is a file, not a run directory"),
    (["train", "--space", "nb201", "--arch", NB201_ARCH, "--dataset", "synthetic", "--out", "{tmp}/a",
      "--layers", "0"], "--layers must be >= 1"),
    (["train", "--space", "nb201", "--arch", NB201_ARCH, "--dataset", "synthetic", "--out", "{tmp}/a",
      "--channels", "0"], "--channels and --layers must be >= 1"),
    (["train", "--space", "darts", "--arch", DARTS_ARCH, "--dataset", "synthetic", "--out", "{tmp}/a",
      "--channels", "5"], "even channel count"),
    (["train", "--space", "darts", "--arch", DARTS_ARCH, "--dataset", "synthetic", "--out", "{tmp}/a",
      "--auxiliary-weight", "0.4"], "auxiliary head needs 32, 36 or 40 px"),
    (["train", "--space", "nb201", "--arch", NB201_ARCH, "--dataset", "synthetic", "--out", "{tmp}/file.txt"],
     "is a file"),
    (["reproduce", "smoke", "--out", "{tmp}/file.txt"], "is not a directory"),
    (["analyze", "genotype", "--space", "nb201", NB201_ARCH, "--out", "{tmp}/file.txt/cell.png"], "file.txt"),
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


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["search", "--out", str(out), *TINY], capsys)[0] == 0
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["search", "--out", str(out), *TINY, "--resume"], capsys)
    assert code == 2 and "corrupt checkpoint" in err and len(err.strip().splitlines()) == 1


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dnas", "search", "--out", str(tmp_path / "r"), "--space", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
