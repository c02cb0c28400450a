"""The learning rate's plateau reductions and early stopping (docs/design.md, "Training"):
the rules on written curves, a run that follows them, its continuation from a
checkpoint, population members, and the config's checks."""

import json

import numpy as np
import pytest

from jaxcollective.config import Config, ConfigError
from jaxcollective.train.loop import train_and_evaluate
from jaxcollective.train.schedule import learning_rates, stops
from jaxcollective.train.writers import Writer
from presets import debug_config


class Recorder(Writer):
    def __init__(self):
        self.rows, self.record = [], None

    def log(self, row):
        self.rows.append(row)

    def finish(self, record):
        self.record = record


def history(*curves):
    """A history of R replicas' validation accuracies (one curve per replica)."""
    return [{"val/accuracy": np.array(v, np.float32)} for v in zip(*curves)]


def expected_lrs(curve, lr, patience, factor):
    """Keras' ReduceLROnPlateau (mode max, min_delta 0, no cooldown), written out: the
    rate of each epoch of a run whose validation accuracy after each epoch is `curve`."""
    out, best, wait = [], -1.0, 0
    for v in curve:
        out.append(lr)
        if v > best:
            best, wait = v, 0
        else:
            wait += 1
            if wait == patience:
                lr, wait = lr * factor, 0
    return out


def expected_stop(curve, patience):
    """Keras' EarlyStopping (mode max, min_delta 0): the epoch after which the run ends."""
    best, wait = -1.0, 0
    for e, v in enumerate(curve, 1):
        best, wait = (v, 0) if v > best else (best, wait + 1)
        if wait >= patience:
            return e
    return None


def test_the_rules_on_written_curves():
    cfg = Config.from_dict(
        {
            "learning_rate": 0.1,
            "lr_plateau_patience": 2,
            "lr_plateau_factor": 0.5,
            "early_stopping_patience": 3,
            "num_seeds": 2,
        }
    )
    a = [50, 60, 60, 59, 61, 61, 61, 60]  # a tie is no new best
    b = [50, 51, 52, 53, 54, 55, 56, 57]  # never a plateau
    want = [expected_lrs(a, 0.1, 2, 0.5), expected_lrs(b, 0.1, 2, 0.5)]
    for e in range(len(a)):  # the rate of epoch e + 1, from the e epochs before it
        got = learning_rates(cfg, history(a[:e], b[:e]))
        assert got.tolist() == pytest.approx([want[0][e], want[1][e]], rel=1e-6)
    # a's rates: two bad epochs (60, 59) halve it before epoch 5, two more (61, 61) before 8
    assert learning_rates(cfg, history(a[:4], b[:4])).tolist() == pytest.approx([0.05, 0.1])
    assert learning_rates(cfg, history(a[:7], b[:7])).tolist() == pytest.approx([0.025, 0.1])
    assert learning_rates(cfg, []).tolist() == pytest.approx([0.1, 0.1])
    # early stopping reads the mean over the replicas: b keeps it rising
    assert not any(stops(cfg, history(a[:e], b[:e])) for e in range(9))
    one = cfg.replace(num_seeds=1)
    assert [e for e in range(1, 9) if stops(one, history(a[:e]))] == [8]
    assert expected_stop(a, 3) == 8
    # off: a constant rate and no stop
    off = Config.from_dict({"learning_rate": 0.1})
    assert learning_rates(off, history(a)).tolist() == pytest.approx([0.1])
    assert not stops(off, history([50] * 30))


def test_bad_values_are_one_line_and_the_off_state_is_the_old_run():
    for key, value, want in (
        ("lr_plateau_patience", -1, "an integer >= 0"),
        ("early_stopping_patience", "x", "an integer"),
        ("lr_plateau_factor", 1.0, "strictly between 0 and 1"),
        ("lr_plateau_factor", 0, "strictly between 0 and 1"),
    ):
        with pytest.raises(ConfigError, match=want) as err:
            Config.from_dict({key: value})
        assert "\n" not in str(err.value) and key in str(err.value)
    from jaxcollective.api import unused_keys
    from jaxcollective.train.checkpoint import fingerprint

    base = Config.from_dict({"model_type": "shallow"})
    # off, the plateau keys are not part of what the run computes (fingerprint unchanged)
    assert fingerprint(base) == fingerprint(base.replace(lr_plateau_factor=0.5))
    assert "lr_plateau_patience" not in base.trajectory()
    assert unused_keys(base, {"lr_plateau_factor"}) == {"lr_plateau_factor": "plateau-off"}
    on = base.replace(lr_plateau_patience=3)
    assert fingerprint(on) != fingerprint(base)
    assert fingerprint(on) != fingerprint(on.replace(lr_plateau_factor=0.5))
    # early stopping only decides the length: a run continues another's checkpoint
    assert fingerprint(on.replace(early_stopping_patience=5)) == fingerprint(on)


RUN = {
    "model_type": "shallow",
    "dataset": "digits",
    "epochs": 30,
    "learning_rate": 0.01,
    "lr_plateau_patience": 1,
    "lr_plateau_factor": 0.3,
    "early_stopping_patience": 3,
}


@pytest.fixture(scope="module")
def whole():
    """The run uninterrupted: its rows and record."""
    w = Recorder()
    train_and_evaluate(debug_config(RUN), w)
    return w


def test_a_run_follows_both_rules(whole):
    rec, rows = whole.record, whole.rows
    curve = rec["val_accuracy_curves"][0]
    assert [r["val/accuracy"] for r in rows] == pytest.approx(curve, abs=1e-4)
    lrs = [r["lr"] for r in rows]
    assert lrs == pytest.approx(expected_lrs(curve, 0.01, 1, 0.3), rel=1e-6)
    assert len(set(np.round(lrs, 9))) >= 2  # the rate was reduced at least once
    # it stopped where the rule says, before its 30 epochs, and says so
    assert rec["epochs_completed"] == expected_stop(curve, 3) < 30
    assert rec["status"] == "finished" and rec["stopped_early"] is True


