"""Drop-in for the original (docs/design.md, "Coming from the original"): its keys, presets, command line, sweep file
and metric names."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxcollective.config import MODEL_TYPES, Config, ConfigError
from jaxcollective.data.datasets import load_digits, split_indices
from jaxcollective.main import main
from shared import made_once
from spec_metrics import EPOCH_KEYS, FINAL_KEYS
from test_sweeps import agent_launch
from wandb_offline import read_offline_run

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL_SWEEP = ROOT / "sweeps" / "original_phase1.yaml"

# docs/design.md, "Coming from the original", written out here (not read from the package).
ORIGINAL_PHASE1 = dict(
    batch_size=128,
    gradient_accumulation_steps=4,
    eval_batch_size=1024,
    learning_rate=1e-3,
    epochs=100,
    optimizer="adam",
    weight_decay=1e-4,
    use_augmentation=True,
    use_mixed_precision=False,
    topk=(1,),
    dataset="fashion_mnist",
    val_split=0.1,
    seed=42,
)
ORIGINAL_DEBUG = dict(
    batch_size=128,
    gradient_accumulation_steps=4,
    eval_batch_size=512,
    learning_rate=1e-3,
    epochs=5,
    optimizer="adam",
    weight_decay=0.0,
    use_augmentation=True,
    use_mixed_precision=True,
    topk=(1,),
    dataset="fashion_mnist",
    val_split=0.1,
    seed=42,
)
ORIGINAL_EPOCH_KEYS = {
    "param_efficiency/loss_per_log10_params",
    "param_efficiency/test_loss_per_log10_params",
}
ORIGINAL_FINAL_KEYS = {
    "final/param_efficiency/test_accuracy_per_log10_params",
    "final/loss_efficiency_per_log10_params",
}
ORIGINAL_SUMMARY_KEYS = {
    "best_val_accuracy",
    "best_epoch",
    "final_train_accuracy",
    "final_val_accuracy",
    "final_train_loss",
    "final_val_loss",
    "final_test_accuracy",
    "final_test_loss",
    "model_params",
}


@pytest.mark.parametrize("name,spec", [("phase1", ORIGINAL_PHASE1), ("debug", ORIGINAL_DEBUG)])
def test_presets_equal_the_originals_configs(name, spec):
    cfg = Config.from_dict({}, preset=name)
    for k, v in spec.items():
        assert getattr(cfg, k) == v, k
    assert cfg.dtype == ("bfloat16" if spec["use_mixed_precision"] else "float32")


def test_mixed_precision_given_wins_over_preset_and_contradiction_is_an_error():
    assert Config.from_dict({"dtype": "float32"}, preset="debug").dtype == "float32"
    assert Config.from_dict({"use_mixed_precision": "false"}, preset="debug").dtype == "float32"
    assert Config.from_dict({"use_mixed_precision": "True"}, preset="phase1").dtype == "bfloat16"
    assert Config.from_dict({"use_mixed_precision": True, "dtype": "bfloat16"}).use_mixed_precision
    with pytest.raises(ConfigError, match="use_mixed_precision=True contradicts dtype=float32"):
        Config.from_dict({"use_mixed_precision": True, "dtype": "float32"})


@pytest.mark.parametrize("raw", ["(1, 5)", "[1, 5]", "1,5", (1, 5)])
def test_topk_in_the_originals_forms(raw):
    assert Config.from_dict({"topk": raw}).extra_topk == (5,)
    assert Config.from_dict({"topk": "(1,)"}).extra_topk == ()


@pytest.mark.parametrize("bad", ["(0,)", "(1, 11)", "[]"])
def test_bad_topk_and_val_split_are_errors(bad):
    with pytest.raises(ConfigError, match="topk"):
        Config.from_dict({"topk": bad})
    with pytest.raises(ConfigError, match="val_split"):
        Config.from_dict({"val_split": "1.0"})


def test_val_split_is_honoured():
    train, val = split_indices(1000, seed=0, val_split=0.25)
    assert len(val) == 250 and len(train) == 750 and not set(train) & set(val)


def sample(spec, rng):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    lo, hi = spec["min"], spec["max"]
    if spec.get("distribution") == "log_uniform_values":
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return rng.uniform(lo, hi)


def sampled_original_runs(seed=0):
    params = yaml.safe_load(ORIGINAL_SWEEP.read_text())["parameters"]
    rng = random.Random(seed)
    for mt in MODEL_TYPES:
        cfg = {k: sample(v, rng) for k, v in params.items()}
        cfg["model_type"] = mt
        yield cfg


@pytest.mark.parametrize("params", list(sampled_original_runs()), ids=lambda p: p["model_type"])
def test_original_sweep_runs_resolve_as_the_agent_launches_them(params, capsys):
    argv = [f"--{k}={v}" for k, v in params.items()]  # wandb agent: --key=str(value)
    assert main([*argv, "--dry_run"]) == 0, capsys.readouterr().err
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["model_type"] == params["model_type"] and d["model_params"] > 0
    assert d["unused_keys"]["num_workers"] == "on-device-data"
    if params["model_type"] == "collective":
        assert d["unused_keys"]["target_params"] == "baseline-only"
    else:
        assert abs(d["model_params"] - params["target_params"]) / params["target_params"] < 0.01
        assert d["unused_keys"]["n_total"] == "collective-only"
    cfg = Config.from_values({k: str(v) for k, v in params.items()})
    # the original's base config (the preset), then the sweep's values
    assert cfg.gradient_accumulation_steps == 4 and cfg.dtype == "float32"
    assert cfg.eval_batch_size == params["eval_batch_size"] and cfg.seed == 42


@pytest.fixture(scope="module")
def original_run(tmp_path_factory):
    """One sampled run of the original's sweep, launched as its agent does, on digits."""
    params = next(p for p in sampled_original_runs(1) if p["model_type"] == "collective")
    params.update(
        dataset="digits",
        input_dim=64,
        epochs=2,
        batch_size=256,
        topk="(1, 5)",
        use_torch_compile=True,
        log_interval=10,
        training_strategy="standard",
        use_gpu=True,
        wandb_name="original-sweep-run",
    )

    def make(folder):
        p = agent_launch(folder, params, "orig1")
        assert p.returncode == 0, p.stderr[-3000:]

    tmp = made_once(tmp_path_factory, "compat_original_run", make)
    return params, tmp, read_offline_run(tmp), json.loads((tmp / "results.jsonl").read_text())


