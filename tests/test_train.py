"""The training engine: one-step loss, accumulation, accuracy on digits, divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcollective.config import Config
from presets import debug_config
from jaxcollective.data import load_digits
from jaxcollective.experiment import train_and_evaluate
from jaxcollective.sizing import resolve
from jaxcollective.train import (DeviceData, diversity_penalty, init_state, loss_fn, make_step,
                                 prepare, stream_keys, train_step)
from jaxcollective.writers import Writer
from spec_metrics import EPOCH_KEYS, FINAL_KEYS


class Recorder(Writer):
    def __init__(self):
        self.rows, self.info, self.record = [], None, None

    def start(self, info):
        self.info = info

    def log(self, row):
        self.rows.append(row)

    def finish(self, record):
        self.record = record


def fixed_batch(n=32):
    ds = load_digits()
    return jnp.asarray(ds.x_train[:n]), jnp.asarray(ds.y_train[:n])


def one_step(step, x, y, seed=0):
    """Loss before and after one update on a fixed batch (single replica)."""
    state = init_state(step, stream_keys(seed)["params"])
    data = DeviceData(x, y, x, y, None, None)
    keys = {n: stream_keys(seed)[n] for n in ("dropout", "augment")}
    idx = jnp.arange(len(y))[None]
    update = jax.jit(lambda s, i, k, d: train_step(step, s, i, k, d))
    state, m0 = update(state, idx, keys, data)
    _, m1 = update(state, idx, keys, data)
    return float(m0["loss"]), float(m1["loss"])


def test_loss_after_one_step_is_pinned():
    cfg = debug_config({"dataset": "digits", "batch_size": 32})
    x, y = fixed_batch()
    before, after = one_step(make_step(resolve(cfg), cfg.dataset_info), x, y)
    # Pinned from this implementation; a change here is a change of the experiment.
    assert before == pytest.approx(4.14891, rel=1e-4)
    assert after == pytest.approx(2.80487, rel=1e-4)
    assert after < before


def test_diversity_loss_enters_the_objective():
    x, y = fixed_batch()
    base = debug_config({"dataset": "digits", "batch_size": 32})
    div = base.replace(use_expert_diversity=True, use_analyst_diversity=True, diversity_lambda=0.5)
    step = make_step(resolve(div), div.dataset_info)
    state = init_state(step, stream_keys(0)["params"])
    xb = prepare(step, x, None)
    _, (_, m) = loss_fn(step, state.params, state.stats, xb, y, jax.random.key(0))
    assert float(m["loss_diversity_expert"]) > 0 and float(m["loss_diversity_analyst"]) > 0
    assert float(m["loss"]) == pytest.approx(float(m["loss_prediction"] + m["loss_diversity_expert"]
                                                   + m["loss_diversity_analyst"]), rel=1e-6)


def test_diversity_definition():
    a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    h = jnp.stack([a, a, jnp.zeros_like(a), -a])  # 4 members, batch 2
    # pairs: (0,1)=1, (0,2)=0, (0,3)=1 (abs of -1), (1,2)=0, (1,3)=1, (2,3)=0 -> mean 0.5
    assert float(diversity_penalty(h, 1.0)) == pytest.approx(0.5)
    assert float(diversity_penalty(h, 2.0)) == pytest.approx(0.25)
    # a zeroed member (model-level dropout) has a finite gradient, not sqrt's 0 * inf =
    # NaN (drop_members then multiplies it by 0); with NaN, training diverged at once
    g = jax.grad(lambda h: diversity_penalty(h, 1.0))(h)
    assert bool(jnp.isfinite(g).all())


class Linear2(nnx.Module):
    """No BatchNorm, no dropout: accumulation must equal one big batch exactly."""

    def __init__(self, key):
        rngs = nnx.Rngs(params=key)
        self.a = nnx.Linear(64, 32, rngs=rngs)
        self.b = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return self.b(jax.nn.relu(self.a(x))), {}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_accumulated_steps_equal_one_big_step(optimizer):
    x, y = fixed_batch(64)
    results = []
    for bs, k in ((64, 1), (16, 4)):
        cfg = debug_config({"model_type": "shallow", "dataset": "digits", "batch_size": bs,
                                "gradient_accumulation_steps": k, "optimizer": optimizer,
                                "weight_decay": 1e-3, "target_params": 200_000})
        step = make_step(resolve(cfg), cfg.dataset_info, build=Linear2)
        state = init_state(step, stream_keys(0)["params"])
        data = DeviceData(x, y, x, y, None, None)
        keys = {n: jax.random.key(1) for n in ("dropout", "augment")}
        update = jax.jit(lambda s, i, k, d: train_step(step, s, i, k, d))
        state, m = update(state, jnp.arange(64).reshape(k, bs), keys, data)
        results.append((state.params, float(m["loss"]) / k))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 results[0][0], results[1][0])
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model_type,extra", [
    ("shallow", {"target_params": 200_000}),
    ("collective", {}),
])
def test_digits_reaches_95_percent_within_5_epochs(model_type, extra):
    # measured after 5 epochs: 98.9% (collective) and 98.6% (shallow); with seeds 1 and
    # 2, 96.4-98.1% (after 10 epochs: 98.3% and 98.1%)
    cfg = Config.from_dict({"model_type": model_type, "dataset": "digits", "epochs": 5,
                            "batch_size": 64, **extra})
    rec = Recorder()
    record = train_and_evaluate(cfg, rec)
    assert record["status"] == "finished" and record["epochs_completed"] == 5
    assert record["final/test_accuracy"] >= 95.0, record["final/test_accuracy"]
    if model_type == "shallow":
        assert abs(record["model_params"] - 200_000) / 200_000 < 0.01
    # one row per epoch, each with val and test evaluated
    assert len(rec.rows) == 5


def test_same_metric_set_for_every_model_type():
    keys = []
    for mt in ("collective", "deep_resnet"):
        cfg = debug_config({"model_type": mt, "dataset": "digits", "epochs": 1,
                                "batch_size": 64})
        rec = Recorder()
        train_and_evaluate(cfg, rec)
        keys.append((set(rec.rows[0]), {k for k in rec.record if k.startswith("final/")}))
    assert keys[0] == keys[1]
    assert EPOCH_KEYS <= keys[0][0] and FINAL_KEYS <= keys[0][0] and FINAL_KEYS <= keys[0][1]


def test_divergence_is_recorded_not_reported_as_a_result():
    cfg = Config.from_dict({"model_type": "shallow", "dataset": "digits", "epochs": 5,
                            "optimizer": "sgd", "learning_rate": 1e30, "target_params": 200_000})
    rec = Recorder()
    record = train_and_evaluate(cfg, rec)
    assert record["status"] == "diverged" and record["diverged"] is True
    assert record["epochs_completed"] < 5


def test_bfloat16_trains():
    cfg = Config.from_dict({"model_type": "shallow", "dataset": "digits", "epochs": 5,
                            "dtype": "bfloat16", "batch_size": 64, "target_params": 200_000})
    record = train_and_evaluate(cfg, Recorder())
    assert record["final/test_accuracy"] > 85.0
