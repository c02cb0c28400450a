"""Population trials: members of one compiled program equal sequential runs of their
configs, and a slot takes a new run without compiling."""

import time

import jax
import numpy as np
import pytest

from presets import debug_config
from jaxcollective.data.datasets import load
from jaxcollective.train.loop import train_and_evaluate
from jaxcollective.train.population import Population
from jaxcollective.model.sizing import resolve
from jaxcollective.train.writers import Writer

# As the replica test (test_speed.py): SGD, dropout, model-level dropout, augmentation;
# compared after an epoch, where the vmapped program of K members and a sequential run's
# (one replica, not vmapped) agree to float noise for these seeds. (Not for every seed: float noise that moves a value across a ReLU or dropout
# boundary grows; seed 3 at XLA's optimisation level 0, as the tests compile, ends its
# first epoch 1e-3 apart in loss between 1 and 2 replicas, and bitwise equal at the
# default level.)
BASE = {
    "model_type": "collective",
    "dataset": "digits",
    "batch_size": 64,
    "use_augmentation": True,
    "use_drop_models": True,
    "optimizer": "sgd",
    "use_expert_diversity": True,
    "use_analyst_diversity": True,
}


class Rows(Writer):
    def __init__(self):
        self.rows = []

    def log(self, row):
        self.rows.append(row)


def sequential(cfg, epochs):
    w = Rows()
    train_and_evaluate(cfg.replace(epochs=epochs), w)
    return w.rows


@pytest.mark.slow
def test_members_equal_sequential_runs_and_a_slot_is_refilled_without_compiling():
    # members differ in every kind of VALUE key: seed, learning rate (optimizer state),
    # the diversity weight and temperature and the member-dropout rates (step values)
    a = debug_config({**BASE, "seed": 5, "learning_rate": 0.02})
    b = debug_config(
        {
            **BASE,
            "seed": 6,
            "learning_rate": 0.01,
            "diversity_lambda": 0.2,
            "diversity_temperature": 0.5,
            "drop_models_expert_rate": 0.4,
        }
    )
    c = debug_config(
        {
            **BASE,
            "seed": 7,
            "learning_rate": 0.03,
            "diversity_lambda": 0.0,
            "drop_models_analyst_rate": 0.3,
        }
    )
    ds = load(a)
    pop = Population(resolve(a), ds, k=2)
    assert pop.fits(b) and pop.fits(c)  # one program
    pop.assign(0, a)
    pop.assign(1, b)
    first = pop.epoch()
    assert pop.epochs == [1, 1]
    # slot 1's run ends after one epoch; the next run takes the slot at its own epoch 1
    pop.release(1)
    pop.assign(1, c)
    compiled = pop.trainer._epoch._cache_size()
    second = pop.epoch()
    assert pop.trainer._epoch._cache_size() == compiled  # no new program
    assert pop.epochs == [2, 1]

    def close(member, row):
        # measured: the training loss <= 3.7e-6 relative, validation and test losses <=
        # 7.6e-5 (evaluation's BatchNorm divides by sqrt(running var + eps), and a
        # near-constant feature's running var is ~0: see the replica test), accuracies equal
        assert float(member["train/loss"][0]) == pytest.approx(row["train/loss"], rel=1e-4)
        for key in ("val/loss", "test/loss"):
            assert float(member[key][0]) == pytest.approx(row[key], rel=1e-3), key
        for key in ("val/accuracy", "test/accuracy"):
            assert float(member[key][0]) == pytest.approx(row[key], abs=1e-4), key

    close(first[0], sequential(a, 1)[0])
    close(first[1], sequential(b, 1)[0])
    close(second[1], sequential(c, 1)[0])  # a fresh run, not slot 1's old state
    # members really differ (their own seeds and learning rates)
    assert float(second[0]["train/loss"][0]) != float(second[1]["train/loss"][0])
    # a draining population shrinks: slot 1's run moves, state and epoch counter as they
    # are, into a population of 1, and its next epoch is the one it would have trained
    small, slots = pop.smaller([1])
    assert small.k == 1 and slots == [0] and small.epochs == [1] and small.configs == [c]
    moved = small.epoch()[0]
    stayed = pop.epoch()[1]
    close(moved, {k: float(v[0]) for k, v in stayed.items()})