@pytest.mark.slow
def test_original_sweep_run_logs_every_metric_name_of_both(original_run):
    params, tmp, run, rec = original_run
    rows = [h for h in run.history if "epoch" in h]
    assert [h["epoch"] for h in rows] == [1, 2]
    metric = yaml.safe_load(ORIGINAL_SWEEP.read_text())["metric"]["name"]
    top5 = {"train/accuracy_top5", "val/accuracy_top5", "test/accuracy_top5"}
    for h in rows:  # the sweep's metric in every history row: its Hyperband can act
        assert metric in h
        assert EPOCH_KEYS | ORIGINAL_EPOCH_KEYS | top5 <= set(h), sorted(
            EPOCH_KEYS | ORIGINAL_EPOCH_KEYS | top5 - set(h)
        )
        for split in ("train", "val", "test"):
            assert h[f"{split}/accuracy_top5"] >= h[f"{split}/accuracy"]
    want = FINAL_KEYS | ORIGINAL_FINAL_KEYS | ORIGINAL_SUMMARY_KEYS | {"final/test_accuracy_top5"}
    assert want <= set(run.summary), sorted(want - set(run.summary))
    assert want <= set(rec), sorted(want - set(rec))
    assert run.summary["final_test_accuracy"] == pytest.approx(rows[-1]["test/accuracy"])
    assert 1 <= run.summary["best_epoch"] <= 2 and run.name == "original-sweep-run"
    assert run.config["unused_keys"] == {
        "log_interval": "per-epoch-logging",
        "num_workers": "on-device-data",
        "target_params": "baseline-only",
        "training_strategy": "single-strategy",
        "use_gpu": "see-device",
        "use_torch_compile": "always-compiled",
    }
    assert run.config["gradient_accumulation_steps"] == 4 and run.config["seed"] == 42


def test_eval_batch_size_does_not_change_the_metrics():
    # One trained model evaluated in batches of 7 and of 1024, each batched as its run
    # batches it. (Two runs would train in two programs, whose float rounding XLA may
    # order differently.)
    from functools import partial

    import jax

    from jaxcollective.model.sizing import resolve
    from jaxcollective.train.metrics import SPLITS
    from jaxcollective.train.step import evaluate_splits
    from jaxcollective.train.trainer import Trainer, over_replicas

    ds = load_digits()
    cfg = Config.from_dict(
        {
            "model_type": "shallow",
            "dataset": "digits",
            "batch_size": 64,
            "target_params": 100_000,
            "topk": "(1, 3)",
        }
    )
    small, large = [Trainer(resolve(cfg.replace(eval_batch_size=e)), ds) for e in (7, 1024)]
    assert small.data.test_idx_MxE.shape[1] == 7 and large.data.test_idx_MxE.shape[1] == 1024
    state, _ = small.epoch(small.init(), 0)

    def metrics(tr):  # as the epoch evaluates, mapped over the replicas
        ev = jax.jit(over_replicas(partial(evaluate_splits, tr.step), in_axes=(0, None, 0)))
        parts = ev(state, tr.data, tr.rep)
        return {
            f"{split}/{k}": float(v[0])
            for split, part in zip(SPLITS[1:], parts)
            for k, v in part.items()
        }

    got, want = metrics(small), metrics(large)
    assert {"test/accuracy", "test/accuracy_top3", "val/accuracy"} <= set(got), got
    for k in got:
        if k.endswith("loss"):
            assert got[k] == pytest.approx(want[k], rel=1e-6), k  # sums in another order
        else:
            assert got[k] == want[k], k  # counts: exactly equal


@pytest.mark.slow
def test_the_originals_command_line(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    p = subprocess.run(
        [
            sys.executable,
            "run.py",
            "--config",
            "phase1",
            "--model",
            "shallow",
            "--dataset=digits",
            "--epochs=2",
            f"--results={tmp_path / 'r.jsonl'}",
            "--progress=false",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads((tmp_path / "r.jsonl").read_text())
    assert rec["model_type"] == "shallow" and rec["epochs_completed"] == 2
    assert rec["config"]["gradient_accumulation_steps"] == 4 and rec["config"]["seed"] == 42