def test_a_continued_run_sets_the_same_rates_and_stops_at_the_same_epoch(whole, tmp_path):
    rows = whole.rows
    # checkpoint after the first reduction: the continuation must recompute it
    k = next(i for i, r in enumerate(rows) if r["lr"] < 0.99 * RUN["learning_rate"])
    assert 1 <= k < len(rows) - 1
    ck = {"checkpoint_dir": str(tmp_path / "ck"), "keep_checkpoint": True}
    first = Recorder()
    train_and_evaluate_ck(debug_config({**RUN, **ck, "epochs": k}), first)
    assert first.record["epochs_completed"] == k and not first.record["stopped_early"]
    rest = Recorder()
    train_and_evaluate_ck(debug_config({**RUN, **ck}), rest)
    assert rest.record["resumed_from_epoch"] == k
    assert [r["lr"] for r in rest.rows] == pytest.approx([r["lr"] for r in rows[k:]], rel=1e-6)
    assert [r["val/accuracy"] for r in rest.rows] == pytest.approx(
        [r["val/accuracy"] for r in rows[k:]], abs=1e-4
    )
    assert rest.record["epochs_completed"] == whole.record["epochs_completed"]
    assert rest.record["stopped_early"]
    # the stopped run, asked for more epochs, trains none: the rule already holds
    again = Recorder()
    train_and_evaluate_ck(debug_config({**RUN, **ck, "epochs": 60}), again)
    assert again.rows == [] and again.record["epochs_completed"] == len(rows)
    assert again.record["final/test_accuracy"] == pytest.approx(whole.record["final/test_accuracy"])


def train_and_evaluate_ck(cfg, writer):
    """A run with its checkpoints, as run.py trains it (continues the config's checkpoint)."""
    from jaxcollective.train.checkpoint import check_writable, open_checkpoints

    check_writable(cfg)  # makes the folder, as run.py's preflight
    checkpointer, meta = open_checkpoints(cfg)
    return train_and_evaluate(cfg, writer, checkpointer=checkpointer, resume_meta=meta)


POP_SWEEP = """
program: run.py
method: grid
metric: {name: val/accuracy, goal: maximize}
parameters:
  model_type: {value: shallow}
  dataset: {value: digits}
  epochs: {value: 12}
  progress: {value: false}
  batch_size: {value: 64}
  optimizer: {value: sgd}
  lr_plateau_factor: {value: 0.3}
  early_stopping_patience: {value: 2}
  lr_plateau_patience: {values: [0, 1]}
  learning_rate: {values: [0.2, 0.1]}
"""


@pytest.mark.slow
def test_population_members_follow_the_rules_as_sequential_runs(tmp_path):
    """Members of one population (constant and plateau rates mixed) stop where their own
    curves say, and train as a sequential run of their config (which reduces its rate
    and stops by the same rules)."""
    from jaxcollective.sweep.runner import main

    (tmp_path / "pop.yaml").write_text(POP_SWEEP)
    results = tmp_path / "results.jsonl"
    assert (
        main([str(tmp_path / "pop.yaml"), "--trials=4", "--population=4", f"--results={results}"])
        == 0
    )
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(recs) == 4 and {r["population_slot"] for r in recs} == {0, 1, 2, 3}
    for r in recs:
        curve = r["val_accuracy_curves"][0]
        stop = expected_stop(curve, 2)
        assert r["stopped_early"] == (stop is not None)
        assert r["epochs_completed"] == (stop or 12)
        lr = r["config"]["learning_rate"]
        rule = expected_lrs(curve, lr, 1, 0.3) if r["config"]["lr_plateau_patience"] else [lr]
        assert r["last_lr"] == pytest.approx(rule[-1], rel=1e-6)
    assert any(r["last_lr"] < r["config"]["learning_rate"] for r in recs)  # a member reduced
    # each plateau member trains as a sequential run of its config (compared over the
    # first 5 epochs: float noise between the vmapped and the sequential program grows
    # with training, and at SGD's 0.3 has flipped one of 144 validation digits at epoch 8)
    for r in (r for r in recs if r["config"]["lr_plateau_patience"]):
        seq = Recorder()
        train_and_evaluate(Config.from_dict({**r["config"], "epochs": 5}), seq)
        assert seq.record["val_accuracy_curves"][0] == pytest.approx(
            r["val_accuracy_curves"][0][:5], abs=1e-4
        )
        assert [row["lr"] for row in seq.rows] == pytest.approx(
            expected_lrs(r["val_accuracy_curves"][0][:5], r["config"]["learning_rate"], 1, 0.3),
            rel=1e-6,
        )


def test_a_reduced_rate_reaches_the_device_and_moves_with_its_member():
    import jax

    from jaxcollective.data.datasets import load
    from jaxcollective.train.population import Population
    from jaxcollective.model.sizing import resolve

    cfg = debug_config({**RUN, "batch_size": 64})
    pop = Population(resolve(cfg), load(cfg), k=2)
    pop.assign(0, cfg)
    pop.assign(1, cfg.replace(seed=1))
    pop.set_learning_rate(1, 0.003)  # slot 1's plateau cut its rate

    def rates(p):
        return jax.device_get(p.state.opt_state.hyperparams["learning_rate"]).tolist()

    pop.epoch()
    assert rates(pop) == pytest.approx([0.01, 0.003])
    small, slots = pop.smaller([1])  # the population drains: slot 1 moves, its rate too
    small.epoch()
    assert slots == [0] and rates(small) == pytest.approx([0.003])