def test_a_member_must_share_the_program():
    a = debug_config({**BASE, "seed": 0})
    pop = Population(resolve(a), load(a), k=2)
    assert pop.fits(a.replace(learning_rate=0.3, seed=4))
    assert not pop.fits(a.replace(batch_size=32))
    with pytest.raises(Exception, match="program"):
        pop.assign(0, a.replace(batch_size=32))
    assert pop.free == [0, 1]
    jax.block_until_ready(pop.state)
    assert np.isfinite(np.asarray(jax.tree.leaves(pop.member_state(0).params)[0])).all()


SWEEP = """
program: run.py
method: random
metric: {name: val/accuracy, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, eta: 3}
parameters:
  dataset: {value: digits}
  epochs: {value: 3}
  progress: {value: false}
  batch_size: {value: 64}
  optimizer: {value: sgd}
  expert_hidden: {value: "[64, 32]"}
  expert_output: {value: 16}
  analyst_hidden: {value: "[32, 16]"}
  analyst_output: {value: 8}
  model_type: {values: [collective, shallow]}
  learning_rate: {distribution: log_uniform_values, min: 0.00001, max: 0.1}
  seed: {distribution: int_uniform, min: 0, max: 999}
"""


@pytest.mark.slow
def test_a_population_sweep_runs_every_trial_once_prunes_and_refills_without_compiling(tmp_path):
    import json

    from jaxcollective.train import trainer as train
    from jaxcollective.config import Config
    from jaxcollective.sweep.runner import main

    (tmp_path / "pop.yaml").write_text(SWEEP)
    results = tmp_path / "results.jsonl"
    before = set(train._PROGRAMS)
    assert (
        main([str(tmp_path / "pop.yaml"), "--trials=12", "--population=4", f"--results={results}"])
        == 0
    )
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["sweep_trial"] for r in recs) == list(range(12))  # each trial once
    assert {r["status"] for r in recs} <= {"finished", "pruned"}
    assert any(r["status"] == "pruned" for r in recs)
    assert {r["population_slot"] for r in recs} == {0, 1, 2, 3}
    # a population per model type (2 programs) of K=4, and as it drains at the end of
    # the study at most one smaller one per halving; each compiled once however many
    # trials passed through its slots
    new = {key: train._PROGRAMS[key] for key in set(train._PROGRAMS) - before}
    sizes = sorted(json.loads(key[0])["num_seeds"] for key in new)
    assert sizes.count(4) == 2 and set(sizes) <= {1, 2, 4} and len(sizes) <= 6
    assert all(p[2]._cache_size() == 1 for p in new.values())
    # each record's config is whole: it makes the trial's config again
    assert all(Config.from_dict(r["config"]).model_type == r["model_type"] for r in recs)
    # two members equal sequential runs of their configs (the fewest epochs: float
    # noise grows with training)
    for r in sorted(recs, key=lambda r: r["epochs_completed"])[:2]:
        cfg = Config.from_dict({**r["config"], "epochs": r["epochs_completed"]})
        seq = train_and_evaluate(cfg, Writer())
        assert r["final/test_loss"] == pytest.approx(seq["final/test_loss"], rel=2e-5)
        assert r["final/best_val_accuracy"] == pytest.approx(
            seq["final/best_val_accuracy"], abs=1e-4
        )


