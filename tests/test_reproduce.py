"""Reproduction harness: the smoke protocol end to end (local processes and a local Ray instance), job
bookkeeping (finished jobs are not rerun, deleted outputs are redone, failures block dependants and are
reported), protocol settings and CLI errors."""
import json
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from dnas.cli import main
from dnas.errors import DnasError
from dnas.reproduce import get_protocol, plan, reproduce
from dnas.reproduce.execute import run_jobs
from dnas.reproduce.jobs import is_finished, job_dir, read_status, selection_file

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    """A complete fake NAS-Bench-201 table (every architecture, made-up accuracies) in the shared format."""
    path = tmp_path_factory.mktemp("nb201") / "fake_nb201.csv"
    lines = ["arch_index,arch_str,iso_class,cifar10_test,cifar100_test,imagenet16_test"]
    for i, ops in enumerate(product(NB201_OPS, repeat=6)):
        arch = f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|"
        score = sum(NB201_OPS.index(o) for o in ops)  # more convs, higher accuracy
        lines.append(f"{i},{arch},{i},{50 + 2 * score:.2f},{20 + score:.2f},{10 + score:.2f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def check_report(out: Path, seeds: list[int]) -> dict:
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol_id"] == "smoke@v1" and rep["seeds"] == seeds
    labels = [r["label"] for r in rep["rows"]]
    assert labels == ["DARTS + magnitude", "DARTS + PT (DARTS-PT)", "DARTS + OStr (OStr-DARTS)", "fix α + magnitude",
                      "fix α + PT (DARTS-PT fix α)", "ZEROS at init (training-free)"]
    for r in rep["rows"]:
        assert r["n"] == len(seeds), r
        for s in r["seeds"]:
            assert s["genotype"].startswith("|") and s["cifar10"] is not None and 0 < s["percentile"] <= 100
        assert r["cifar10"]["mean"] is not None
        assert r["devices"] == ["cpu (1 thread)"]
    assert not rep["jobs"]["failed"] and not rep["jobs"]["unfinished"]
    md = (out / "report.md").read_text()
    assert "| DARTS + magnitude | 1 |" in md and "54.30" in md and "93.80" in md and "not reported" in md
    assert (out / "accuracy.png").stat().st_size > 1000
    return rep


def attempts(out: Path) -> dict[str, int]:
    return {p.name: read_status(out, p.name).get("attempts", 0) for p in (out / "jobs").iterdir()}


def test_smoke_local_runs_resumes_and_rebuilds(tmp_path, capsys, table):
    out = tmp_path / "smoke"
    args = ["reproduce", "smoke", "--out", str(out), "--seeds", "0", "--workers", "2", "--threads", "1",
            "--table", table, "--quiet"]
    code, stdout, err = cli(args, capsys)
    assert code == 0, err
    assert "6/6 jobs finished, 0 failed" in stdout
    check_report(out, [0])
    first = attempts(out)
    assert set(first) == {"zeros-s0", "darts1-s0", "fixed-s0", "darts1-s0-pt", "darts1-s0-ostr", "fixed-s0-pt"}
    assert set(first.values()) == {1}
    for name in first:  # every job logged to its own file
        assert (out / "jobs" / name / "log.txt").read_text().count("attempt 1") == 1

    # a finished job is never rerun; a job whose output is gone is redone (and only that one); a search
    # cut off before it was marked finished resumes from its checkpoint instead of starting over
    (out / "jobs" / "fixed-s0" / "run" / "selections" / "pt.json").unlink()
    result = out / "jobs" / "darts1-s0" / "run" / "result.json"
    result.write_text(json.dumps({k: v for k, v in json.loads(result.read_text()).items() if k != "finished"}))
    assert cli(args, capsys)[0] == 0
    again = attempts(out)
    assert again == {**first, "fixed-s0-pt": 2, "darts1-s0": 2}
    assert len((out / "jobs" / "darts1-s0" / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    check_report(out, [0])

    # the report can be rebuilt at any time, from the job directories only
    (out / "report.md").unlink()
    code, stdout, _ = cli(["reproduce", "smoke", "--out", str(out), "--seeds", "0", "--report-only",
                           "--table", table], capsys)
    assert code == 0 and (out / "report.md").exists() and attempts(out) == again


def test_smoke_on_a_local_ray_instance(tmp_path, table):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dnas[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a leftover cluster
    try:
        address = ray.get_runtime_context().gcs_address  # also passes the reachability probe (gRPC reply)
        out = tmp_path / "smoke-ray"
        proc = subprocess.run([sys.executable, "-m", "dnas", "reproduce", "smoke", "--out", str(out), "--seeds", "0",
                               "--ray", address, "--table", table, "--quiet"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        check_report(out, [0])
        assert set(attempts(out).values()) == {1}
    finally:
        ray.shutdown()


# -- bookkeeping without processes ------------------------------------------------------------------------

class FakePool:
    """Finishes jobs instantly by writing their output files; fails the names in ``fail``."""

    def __init__(self, out: Path, jobs, fail=(), killed_after_output=(), sigkill=()):
        self.out, self.by_name, self.fail = out, {j.name: j for j in jobs}, set(fail)
        self.killed = set(killed_after_output)  # output written, then the process died (rc -9)
        self.sigkill = set(sigkill)  # killed before any output or status (out of memory): rc -9
        self.running: list[str] = []
        self.started: list[str] = []
        self.max_running = 0
        self.lock_clash = False

    def submit(self, name, path):
        locks = [self.by_name[n].lock for n in self.running if self.by_name[n].lock]
        self.lock_clash |= self.by_name[name].lock in locks
        self.running.append(name)
        self.started.append(name)
        self.max_running = max(self.max_running, len(self.running))

    def wait(self, timeout):
        name = self.running.pop(0)
        job = self.by_name[name]
        if name in self.fail:
            (job_dir(self.out, name) / "status.json").write_text(json.dumps({"state": "failed", "error": "boom"}))
            return [(name, 1, "")]
        if name in self.sigkill:
            return [(name, -9, "")]
        f = selection_file(self.out, job)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"genotype": "x"}))
        if job.kind == "search":
            (f.parent.parent / "result.json").write_text(json.dumps({"finished": "now"}))
        return [(name, -9 if name in self.killed else 0, "")]

    def stop(self):
        pass


def test_scheduler_order_locks_and_failures(tmp_path):
    proto = get_protocol("smoke")
    jobs = plan(proto, [0, 1])
    pool = FakePool(tmp_path, jobs, fail={"darts1-s1"})
    res = run_jobs(jobs, tmp_path, pool, workers=3, quiet=True)
    assert pool.max_running <= 3 and not pool.lock_clash
    for j in jobs:  # dependencies first
        for d in j.deps:
            if j.name in pool.started:
                assert pool.started.index(d) < pool.started.index(j.name)
    assert res.failed == {"darts1-s1": "exit 1: boom"}
    assert set(res.blocked) == {"darts1-s1-pt", "darts1-s1-ostr"}
    assert all(is_finished(tmp_path, j) for j in jobs if j.name not in res.failed and j.name not in res.blocked)
    # a second call reruns only what is not finished
    pool2 = FakePool(tmp_path, jobs)
    res2 = run_jobs(jobs, tmp_path, pool2, workers=2, quiet=True)
    assert pool2.started == ["darts1-s1", "darts1-s1-pt", "darts1-s1-ostr"] and not res2.failed


def test_a_mode_with_its_own_defaults_runs_in_a_grid(tmp_path, table, capsys):
    """Search jobs round-trip their config through job.json; a mode with paper defaults (spos) must not be
    refused by run_search's make_config check, and keeps the settings it was planned with. Not quiet, the
    library still writes nothing to stdout (progress lines go to ``say``, which the CLI sets to print)."""
    import dataclasses

    proto = dataclasses.replace(get_protocol("smoke"), name="smoke-spos", modes=("spos",), selections={},
                                zeros=False, seeds=(0,))
    outcome = reproduce(proto, tmp_path / "out", workers=1, table=table).outcome
    assert not outcome.failed and not outcome.blocked, outcome
    assert capsys.readouterr().out == ""
    saved = json.loads((tmp_path / "out" / "jobs" / "spos-s0" / "run" / "config.json").read_text())
    assert saved["mode"] == "spos" and saved["lr_per_step"] is True and saved["w_nesterov"] is True


def test_progress_counts_the_jobs_skipped_behind_a_failure(tmp_path):
    """The "(k/N)" counter reaches N when a failure holds jobs back: skipped jobs count (they did not)."""
    import re
    jobs = plan(get_protocol("smoke"), [0])
    said = []
    res = run_jobs(jobs, tmp_path, FakePool(tmp_path, jobs, fail={"darts1-s0"}), workers=1, say=said.append)
    assert set(res.blocked) == {"darts1-s0-pt", "darts1-s0-ostr"}
    counters = [m.group(1) for m in (re.search(r"\((\d+/\d+)\)", s) for s in said) if m]
    assert counters == [f"{k}/6" for k in range(1, 7)], said
    assert any("skip  darts1-s0-pt: darts1-s0 failed (" in s for s in said), said


def test_a_stopped_grid_marks_its_running_jobs_interrupted(tmp_path):
    """Stopping reproduce --ray kills its Ray tasks outright: their workers cannot record the stop, so their
    status.json said "running" for ever (and so did report.json). The scheduler marks them interrupted, as a
    local worker does itself, and the next run resumes them."""
    jobs = plan(get_protocol("smoke"), [0])

    class KilledOnStop(FakePool):
        def submit(self, name, path):
            super().submit(name, path)
            (path / "status.json").write_text(json.dumps({"state": "running", "attempts": 1, "seconds": 5.0}))

        def wait(self, timeout):
            raise KeyboardInterrupt  # Ctrl-C while two jobs run; stop() kills them without a word

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, tmp_path, KilledOnStop(tmp_path, jobs), workers=2, quiet=True)
    states = {j.name: read_status(tmp_path, j.name) for j in jobs}
    assert {n: s.get("state") for n, s in states.items() if s} == {"zeros-s0": "interrupted",
                                                                   "darts1-s0": "interrupted"}
    assert states["darts1-s0"]["seconds"] >= 5.0 and "ended" in states["darts1-s0"]
    res = run_jobs(jobs, tmp_path, FakePool(tmp_path, jobs), workers=2, quiet=True)
    assert len(res.done) == 6 and not res.failed and not res.skipped


def test_an_unreachable_ray_address_is_one_line_at_once(tmp_path, capsys):
    """ray.init retried an address where nothing answers for minutes, printing connection warnings."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dnas[ray]'")
    import time
    t0 = time.time()
    code, out, err = cli(["reproduce", "smoke", "--out", str(tmp_path / "o"), "--ray", "127.0.0.1:1"], capsys)
    assert time.time() - t0 < 30
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "cannot connect to the Ray cluster at '127.0.0.1:1': nothing answers at" in err
    assert not (tmp_path / "o").exists()


def test_report_marks_values_missing_for_some_seeds():
    from dnas.reproduce.report import _fmt

    assert _fmt({"n": 2, "mean": 91.0, "std": 2 ** 0.5}, of=3) == "91.00 ± 1.41 (2 of 3)"
    assert _fmt({"n": 3, "mean": 91.0, "std": 1.0}, of=3) == "91.00 ± 1.00"


def test_a_killed_job_is_reported_as_killed(tmp_path):
    """A worker killed by SIGKILL (out of memory, say) leaves no error in its status: the reason names the signal
    and what this attempt said last, not the worker's own "attempt 2 on HOST" line (which it used to report) or
    an earlier attempt's error."""
    jobs = plan(get_protocol("smoke"), [0])
    log = job_dir(tmp_path, "darts1-s0") / "log.txt"
    log.parent.mkdir(parents=True)
    earlier = ("== 2026-01-01 00:00:00 darts1-s0: attempt 1 on vm with 1 thread(s)\nRuntimeError: an old one\n"
               "== 2026-01-01 00:00:09 darts1-s0: failed (9.0 s this attempt)\n")
    log.write_text(earlier + "== 2026-01-01 00:01:00 darts1-s0: attempt 2 on vm with 1 thread(s)\n")
    res = run_jobs(jobs, tmp_path, FakePool(tmp_path, jobs, sigkill={"darts1-s0"}), workers=1, quiet=True)
    assert res.failed["darts1-s0"] == "killed by SIGKILL"
    assert read_status(tmp_path, "darts1-s0")["error"] == "killed by SIGKILL"
    assert set(res.blocked) == {"darts1-s0-pt", "darts1-s0-ostr"}
    with open(log, "a") as f:
        f.write("UserWarning: something the job said\n")
    (job_dir(tmp_path, "darts1-s0") / "status.json").unlink()
    res = run_jobs(jobs, tmp_path, FakePool(tmp_path, jobs, sigkill={"darts1-s0"}), workers=1, quiet=True)
    assert res.failed["darts1-s0"] == "killed by SIGKILL: UserWarning: something the job said"


def test_finished_output_wins_over_exit_code_and_one_run_per_directory(tmp_path):
    from dnas.errors import DnasError
    from dnas.reproduce.execute import output_lock

    jobs = plan(get_protocol("smoke"), [0])
    res = run_jobs(jobs, tmp_path, FakePool(tmp_path, jobs, killed_after_output={"darts1-s0"}), workers=2, quiet=True)
    assert not res.failed and not res.blocked and "darts1-s0-pt" in res.done  # the output decides
    with output_lock(tmp_path):
        with pytest.raises(DnasError, match="in use by another reproduce run"):
            run_jobs(jobs, tmp_path, FakePool(tmp_path, jobs), workers=1, quiet=True)


def test_grid_of_each_protocol():
    cpu = get_protocol("nb201-cpu")
    jobs = plan(cpu, list(cpu.seeds))
    kinds = [j.kind for j in jobs]
    assert len(cpu.seeds) == 3 and kinds.count("zeros") == 3 and kinds.count("search") == 6
    assert sorted(j.name for j in jobs if j.kind == "select") == sorted(
        f"{m}-s{s}-{x}" for s in cpu.seeds for m, xs in (("darts1", ("pt", "ostr")), ("fixed", ("pt",))) for x in xs)
    assert all(j.deps == (f"{j.mode}-s{j.seed}",) for j in jobs if j.kind == "select")
    assert cpu.dataset == "cifar10" and cpu.device == "cpu" and "measured" in cpu.rationale.lower()
    paper = get_protocol("nb201-paper")
    cfg = paper.search_config("darts1", 0)
    assert (cfg.channels, cfg.cells, cfg.resolution, cfg.subset, cfg.train_portion, cfg.epochs) == (16, 5, None, None,
                                                                                                     0.5, 100)
    assert paper.options("pt")["proj_intv"] == 5 and len(paper.seeds) == 4
    fixed = paper.search_config("fixed", 3)
    assert fixed.mode == "fixed" and fixed.seed == 3


def test_an_output_directory_keeps_one_protocol(tmp_path, table):
    proto = get_protocol("smoke")
    out = tmp_path / "o"
    with pytest.raises(DnasError, match="no reproduction here"):
        reproduce(proto, out, report_only=True)
    (out).mkdir()
    (out / "protocol.json").write_text(json.dumps({**proto.to_json(), "epochs": 7}))
    with pytest.raises(DnasError, match="other settings.*epochs"):
        reproduce(proto, out, report_only=True)


def test_a_second_reproduce_writes_nothing_before_it_has_the_lock(tmp_path):
    """Two reproduce runs into one new directory at once: the one that does not get the lock must not write its
    protocol.json (it used to, before failing on the lock, replacing the other one's), nor say anything before
    its refusal (it printed its "N jobs, ..., output DIR" header)."""
    from dnas.reproduce.execute import output_lock
    out = tmp_path / "o"
    said = []
    with output_lock(out):  # the other reproduce, between taking its lock and writing its protocol.json
        with pytest.raises(DnasError, match="in use by another reproduce run"):
            reproduce("smoke", out, seeds=[0], workers=1, say=said.append)
    assert sorted(p.name for p in out.iterdir()) == [".lock"] and said == []
    (out / "protocol.json").write_text("[]")  # a hand-edited protocol.json of the wrong type: one line
    with pytest.raises(DnasError, match="protocol.json: not a dnas reproduction protocol"):
        reproduce("smoke", out, report_only=True)


@pytest.mark.parametrize("args, needle", [
    (["reproduce", "nope", "--out", "{tmp}/o"], "unknown protocol"),
    (["reproduce", "smoke", "--out", "{tmp}/o", "--seeds", "a,b"], "--seeds"),
    (["reproduce", "smoke", "--out", "{tmp}/o", "--seeds", "1,1"], "distinct"),
    (["reproduce", "smoke", "--out", "{tmp}/o", "--workers", "0"], "--workers"),
    (["reproduce", "smoke", "--out", "{tmp}/o", "--report-only"], "no reproduction here"),
    (["reproduce", "smoke", "--out", "{tmp}/o", "--table", "{tmp}/none.csv"], "does not exist"),
    (["reproduce", "nb201-cpu", "--out", "{tmp}/o", "--data-dir", "{tmp}/nowhere"], "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.delenv("DNAS_DATA_DIR", raising=False)
    code, _, err = cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o" / "jobs").exists()


def test_local_jobs_on_a_gpu_machine_each_get_their_own_gpu(tmp_path, monkeypatch):
    """K workers on K GPUs: concurrent jobs see different GPUs (CUDA_VISIBLE_DEVICES), not all cuda:0."""
    import torch

    import dnas.reproduce.execute as execute
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    started = []

    class FakeProc:  # a worker that fails at once (its dependants are then skipped)
        def __init__(self, cmd, stdout, stderr, env):
            started.append(env.get("CUDA_VISIBLE_DEVICES"))
            self.returncode = 1

        def poll(self):
            return self.returncode

    monkeypatch.setattr(execute.subprocess, "Popen", FakeProc)
    res = reproduce("smoke", tmp_path / "out", seeds=[0], device="auto")
    assert len(started) >= 2
    assert started[:2] == ["0", "1"]  # the scheduler starts two jobs at once (2 workers): one per GPU
    assert all(gpu in ("0", "1") for gpu in started)
    assert "GPUs 0,1" in res.pool

    # a parent restricted to some GPUs hands out those, and a CPU protocol or a named device none
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert execute.gpu_slots("auto") == ["5", "7"]
    # more entries than CUDA devices (CUDA stops at the first bad one): only the devices that exist
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,bad")
    assert execute.gpu_slots("cuda") == ["5", "7"]
    assert execute.gpu_slots("cpu") == [] and execute.gpu_slots("cuda:1") == []


def _search_job(out):
    from dnas.reproduce import get_protocol
    from dnas.reproduce.jobs import plan
    return next(j for j in plan(get_protocol("smoke"), [0]) if j.kind == "search")


def test_a_search_job_is_finished_only_when_its_result_says_so(tmp_path):
    from dnas.reproduce.jobs import is_finished, run_dir, selection_file
    job = _search_job(tmp_path)
    selection_file(tmp_path, job).parent.mkdir(parents=True)
    selection_file(tmp_path, job).write_text(json.dumps({"genotype": "x"}))
    (run_dir(tmp_path, job) / "result.json").write_text(json.dumps({"space": "nb201"}))  # written, not finished
    assert not is_finished(tmp_path, job)
    (run_dir(tmp_path, job) / "result.json").write_text(json.dumps({"space": "nb201", "finished": "2026-01-01"}))
    assert is_finished(tmp_path, job)


def test_a_status_file_of_the_wrong_type_is_no_status(tmp_path):
    from dnas.reproduce.execute import _mark_interrupted
    from dnas.reproduce.jobs import STATUS, job_dir, read_status
    job_dir(tmp_path, "j").mkdir(parents=True)
    (job_dir(tmp_path, "j") / STATUS).write_text("[1, 2]")
    assert read_status(tmp_path, "j") == {}
    # a hand-edited seconds must not hide the stop
    (job_dir(tmp_path, "j") / STATUS).write_text(json.dumps({"state": "running", "seconds": "lots"}))
    _mark_interrupted(tmp_path, "j", 3.0)
    status = read_status(tmp_path, "j")
    assert status["state"] == "interrupted" and status["seconds"] == 3.0
    (job_dir(tmp_path, "j") / STATUS).write_text(json.dumps({"state": "failed", "seconds": 1.0}))
    _mark_interrupted(tmp_path, "j", 3.0)  # only a running job is marked
    assert read_status(tmp_path, "j") == {"state": "failed", "seconds": 1.0}


def test_failure_reasons_tell_exit_codes_from_signals(tmp_path):
    from dnas.reproduce.execute import _failure
    from dnas.reproduce.jobs import job_dir
    job_dir(tmp_path, "j").mkdir(parents=True)
    assert _failure(tmp_path, "j", 0) == "exit 0"  # ended, but its output is missing
    assert _failure(tmp_path, "j", 3) == "exit 3"
    assert _failure(tmp_path, "j", -15) == "killed by SIGTERM"
    (job_dir(tmp_path, "j") / "log.txt").write_text("== 2026 j: attempt 1 on h\n")  # nothing said since
    assert _failure(tmp_path, "j", -9) == "killed by SIGKILL"


def _fake_server(reply: bytes | None, handle=None):
    """A listening socket on a free port that answers a connection's first bytes with ``reply`` (None: never;
    empty: it hangs up), or hands each connection to ``handle``."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("", 0))  # a cluster address (not ray://) is resolved as ray.init does: localhost -> node IP
    server.listen()
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed
                return
            held.append(conn)
            if handle is not None:
                handle(conn)
            elif reply is not None:
                conn.recv(64)
                conn.sendall(reply) if reply else conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_ray_reachability_check_strips_the_client_scheme_and_leaves_portless_addresses_to_ray():
    from dnas.reproduce.execute import _check_reachable
    server, port = _fake_server(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # a gRPC server's SETTINGS frame
    with server:
        _check_reachable(f"ray://127.0.0.1:{port}", timeout=5)  # a Ray client address that answers
        _check_reachable(f"127.0.0.1:{port}", timeout=5)
    _check_reachable("ray://head-node")  # no port: nothing to check here
    with pytest.raises(DnasError, match="nothing answers at 127.0.0.1:1"):
        _check_reachable("ray://127.0.0.1:1", timeout=5)


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n", b""], ids=["silent", "http1", "closes"])
def test_a_port_that_answers_but_is_no_ray_cluster_is_refused_within_the_timeout(reply):
    """ray.init retried such an address for minutes (40 s per attempt measured), printing C++ warnings."""
    import time

    from dnas.reproduce.execute import _check_reachable
    server, port = _fake_server(reply)
    with server:
        t0 = time.time()
        with pytest.raises(DnasError, match=f"127.0.0.1:{port} answers, but not as a Ray cluster"):
            _check_reachable(f"ray://127.0.0.1:{port}", timeout=1)
        assert time.time() - t0 < 5


SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # what a gRPC server answers HTTP/2's opening with


def test_a_grpc_reply_that_arrives_in_pieces_is_read_whole():
    """TCP may deliver the 9-byte frame header in several segments: the probe reads until it has all 9."""
    import time

    from dnas.reproduce.execute import _check_reachable

    def in_pieces(conn):
        conn.recv(64)
        conn.sendall(SETTINGS_FRAME[:2])
        time.sleep(0.2)
        conn.sendall(SETTINGS_FRAME[2:])
    server, port = _fake_server(None, in_pieces)
    with server:
        _check_reachable(f"ray://127.0.0.1:{port}", timeout=5)


def test_a_port_that_resets_the_connection_is_no_ray_cluster():
    """A reset (not a timeout) while probing is the same one line, not an OSError from the socket."""
    import socket
    import struct

    from dnas.reproduce.execute import _check_reachable

    def reset(conn):
        conn.recv(64)  # the probe (a reset before it can fail the connect itself: "nothing answers")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        conn.close()
    server, port = _fake_server(None, reset)
    with server:
        with pytest.raises(DnasError, match=f"127.0.0.1:{port} answers, but not as a Ray cluster"):
            _check_reachable(f"ray://127.0.0.1:{port}", timeout=2)


@pytest.mark.parametrize("tls", ["1", "True"])
def test_with_ray_tls_only_the_connect_is_checked(monkeypatch, tls):
    """A TLS cluster does not answer plain-text HTTP/2: with RAY_USE_TLS set (as Ray reads it, any case) an
    address that accepts the connection passes at once, and one where nothing answers is still refused."""
    import time

    from dnas.reproduce.execute import _check_reachable
    monkeypatch.setenv("RAY_USE_TLS", tls)
    server, port = _fake_server(None)  # accepts, never answers the probe
    with server:
        t0 = time.time()
        _check_reachable(f"ray://127.0.0.1:{port}", timeout=2)
        assert time.time() - t0 < 1.5
    with pytest.raises(DnasError, match="nothing answers at 127.0.0.1:1"):
        _check_reachable("ray://127.0.0.1:1", timeout=2)


def test_a_terminated_worker_records_its_job_interrupted_and_exits_143(tmp_path):
    """SIGTERM (what a stopped grid sends its local jobs) is a clean stop: status "interrupted" (resumed on the
    next run) and exit 143, 128 + the signal, as a shell reports it; Ctrl-C's 130 was reported before."""
    import os
    import signal
    import time

    from dnas.reproduce import worker
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "job.json").write_text(json.dumps({"kind": "zeros"}))

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler worker.main installed raises at once
        raise AssertionError("SIGTERM did not stop the job")

    def no_handler(*a):
        raise RuntimeError("worker.main installed no SIGTERM handler")
    previous = signal.signal(signal.SIGTERM, no_handler)
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(worker, "run_job", terminated)
            assert worker.main([str(tmp_path / "j")]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert json.loads((tmp_path / "j" / "status.json").read_text())["state"] == "interrupted"


def _worker(monkeypatch, job_dir):
    import signal

    from dnas.reproduce import worker
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # leave pytest's SIGTERM handler alone
    return worker.main([str(job_dir)])


def test_a_worker_refuses_a_job_file_of_the_wrong_type(tmp_path, monkeypatch, capsys):
    (tmp_path / "job.json").write_text("[]")
    assert _worker(monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"dnas: error: {tmp_path / 'job.json'}: not a dnas job (a JSON object with its kind)"
    assert not (tmp_path / "status.json").exists()


def test_a_worker_out_of_memory_is_a_users_size_exit_2(tmp_path, monkeypatch, capsys):
    from dnas.reproduce import worker
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "job.json").write_text(json.dumps({"kind": "zeros"}))

    def oom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3000000000 bytes")
    monkeypatch.setattr(worker, "run_job", oom)
    assert _worker(monkeypatch, tmp_path / "j") == 2
    status = json.loads((tmp_path / "j" / "status.json").read_text())
    line = "out of memory in job j: could not allocate 3 GB; lower the protocol's sizes"
    assert status["state"] == "failed" and status["error"] == line
    assert f"dnas: error: {line}" in capsys.readouterr().err


def test_reproduce_checks_the_protocol_again_once_it_has_the_lock(tmp_path, monkeypatch):
    """Another reproduce with other settings wrote protocol.json between this one's first check and its lock."""
    import contextlib

    import dnas.reproduce as rep
    from dnas.reproduce import get_protocol
    out = tmp_path / "o"
    other = {**get_protocol("smoke").to_json(), "epochs": 7}
    real = rep.output_lock

    @contextlib.contextmanager
    def raced(path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "protocol.json").write_text(json.dumps(other))
        with real(path):
            yield
    monkeypatch.setattr(rep, "output_lock", raced)
    with pytest.raises(DnasError, match="other settings.*epochs"):
        rep.reproduce("smoke", out, seeds=[0], workers=1, quiet=True)
    assert json.loads((out / "protocol.json").read_text()) == other and not (out / "jobs").exists()


def test_reproduce_keeps_the_protocol_json_it_finds(tmp_path, monkeypatch):
    """A later run into the same directory (other seeds, say) leaves the first one's protocol.json as it is."""
    import dnas.reproduce as rep
    from dnas.reproduce import get_protocol
    from dnas.reproduce.execute import Outcome
    out = tmp_path / "o"
    out.mkdir()
    first = json.dumps({**get_protocol("smoke").to_json(), "seeds": [7, 8], "summary": "the first run's"})
    (out / "protocol.json").write_text(first)
    monkeypatch.setattr(rep, "run_jobs", lambda *a, **k: Outcome([], {}, {}, []))
    monkeypatch.setattr(rep, "write_report", lambda *a, **k: None)
    rep.reproduce("smoke", out, seeds=[0], workers=1, quiet=True)
    assert (out / "protocol.json").read_text() == first
