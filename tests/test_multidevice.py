"""Data parallel on 4 forced CPU devices equals one device, up to float error."""

import pytest
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end, in subprocesses

SCRIPT = r"""
import json, sys, jax, numpy as np
from jaxcollective.config import Config
sys.path.insert(0, "tests")
from presets import debug_config
from jaxcollective.data.datasets import load_digits
from jaxcollective.model.sizing import resolve
from jaxcollective.train.trainer import Trainer
assert len(jax.devices()) == 4, jax.devices()
# SGD: parameters are linear in the gradients, so float-level differences stay float-level
# (Adam divides by sqrt(v) and turns them into O(lr) steps where gradients are ~0).
cfg = debug_config({"dataset": "digits", "batch_size": 64, "use_augmentation": True,
                        "gradient_accumulation_steps": 2, "optimizer": "sgd",
                        "learning_rate": 0.05})
ds = load_digits()
out = {}
for n in (1, 4):
    trainer = Trainer(resolve(cfg), ds, devices=jax.devices()[:n])
    state = trainer.init()
    # One epoch: float-level differences (reduction order across devices) stay
    # float-level; longer training amplifies them (a ReLU or mask boundary flips).
    state, m = trainer.epoch(state, 0)
    out[n] = {"metrics": {k: float(v[0]) for k, v in jax.device_get(m).items()},
              "params": [np.asarray(l).ravel()[:50].tolist() for l in jax.tree.leaves(state.params)],
              "devices": len(jax.tree.leaves(state.params)[0].sharding.device_set)}
print(json.dumps(out))
"""


def test_four_devices_equal_one_device():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    one, four = out["1"], out["4"]
    assert (one["devices"], four["devices"]) == (1, 4)
    for k, v in one["metrics"].items():
        assert abs(v - four["metrics"][k]) <= 1e-3 * max(1.0, abs(v)), (k, v, four["metrics"][k])
    for a, b in zip(one["params"], four["params"]):
        for x, y in zip(a, b):
            assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)
