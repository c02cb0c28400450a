"""A study on a real PostgreSQL server, shared by test hosts in network namespaces: exact
trial counts across hosts, a host killed outright, the server restarted mid-study, and a
storage that cannot be opened. (tests/pg.py starts the server; without PostgreSQL's
binaries or permission for namespaces the tests say why they skip or fall back.)"""

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from pg import Hosts, PgServer, pg_bindir

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(pg_bindir() is None, reason="PostgreSQL is not installed "
                                 "(Debian: apt-get install postgresql; .ci/run installs it)")]

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(tmp, epochs=2, **params):
    spec = {"program": "run.py", "method": "random",
            "metric": {"name": "val/accuracy", "goal": "maximize"},
            "parameters": {"model_type": {"value": "shallow"}, "dataset": {"value": "digits"},
                           "target_params": {"value": 20000}, "batch_size": {"value": 64},
                           "epochs": {"value": epochs}, "progress": {"value": False},
                           "checkpoint_dir": {"value": str(tmp / "ck")},
                           "checkpoint_every": {"value": 1},
                           "learning_rate": {"distribution": "log_uniform_values",
                                             "min": 1e-4, "max": 1e-2},
                           "seed": {"distribution": "int_uniform", "min": 0, "max": 10**6},
                           **params}}
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()] if Path(path).exists() else []


@pytest.fixture
def net(tmp_path):
    """(the server, a function giving host i's command prefix and server URL, hosts or None)."""
    hosts = Hosts(2) if Hosts.available() else None
    server = PgServer(tuple(hosts.server_address(i) for i in range(2)) if hosts else ())
    if hosts is None:
        warnings.warn("network namespaces unavailable (root and iproute2 needed): the test "
                      "hosts are processes on this machine reaching the server over TCP")

    def host(i):
        if hosts is None:
            return [], server.url()
        return hosts.command(i, []), server.url(hosts.server_address(i))
    try:
        yield server, host, hosts
    finally:
        if hosts is not None:
            hosts.close()
        server.remove()


def worker(host, i, path, tmp, *extra, trials, results=None):
    prefix, url = host(i)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cmd = [*prefix, sys.executable, "-m", "jaxcollective.sweep", str(path), f"--trials={trials}",
           f"--storage={url}", "--study=s", f"--results={results or tmp / f'host{i}.jsonl'}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def study(server):
    return optuna.load_study(study_name="s", storage=server.url())


def test_two_hosts_run_exactly_the_trials_asked_for(net, tmp_path):
    server, host, hosts = net
    path = sweep_file(tmp_path)
    procs = [worker(host, i, path, tmp_path, "--parallel=2", trials=8) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        assert "surplus" not in err
    per_host = [lines(tmp_path / f"host{i}.jsonl") for i in range(2)]
    recs = per_host[0] + per_host[1]
    assert len(recs) == 8 and len({r["sweep_trial"] for r in recs}) == 8
    assert len({(r["config"]["learning_rate"], r["config"]["seed"]) for r in recs}) == 8
    assert all(per_host), [len(h) for h in per_host]  # both hosts worked
    print(f"trials per host: {[len(h) for h in per_host]}")
    # every line on the host that ran it: its worker's pid ran in that host
    states = [t.state.name for t in study(server).trials]
    assert states == ["COMPLETE"] * 8, states  # no surplus, nothing failed
    both = tmp_path / "all.jsonl"
    both.write_text("".join((tmp_path / f"host{i}.jsonl").read_text() for i in range(2)))
    p = subprocess.run([sys.executable, "-m", "jaxcollective.report", f"--results={both}",
                        f"--out={tmp_path / 'report'}"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "8 finished runs in the tables" in (tmp_path / "report" / "summary.md").read_text()


def test_the_server_restarted_mid_study_the_workers_wait_and_finish(net, tmp_path):
    server, host, _ = net
    path = sweep_file(tmp_path, epochs=4)
    p = worker(host, 0, path, tmp_path, "--heartbeat=10", trials=2)
    deadline = time.time() + 300
    while not lines(tmp_path / "host0.jsonl"):
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.1)
    server.stop()  # down for a few seconds, then back
    time.sleep(3)
    server.start()
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "the study's database cannot be reached" in err and "is back after" in err, err[-3000:]
    assert "Traceback" not in err
    assert [t.state.name for t in study(server).trials] == ["COMPLETE"] * 2
    assert len(lines(tmp_path / "host0.jsonl")) == 2


@pytest.mark.parametrize("shared", [True, False], ids=["shared-checkpoints", "own-checkpoints"])
def test_a_host_killed_mid_trial_is_picked_up_by_the_other(net, tmp_path, shared):
    server, host, hosts = net
    if hosts is None:
        pytest.skip("a host killed outright needs network namespaces (root, iproute2)")
    path = sweep_file(tmp_path, epochs=8)

    def checkpoints(i):  # one folder both hosts reach, or each host its own
        return tmp_path / ("ck" if shared else f"ck{i}")
    b = worker(host, 1, path, tmp_path, "--heartbeat=2", f"--set=checkpoint_dir={checkpoints(1)}",
               trials=3)
    deadline = time.time() + 300
    while not any(d.name.isdigit() and int(d.name) >= 2 for d in checkpoints(1).glob("*/*")):
        assert b.poll() is None and time.time() < deadline, b.communicate()[1][-3000:]
        time.sleep(0.05)
    killed_at = time.time()
    assert hosts.kill(1)  # every process of host 1, SIGKILL, no clean-up
    b.wait()
    a = worker(host, 0, path, tmp_path, "--heartbeat=2", f"--set=checkpoint_dir={checkpoints(0)}",
               trials=3)
    out, err = a.communicate(timeout=600)
    assert a.returncode == 0, err[-3000:]
    recs = lines(tmp_path / "host0.jsonl")
    (retry,) = [r for r in recs if "sweep_retry_of" in r]
    assert retry["sweep_retry_of"] == 0
    if shared:
        assert retry["resumed_from_epoch"] >= 2 and "resuming from epoch" in err
    else:
        assert retry["resumed_from_epoch"] == 0
        assert "trial 0: no checkpoint of it in" in err and "starts from epoch 0" in err, err
    assert [r["status"] for r in recs] == ["finished"] * 3 and not lines(tmp_path / "host1.jsonl")
    states = [t.state.name for t in study(server).trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states
    print(f"host 1 killed; host 0 ended the study {time.time() - killed_at:.1f} s later")


def test_a_storage_that_cannot_be_opened_is_one_line_before_any_training(net, tmp_path):
    server, _, _ = net
    path = sweep_file(tmp_path)
    closed = f"postgresql://sweep:x@127.0.0.1:{server.port + 1}/sweeps"
    for url, why in ((server.url(password="wrong"), "password authentication failed"),
                     (server.url(db="nodb"), 'database "nodb" does not exist'),
                     (closed, "refused"), ("postgresql://sweep@/", "")):
        for extra in ([], ["--parallel=2"]):
            p = subprocess.run([sys.executable, "-m", "jaxcollective.sweep", str(path), "--trials=1",
                                f"--storage={url}", f"--results={tmp_path / 'r.jsonl'}", *extra],
                               cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "WANDB_MODE": "disabled"})
            err = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(err) == 1, p.stderr[-2000:]
            assert why in err[0] and "wrong" not in err[0] and "--storage=" in err[0], err
    assert not (tmp_path / "r.jsonl").exists()