@pytest.mark.slow
def test_sigkill_during_a_population_then_the_same_command_loses_and_repeats_nothing(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    from jaxcollective.config import Config

    spec = yaml.safe_load(SWEEP)
    spec.pop("early_terminate")
    spec["parameters"].update(
        {
            "epochs": {"value": 6},
            "model_type": {"value": "shallow"},
            "target_params": {"value": 20000},
            "learning_rate": {"distribution": "log_uniform_values", "min": 0.005, "max": 0.05},
            "checkpoint_dir": {"value": str(tmp_path / "ck")},
            "checkpoint_every": {"value": 1},
        }
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = tmp_path / "r.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "jaxcollective.sweep",
        str(path),
        "--trials=6",
        "--population=4",
        f"--results={results}",
        f"--storage=sqlite:///{tmp_path / 's.db'}",
        "--heartbeat=2",
    ]
    root = Path(__file__).resolve().parents[1]
    p = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    ck = tmp_path / "ck"
    # killed once the four members have saved epoch 2 (their folders hold a step 2)
    while len(list(ck.glob("*/2"))) < 4:
        assert time.time() < deadline and p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not results.exists() or not results.read_text()  # nothing had finished
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["status"] for r in recs] == ["finished"] * 6
    retried = [r for r in recs if "sweep_retry_of" in r]
    # the four killed trials, each retried once, resumed from its checkpoint
    assert sorted(r["sweep_retry_of"] for r in retried) == [0, 1, 2, 3]
    assert all(r["resumed_from_epoch"] >= 2 for r in retried)
    assert len({json.dumps(r["config"], sort_keys=True) for r in recs}) == 6
    # a resumed member ends as an uninterrupted sequential run of its config
    r = retried[0]
    seq = train_and_evaluate(Config.from_dict(r["config"]), Writer())
    assert r["final/test_loss"] == pytest.approx(seq["final/test_loss"], rel=1e-4)
    assert r["final/test_accuracy"] == pytest.approx(seq["final/test_accuracy"], abs=0.3)


def test_population_auto_is_1_on_a_cpu_and_the_largest_that_fits_elsewhere(monkeypatch):
    from dataclasses import replace

    from jaxcollective.train import loop as experiment

    from jaxcollective.sweep import populations as sweep
    from jaxcollective.model.sizing import memory_need

    r = resolve(debug_config(BASE))
    assert sweep.auto_population(r) == 1  # this CPU

    class Gpu:
        platform = "gpu"

    memory = 2**30
    monkeypatch.setattr(jax, "devices", lambda *a: [Gpu()])
    monkeypatch.setattr(experiment, "device_memory", lambda d: memory)
    k = sweep.auto_population(r)

    def need(k):
        return sum(memory_need(replace(r, cfg=r.cfg.replace(num_seeds=k)), 60_000, 10_000).values())

    assert 1 < k < 256 and k & (k - 1) == 0
    assert need(k) <= 0.8 * memory < need(2 * k)
    # grown by measured throughput: a device that runs up to 8 members in the time of
    # one, then takes longer with every member, stops at 8 (16 gains too little)
    timed = []

    def measure(n):
        timed.append(n)
        return 1.0 if n <= 8 else n / 8 * 0.95

    assert sweep.auto_population(r, measure=measure) == min(8, k)
    assert timed == [n for n in (1, 2, 4, 8, 16) if n <= k]  # 16 measured, not kept
    assert sweep.grow_population(256, lambda n: 1.0) == 256  # never saturates: the cap
    assert sweep.grow_population(256, lambda n: float(n)) == 1  # a CPU: no gain at all
    assert sweep.grow_population(1, measure) == 1


def test_auto_population_times_real_populations_of_the_sweep(tmp_path):
    from jaxcollective.sweep.trials import Sweep
    from jaxcollective.sweep.populations import epoch_timer

    (tmp_path / "pop.yaml").write_text(SWEEP)
    sw = Sweep(
        str(tmp_path / "pop.yaml"),
        {"model_type": "shallow", "target_params": "20000"},
        str(tmp_path / "r.jsonl"),
    )
    # a population of 2 trains an epoch (compiling), then one more, which is the time
    from jaxcollective.train import population

    calls, real = [], population.Population.epoch

    def timed(self):
        t = time.perf_counter()
        out = real(self)
        calls.append((self.k, time.perf_counter() - t))
        return out

    population.Population.epoch = timed
    try:
        s = epoch_timer(sw, sw.base_cfg)(2)
    finally:
        population.Population.epoch = real
    assert [k for k, _ in calls] == [2, 2]
    assert calls[1][1] <= s <= calls[1][1] + 0.05


