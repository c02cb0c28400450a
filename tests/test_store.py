"""A study on a real PostgreSQL server, shared by test hosts in network namespaces: exact
trial counts across hosts, a host killed outright, the server restarted mid-study, and a
storage that cannot be opened. (tests/pg.py starts the server; without PostgreSQL's
binaries or permission for namespaces the tests say why they skip or fall back.)"""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from child import Child
from shared import committed_steps

from pg import Hosts, PgServer, pg_bindir

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        pg_bindir() is None,
        reason="PostgreSQL is not installed "
        "(Debian: apt-get install postgresql; .ci/run installs it)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(tmp, epochs=2, **params):
    spec = {
        "program": "run.py",
        "method": "random",
        "metric": {"name": "val/accuracy", "goal": "maximize"},
        "parameters": {
            "model_type": {"value": "shallow"},
            "dataset": {"value": "digits"},
            "target_params": {"value": 20000},
            "batch_size": {"value": 64},
            "epochs": {"value": epochs},
            "progress": {"value": False},
            "checkpoint_dir": {"value": str(tmp / "ck")},
            "checkpoint_every": {"value": 1},
            "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "seed": {"distribution": "int_uniform", "min": 0, "max": 10**6},
            **params,
        },
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lines(path):
    return (
        [json.loads(x) for x in Path(path).read_text().splitlines()] if Path(path).exists() else []
    )


@pytest.fixture
def net(tmp_path):
    """(the server, a function giving host i's command prefix and server URL, hosts or None)."""
    hosts = Hosts(2) if Hosts.available() else None
    server = PgServer(tuple(hosts.server_address(i) for i in range(2)) if hosts else ())
    if hosts is None:
        warnings.warn(
            "network namespaces unavailable (root and iproute2 needed): the test "
            "hosts are processes on this machine reaching the server over TCP"
        )

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
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "jaxcollective.sweep",
        str(path),
        f"--trials={trials}",
        f"--storage={url}",
        "--study=s",
        f"--results={results or tmp / f'host{i}.jsonl'}",
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


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
    states = [t.state.name for t in study(server).trials]
    assert states == ["COMPLETE"] * 8, states  # no surplus, nothing failed
    both = tmp_path / "all.jsonl"
    both.write_text("".join((tmp_path / f"host{i}.jsonl").read_text() for i in range(2)))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxcollective.report",
            f"--results={both}",
            f"--out={tmp_path / 'report'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert "8 finished runs in the tables" in (tmp_path / "report" / "summary.md").read_text()


def test_the_server_restarted_mid_study_the_workers_wait_and_finish(net, tmp_path):
    """The server goes down while a trial trains, and comes back: the worker waits (one
    line when the outage starts, one when it ends) and finishes the study. The worker is
    frozen while the server stops, so its next call (the epoch's report) meets the
    outage whatever the machine's speed."""
    server, host, _ = net
    path = sweep_file(tmp_path, epochs=4)
    p = worker(host, 0, path, tmp_path, "--heartbeat=10", trials=2)
    err = Child(proc=p)
    err.wait_line("trial 1: epoch 1/4")
    p.send_signal(signal.SIGSTOP)
    try:
        server.stop()
    finally:
        p.send_signal(signal.SIGCONT)
    err.wait_line("the study's database cannot be reached")
    server.start()
    text = err.finish()[1]
    assert p.returncode == 0, text[-3000:]
    assert "is back after" in text and "Traceback" not in text, text[-3000:]
    assert [t.state.name for t in study(server).trials] == ["COMPLETE"] * 2
    assert len(lines(tmp_path / "host0.jsonl")) == 2


def saved(folder, epoch):
    """Checkpoint folders with a saved step at or past `epoch`."""
    return [d for d in folder.glob("*") if max(committed_steps(d), default=0) >= epoch]


@pytest.mark.longest
def test_a_host_dying_at_the_end_of_a_study_leaves_it_complete(net, tmp_path):
    """Host A, a population of 2, hangs mid-trial (SIGSTOP: no work, no heartbeats);
    host B runs the study's last trial, then has nothing to claim while A's two are
    RUNNING: it waits. A is killed; after the heartbeat's grace B fails A's trials as
    stale, runs their retries from the shared checkpoints, and only then exits."""
    server, host, hosts = net
    if hosts is None:
        pytest.skip("a host killed outright needs network namespaces (root, iproute2)")
    path = sweep_file(tmp_path, epochs=20)
    a = worker(host, 0, path, tmp_path, "--population=2", "--heartbeat=1", trials=3)
    a_err = Child(proc=a)
    a_err.wait_for(lambda: len(saved(tmp_path / "ck", 2)) >= 2, "both members' epoch-2 checkpoints")
    hosts.kill(0, signal.SIGSTOP)
    # B's grace (2 x 12 s) outlasts its start and its trial, so A's trials are still
    # live to B when it runs out of trials to claim
    b = worker(host, 1, path, tmp_path, "--heartbeat=12", trials=3)
    b_err = Child(proc=b)
    b_err.wait_line("waiting for 2 trials running elsewhere")
    killed_at = time.time()
    assert hosts.kill(0)
    a.wait(timeout=60)  # reaped, as its shell would (a zombie's pid still looks alive)
    err = b_err.finish()[1]
    ended = time.time() - killed_at
    assert b.returncode == 0, err[-3000:]
    recs = lines(tmp_path / "host1.jsonl")
    assert [r["status"] for r in recs] == ["finished"] * 3 and not lines(tmp_path / "host0.jsonl")
    retries = [r for r in recs if "sweep_retry_of" in r]
    assert sorted(r["sweep_retry_of"] for r in retries) == [0, 1], recs
    assert all(r["resumed_from_epoch"] >= 2 for r in retries), err[-3000:]
    assert "resuming from epoch" in err
    states = [t.state.name for t in study(server).trials]
    assert sorted(states) == ["COMPLETE"] * 3 + ["FAIL"] * 2, states  # nothing RUNNING
    print(f"host A killed; host B ended the study {ended:.1f} s later")


def test_a_host_killed_mid_trial_is_restarted_by_the_other_without_its_checkpoint(net, tmp_path):
    """Each host its own checkpoint folder: the dead host's trial starts again from epoch 0
    on the other host, which says so."""
    server, host, hosts = net
    if hosts is None:
        pytest.skip("a host killed outright needs network namespaces (root, iproute2)")
    path = sweep_file(tmp_path, epochs=8)
    b = worker(
        host,
        1,
        path,
        tmp_path,
        "--heartbeat=2",
        f"--set=checkpoint_dir={tmp_path / 'ck1'}",
        trials=3,
    )
    Child(proc=b).wait_for(lambda: saved(tmp_path / "ck1", 2), "an epoch-2 checkpoint")
    assert hosts.kill(1)  # every process of host 1, SIGKILL, no clean-up
    b.wait()
    a = worker(
        host,
        0,
        path,
        tmp_path,
        "--heartbeat=2",
        f"--set=checkpoint_dir={tmp_path / 'ck0'}",
        trials=3,
    )
    out, err = a.communicate(timeout=600)
    assert a.returncode == 0, err[-3000:]
    recs = lines(tmp_path / "host0.jsonl")
    (retry,) = [r for r in recs if "sweep_retry_of" in r]
    assert retry["sweep_retry_of"] == 0 and retry["resumed_from_epoch"] == 0
    assert "trial 0: no checkpoint of it in" in err and "starts from epoch 0" in err, err
    assert [r["status"] for r in recs] == ["finished"] * 3 and not lines(tmp_path / "host1.jsonl")
    states = [t.state.name for t in study(server).trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states


def test_a_storage_that_cannot_be_opened_is_one_line_before_any_training(net, tmp_path):
    server, _, _ = net
    path = sweep_file(tmp_path)
    closed = f"postgresql://sweep:x@127.0.0.1:{server.port + 1}/sweeps"
    for url, why in (
        (server.url(password="wrong"), "password authentication failed"),
        (server.url(db="nodb"), 'database "nodb" does not exist'),
        (closed, "refused"),
        ("postgresql://sweep@/", ""),
    ):
        for extra in ([], ["--parallel=2"]):
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "jaxcollective.sweep",
                    str(path),
                    "--trials=1",
                    f"--storage={url}",
                    f"--results={tmp_path / 'r.jsonl'}",
                    *extra,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "WANDB_MODE": "disabled"},
            )
            err = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(err) == 1, p.stderr[-2000:]
            assert why in err[0] and "wrong" not in err[0] and "--storage=" in err[0], err
    assert not (tmp_path / "r.jsonl").exists()