def test_an_impossible_population_is_one_line_before_any_trial(tmp_path, capsys):
    from jaxcollective.sweep.runner import main

    (tmp_path / "pop.yaml").write_text(SWEEP)
    rc = main(
        [
            str(tmp_path / "pop.yaml"),
            "--trials=2",
            "--population=10000000",
            f"--results={tmp_path / 'r.jsonl'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "x10000000" in err[0] and "free" in err[0]
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "sweeps.db").exists()
    assert main([str(tmp_path / "pop.yaml"), "--population=0"]) == 2


def tiny_sweep_file(tmp, method, **params):
    """A sweep of 20K-parameter shallow nets on digits (SGD), as YAML in `tmp`."""
    import yaml

    spec = {
        "program": "run.py",
        "method": method,
        "metric": {"name": "final/test_accuracy", "goal": "maximize"},
        "parameters": {
            "model_type": {"value": "shallow"},
            "dataset": {"value": "digits"},
            "target_params": {"value": 20000},
            "batch_size": {"value": 64},
            "optimizer": {"value": "sgd"},
            "progress": {"value": False},
            "checkpoint_dir": {"value": str(tmp / "ck")},
            **params,
        },
    }
    path = tmp / "pop.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_a_diverged_member_frees_its_slot_for_the_next_trial(tmp_path):
    """docs/sweeps.md: a finished, pruned or diverged member's slot takes the next trial
    at once; docs/design.md: a member that diverges frees its slot. A grid (the file's
    order): trial 0 (lr 1e30) diverges in its first epoch beside trial 1, and trial 2
    takes slot 0 while trial 1 still trains. In a subprocess, so that a slot never freed
    (a population that never drains) fails at the deadline instead of hanging."""
    import json
    import os
    import sys
    from pathlib import Path

    from child import Child

    optuna = pytest.importorskip("optuna")
    path = tiny_sweep_file(
        tmp_path, "grid", epochs={"value": 2}, learning_rate={"values": [1e30, 0.01, 0.02]}
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    with Child(
        [
            sys.executable,
            "-m",
            "jaxcollective.sweep",
            str(path),
            "--trials=3",
            "--population=2",
            f"--results={tmp_path / 'r.jsonl'}",
            f"--storage={url}",
            "--study=p",
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, WANDB_MODE="disabled"),
    ) as run:
        _, err = run.finish(timeout=120)
    assert run.proc.returncode == 0, run.output()
    recs = {
        r["sweep_trial"]: r
        for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())
    }
    assert sorted(recs) == [0, 1, 2]  # every trial ran, once
    assert [r["status"] for r in recs.values()].count("diverged") == 1
    assert recs[0]["status"] == "diverged" and recs[0]["config"]["learning_rate"] == 1e30
    assert recs[1]["status"] == recs[2]["status"] == "finished"
    assert recs[2]["epochs_completed"] == 2
    # trial 2 took the diverged member's slot, claimed while trial 1 was still training
    assert recs[2]["population_slot"] == recs[0]["population_slot"] != recs[1]["population_slot"]
    trials = optuna.load_study(study_name="p", storage=url).trials
    assert trials[2].datetime_start < trials[1].datetime_complete
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_population_auto_on_the_command_line_runs_one_trial_at_a_time_on_a_cpu(tmp_path, capsys):
    """docs/sweeps.md: `--population=auto` is 1 on a CPU. The sweep says so, and its trials
    run as with --population=1: one at a time, records without a population slot."""
    import json

    from jaxcollective.sweep.runner import main

    if jax.default_backend() != "cpu":
        pytest.skip("--population=auto is 1 on a CPU only")
    path = tiny_sweep_file(
        tmp_path,
        "random",
        epochs={"value": 1},
        learning_rate={"distribution": "log_uniform_values", "min": 1e-3, "max": 0.1},
    )
    argv = [str(path), "--trials=2", f"--results={tmp_path / 'r.jsonl'}", "--study=a"]
    assert main([*argv, "--population=auto"]) == 0
    err = capsys.readouterr().err
    assert "[sweep a] --population=auto: 1\n" in err, err
    recs = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["sweep_trial"] for r in recs) == [0, 1]
    assert {r["status"] for r in recs} == {"finished"}
    assert not any("population_slot" in r for r in recs)  # as --population=1 writes them
