"""What README.md and docs/ promise, each held by a small test against the docs' own text
(the section is named in each test's docstring): metric formulas, documented defaults,
the derivation's refusals, initialisation, the diversity loss, the data constants, the
sweep files, the local sweep's mapping, the study's sizes and the optimizers' updates."""

import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest
import yaml
from flax import nnx

import numpy_forward as npf
from jaxcollective import describe
from jaxcollective.data.augment import AUGMENTATIONS, AugSpec
from jaxcollective.config import DATASETS, Config, ConfigError
from jaxcollective.data.datasets import load_digits
from jaxcollective.train.metrics import efficiency_metrics, final_metrics, history_row
from jaxcollective.model.sizing import resolve
from jaxcollective.sweep.space import search_space
from jaxcollective.train.step import (
    DeviceData,
    init_state,
    loss_fn,
    make_step,
    prepare,
    stream_keys,
    train_step,
)
from presets import debug_config

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
BASELINES = ["shallow", "balanced", "deep", "very_deep", "deep_resnet", "very_deep_resnet"]


# ------------------------------------------------ docs/design.md, "Metrics"
def history_of(val_acc, test_acc, val_loss, test_loss, train_acc=None, train_loss=None):
    """A hand-made per-replica history: one dict per epoch of (replicas,) arrays."""
    out = []
    for e in range(len(val_acc)):
        m = {
            "train/loss": np.asarray(train_loss[e] if train_loss else [1.0] * len(val_acc[e])),
            "train/loss_prediction": np.asarray([0.9] * len(val_acc[e])),
            "train/loss_diversity_expert": np.asarray([0.05] * len(val_acc[e])),
            "train/loss_diversity_analyst": np.asarray([0.05] * len(val_acc[e])),
            "train/accuracy": np.asarray(train_acc[e] if train_acc else [50.0] * len(val_acc[e])),
            "val/accuracy": np.asarray(val_acc[e], np.float64),
            "val/loss": np.asarray(val_loss[e], np.float64),
            "test/accuracy": np.asarray(test_acc[e], np.float64),
            "test/loss": np.asarray(test_loss[e], np.float64),
        }
        out.append(m)
    return out


def test_final_efficiency_formulas_are_the_documented_ones():
    """docs/design.md "Metrics" (and docs/training.md): `final/param_efficiency` is the
    accuracy per 100K parameters, `final/accuracy_per_million_params` per million,
    `final/accuracy_per_log10_params` = accuracy / log10(P + 1), and the original's
    `final/param_efficiency/test_accuracy_per_log10_params` (test accuracy / log10(P + 1))
    and `final/loss_efficiency_per_log10_params` (final test loss / log10(P + 1)); with
    several replicas each final metric is their mean, with `*_std` beside it;
    `best_epoch` is 1-based; `final/best_val_accuracy` the best validation accuracy."""
    P = 567_044
    log_p = math.log10(P + 1)
    for acc in (88.5, 12.25):
        got = efficiency_metrics(acc, P)
        assert got["final/param_efficiency"] == pytest.approx(acc / 5.67044, rel=1e-12)
        assert got["final/accuracy_per_million_params"] == pytest.approx(acc / 0.567044, rel=1e-12)
        assert got["final/accuracy_per_log10_params"] == pytest.approx(acc / log_p, rel=1e-12)

    # 3 epochs, 2 replicas; the mean validation accuracy is best at epoch 2
    history = history_of(
        val_acc=[[80.0, 82.0], [86.0, 84.0], [85.0, 84.5]],
        test_acc=[[79.0, 81.0], [85.0, 83.0], [84.0, 86.0]],
        val_loss=[[0.7, 0.6], [0.5, 0.45], [0.52, 0.44]],
        test_loss=[[0.72, 0.62], [0.5, 0.47], [0.55, 0.41]],
    )
    f = final_metrics(history, P)
    acc, loss = 85.0, 0.48  # means of the last epoch's test accuracy and loss
    want = {
        "final/test_accuracy": acc,
        "final/test_loss": loss,
        "final/best_val_accuracy": (86.0 + 84.5) / 2,  # per replica best, then the mean
        "final/model_params": P,
        "final/param_efficiency": acc / (P / 100_000),
        "final/accuracy_per_million_params": acc / (P / 1_000_000),
        "final/accuracy_per_log10_params": acc / log_p,
        "final/param_efficiency/test_accuracy_per_log10_params": acc / log_p,
        "final/loss_efficiency_per_log10_params": loss / log_p,
        "best_val_accuracy": (86.0 + 84.5) / 2,
        "best_epoch": 2,
        "final_train_accuracy": 50.0,
        "final_val_accuracy": 84.75,
        "final_val_loss": 0.48,
        "final_test_accuracy": acc,
        "final_test_loss": loss,
        "model_params": P,
    }
    for k, v in want.items():
        assert f[k] == pytest.approx(v, rel=1e-12), k
    # the replicas' spread beside each mean
    assert f["final/test_accuracy_std"] == pytest.approx(np.std([84.0, 86.0], ddof=1))
    assert f["final/loss_efficiency_per_log10_params_std"] == pytest.approx(
        np.std([0.55 / log_p, 0.41 / log_p], ddof=1)
    )
    # and beside the original's names too
    assert f["final_test_accuracy_std"] == pytest.approx(np.std([84.0, 86.0], ddof=1))
    assert f["best_val_accuracy_std"] == pytest.approx(np.std([86.0, 84.5], ddof=1))
    assert f["final_val_loss_std"] == pytest.approx(np.std([0.52, 0.44], ddof=1))
    single = final_metrics(history_of([[80.0]], [[79.0]], [[0.7]], [[0.72]]), P)
    assert not any(k.endswith("_std") for k in single)  # one replica: no spread


def test_per_epoch_efficiency_formulas_are_the_documented_ones():
    """docs/design.md "Metrics", per epoch: `param_efficiency/accuracy_per_log10_params`
    is the validation accuracy / log10(P + 1), `.../test_accuracy_per_log10_params` the
    test accuracy's; docs/training.md: `param_efficiency/loss_per_log10_params` is the val
    loss / log10(P + 1), `.../test_loss_per_log10_params` the test loss's; every row
    also holds the final metrics as they stand after that epoch. (Exact to float64: at
    this P, log10(P) instead of log10(P + 1) is off by 1.5e-8 relative only.)"""
    P = 2_969_887
    log_p = math.log10(P + 1)
    cfg = Config.from_dict({})
    history = history_of(
        val_acc=[[70.0], [75.5]],
        test_acc=[[69.0], [74.0]],
        val_loss=[[0.9], [0.66]],
        test_loss=[[0.95], [0.7]],
    )
    row = history_row(2, history, cfg, P)
    assert row["epoch"] == 2 and row["model_params"] == P
    assert row["param_efficiency/accuracy_per_log10_params"] == pytest.approx(
        75.5 / log_p, rel=1e-12
    )
    assert row["param_efficiency/test_accuracy_per_log10_params"] == pytest.approx(
        74.0 / log_p, rel=1e-12
    )
    assert row["param_efficiency/loss_per_log10_params"] == pytest.approx(0.66 / log_p, rel=1e-12)
    assert row["param_efficiency/test_loss_per_log10_params"] == pytest.approx(
        0.7 / log_p, rel=1e-12
    )
    assert row["final/test_accuracy"] == pytest.approx(74.0)
    assert row["final/best_val_accuracy"] == pytest.approx(75.5)
    assert row["final/param_efficiency"] == pytest.approx(74.0 / (P / 1e5))


# ------------------------------------- documented defaults (docs/design.md, docs/training.md)
def test_documented_defaults():
    """The defaults the docs state: `lr_plateau_factor` 0.1 and both the plateau and early
    stopping off (0) (docs/training.md, docs/design.md "Training"); `expert_hidden`
    [512, 256], `analyst_hidden` [256, 128] ("The collective"); the adaptive width's
    bounds 64 and 2048 ("Derivation rules"); 10% held out for validation ("Data");
    float32 unless bf16 is asked for ("Training"); a baseline without `target_params`
    takes the collective's size ("Sizing"); MNIST (docs/training.md: "MNIST, the
    defaults"); `--results` runs/results.jsonl, `--checkpoint_dir` runs/checkpoints,
    `--resume=auto`, checkpoints on time unless `--checkpoint_every` (docs/training.md)."""
    c = Config.from_dict({})
    assert c.lr_plateau_factor == 0.1
    assert c.lr_plateau_patience == 0 and c.early_stopping_patience == 0
    assert c.expert_hidden == (512, 256) and c.analyst_hidden == (256, 128)
    assert c.adaptive_collective_min_dim == 64 and c.adaptive_collective_max_dim == 2048
    assert c.val_split == 0.1
    assert c.dtype == "float32" and c.use_mixed_precision is False
    assert c.target_params is None
    assert c.dataset == "mnist"
    assert c.results == "runs/results.jsonl"
    assert c.checkpoint_dir.rstrip("/") == "runs/checkpoints"
    assert c.resume == "auto" and c.checkpoint_every == 0 and c.keep_checkpoint is False


# --------------------------------------- docs/design.md, "Derivation rules"
@pytest.mark.parametrize(
    "values,key",
    [
        # int(2 experts * 128 * 0.003) = 0
        ({"c_expert": 0.003}, "c_expert"),
        # int(2 * 4 * 0.1) = 0 with a narrow expert output
        ({"expert_output": 4, "c_expert": 0.1}, "c_expert"),
        # adaptive width int(64 * (1 + log2 6)) = 229; int(229 * 0.001) = 0
        ({"c_collective": 0.001}, "c_collective"),
    ],
)
def test_a_width_of_zero_is_refused_naming_the_key_to_raise(values, key):
    """docs/design.md "Derivation rules": "Widths that come out as 0 are refused with a
    line naming the key to raise." Through `describe` (what a config resolves to) and the
    config's derived dims alike."""
    for resolve_it in (lambda: describe(values), lambda: Config.from_dict(values).dims):
        with pytest.raises(ConfigError) as e:
            resolve_it()
        msg = str(e.value)
        assert key in msg and "larger" in msg and "\n" not in msg, msg
    # the same config with the key raised resolves
    assert Config.from_dict({**values, key: 0.25}).dims.collective_input_dim > 0


# --------------------------- docs/design.md, "The collective" / "The baselines": init
@pytest.mark.parametrize(
    "model_type,extra",
    [
        ("collective", {}),
        ("collective", {"collective_version": "encoder_head"}),  # BatchNorm in the head
        *((t, {}) for t in BASELINES),
    ],
)
def test_initial_biases_are_zero_and_batchnorm_scales_one(model_type, extra):
    """docs/design.md "The collective", "Initialisation": "Biases 0; BatchNorm scale 1 and
    bias 0" (the baselines' Linear and BatchNorm layers alike, the residual
    projections included), as a run initialises a model (`init_state`), while the kernels
    are random."""
    cfg = debug_config({"model_type": model_type, "dataset": "digits", **extra})
    step = make_step(resolve(cfg), cfg.dataset_info)
    params = jax.jit(lambda k: init_state(step, k).params)(stream_keys(3)["params"])
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
    seen = {"bias": 0, "scale": 0, "kernels": 0}
    for path, leaf in leaves:
        names = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
        a = np.asarray(leaf)
        where = jax.tree_util.keystr(path)
        if names[-1] == "bias":
            seen["bias"] += 1
            assert np.all(a == 0.0), where
        elif names[-1] == "scale":
            seen["scale"] += 1
            assert np.all(a == 1.0), where
        else:
            assert "kernels" in names, f"an unexpected parameter {where}"
            seen["kernels"] += 1
            assert np.std(a) > 0, where
    assert seen["bias"] >= 3 and seen["scale"] >= 2 and seen["kernels"] >= 3, seen
    if "resnet" in model_type:  # the projection where the widths differ, with its bias
        assert any("skip" in jax.tree_util.keystr(p) for p, _ in leaves), [
            jax.tree_util.keystr(p) for p, _ in leaves
        ]


# ---------------------------------------------------------- docs/design.md, "Loss"
def diversity_D(h_NxBxD: np.ndarray, temperature: float) -> float:
    """docs/design.md "Loss", in NumPy: rows L2-normalised (norm floored at 1e-8), for
    each pair i < j the batch mean of their cosine similarities, the mean over pairs of
    its absolute value, divided by the temperature."""
    h = np.asarray(h_NxBxD, np.float64)
    u = h / np.sqrt(np.maximum((h * h).sum(-1, keepdims=True), 1e-16))
    n = len(h)
    pairs = [abs((u[i] * u[j]).sum(-1).mean()) for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(pairs)) / temperature


def collective_loss_parts(cfg):
    """The step's loss parts on 32 digits in training mode, and the members' outputs of the
    same forward pass (the same weights and dropout key)."""
    step = make_step(resolve(cfg), cfg.dataset_info)
    state = jax.jit(partial(init_state, step))(stream_keys(0)["params"])
    ds = load_digits()
    x = prepare(step, jnp.asarray(ds.x_train[:32]), None)
    y = jnp.asarray(ds.y_train[:32])
    key = jax.random.key(5)

    @jax.jit
    def run(params, stats):
        _, (_, m) = loss_fn(step, params, stats, x, y, key)
        model = nnx.merge(step.graphdef, params, stats, copy=True)
        _, aux = model(x, train=True, key=key)
        return m, aux

    m, aux = run(state.params, state.stats)
    return {k: float(v) for k, v in m.items()}, aux


def test_diversity_terms_are_lambda_times_D_of_the_members_outputs():
    """docs/design.md "Loss": `train/loss_diversity_expert` is `diversity_lambda *
    D(experts)` (already weighted), the analysts' likewise, and `train/loss` their sum
    with the cross-entropy; D as defined there, computed here in NumPy on the members'
    outputs of the same forward pass."""
    lam, temp = 0.37, 1.7
    cfg = debug_config(
        {
            "dataset": "digits",
            "n_total": 6,
            "expert_ratio": 0.5,  # 3 experts, 3 analysts
            "use_expert_diversity": True,
            "use_analyst_diversity": True,
            "diversity_lambda": lam,
            "diversity_temperature": temp,
        }
    )
    m, aux = collective_loss_parts(cfg)
    assert aux["experts"].shape[0] == 3 and aux["analysts"].shape[0] == 3
    d_e, d_a = diversity_D(aux["experts"], temp), diversity_D(aux["analysts"], temp)
    assert d_e > 1e-3 and d_a > 1e-3  # not vacuous
    assert m["loss_diversity_expert"] == pytest.approx(lam * d_e, rel=1e-4)
    assert m["loss_diversity_analyst"] == pytest.approx(lam * d_a, rel=1e-4)
    assert m["loss"] == pytest.approx(m["loss_prediction"] + lam * d_e + lam * d_a, rel=1e-5)


@pytest.mark.parametrize(
    "n_total,n_experts,zero",
    [
        (3, 2, ("loss_diversity_analyst",)),  # one analyst
        (2, 1, ("loss_diversity_expert", "loss_diversity_analyst")),  # one of each
    ],
)
def test_a_group_of_one_member_has_no_diversity_term(n_total, n_experts, zero):
    """docs/design.md "Loss": each diversity term only "when there are 2 or more" members
    of the group: a lone analyst (or expert) adds exactly 0, with the term switched on,
    while a group of two adds its term."""
    cfg = debug_config(
        {
            "dataset": "digits",
            "n_total": n_total,
            "n_experts": n_experts,
            "use_expert_diversity": True,
            "use_analyst_diversity": True,
            "diversity_lambda": 0.5,
        }
    )
    assert (cfg.dims.n_experts, cfg.dims.n_analysts) == (n_experts, n_total - n_experts)
    m, aux = collective_loss_parts(cfg)
    for k in ("loss_diversity_expert", "loss_diversity_analyst"):
        if k in zero:
            assert m[k] == 0.0, (k, m[k])
        else:
            group = aux["experts" if k.endswith("expert") else "analysts"]
            assert m[k] == pytest.approx(0.5 * diversity_D(group, 1.0), rel=1e-4)
            assert m[k] > 0
    assert math.isfinite(m["loss"])
    assert m["loss"] == pytest.approx(
        m["loss_prediction"] + m["loss_diversity_expert"] + m["loss_diversity_analyst"], rel=1e-6
    )


# ---------------------------------------------------------- docs/design.md, "Data"
def test_normalisation_constants_and_augmentations_are_the_documented_ones():
    """docs/design.md "Data": MNIST mean 0.1307, std 0.3081; Fashion-MNIST 0.2860 /
    0.3530; CIFAR-10 per channel (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616).
    Augmentation: MNIST rotation within ±10°, translation within ±10%, scale 0.9-1.1;
    Fashion-MNIST the same with ±15° and a horizontal flip with probability 0.5; CIFAR-10
    a horizontal flip and a random crop of the image padded by 4px (nothing else)."""
    want = {
        "mnist": ((0.1307,), (0.3081,)),
        "fashion_mnist": ((0.2860,), (0.3530,)),
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    }
    for name, (mean, std) in want.items():
        assert DATASETS[name].mean == mean and DATASETS[name].std == std, name
        # and the training step normalises with them
        cfg = Config.from_dict({"model_type": "shallow", "dataset": name, "target_params": 1e5})
        step = make_step(resolve(cfg), cfg.dataset_info)
        assert (tuple(step.mean), tuple(step.std)) == (mean, std), name
    assert AUGMENTATIONS["mnist"] == AugSpec(rotate_deg=10, translate_frac=0.1, scale=(0.9, 1.1))
    assert AUGMENTATIONS["fashion_mnist"] == AugSpec(
        rotate_deg=15, translate_frac=0.1, scale=(0.9, 1.1), flip_p=0.5
    )
    assert AUGMENTATIONS["cifar10"] == AugSpec(flip_p=0.5, crop_pad=4)
    for name in want:  # and the run's step warps with its dataset's
        cfg = Config.from_dict(
            {
                "model_type": "shallow",
                "dataset": name,
                "target_params": 1e5,
                "use_augmentation": True,
            }
        )
        assert make_step(resolve(cfg), cfg.dataset_info).aug == AUGMENTATIONS[name], name


# ------------------------------ docs/sweeps.md, docs/design.md "Coming from the original"
def test_use_gpu_false_means_device_cpu():
    """docs/sweeps.md: "`use_gpu` (false = `--device=cpu`)", as the original's configs and
    sweeps send it (a string from the agent's command line, or a bool)."""
    for v in ("False", "false", False):
        assert Config.from_values({"use_gpu": v}).device == "cpu", v
    for v in ("True", True):
        assert Config.from_values({"use_gpu": v}).device == "auto", v
    assert Config.from_values({}).device == "auto"


def load_sweep(name):
    return yaml.safe_load((SWEEPS / name).read_text())


def values_of(spec):
    return spec["values"] if "values" in spec else [spec["value"]]


def test_the_original_phase1_sweep_is_the_documented_one():
    """docs/design.md "Coming from the original": `sweeps/original_phase1.yaml` is the
    original's phase-1 sweep with `program: run.py`: Bayesian search maximising
    `param_efficiency/test_accuracy_per_log10_params`, Hyperband (min_iter 50, max_iter
    200, s 2, eta 3), all 7 model types, targets 1.8M-7.15M; docs/sweeps.md: on
    Fashion-MNIST, from `config: {value: phase1}`, with 4 gradient accumulation steps for
    every type."""
    s = load_sweep("original_phase1.yaml")
    assert s["program"] == "run.py" and s["method"] == "bayes"
    assert s["metric"] == {
        "name": "param_efficiency/test_accuracy_per_log10_params",
        "goal": "maximize",
    }
    assert s["early_terminate"] == {
        "type": "hyperband",
        "min_iter": 50,
        "max_iter": 200,
        "s": 2,
        "eta": 3,
    }
    p = s["parameters"]
    assert sorted(values_of(p["model_type"])) == sorted(
        [
            "collective",
            "shallow",
            "balanced",
            "deep",
            "very_deep",
            "deep_resnet",
            "very_deep_resnet",
        ]
    )
    targets = values_of(p["target_params"])
    assert min(targets) == 1_800_000 and max(targets) == 7_150_000
    assert p["dataset"] == {"value": "fashion_mnist"}
    assert p["config"] == {"value": "phase1"}
    assert p["gradient_accumulation_steps"] == {"value": 4}


def test_our_sweeps_are_the_documented_ones():
    """docs/sweeps.md: `sweeps/phase1.yaml` is 7 model types x 6 parameter budgets from
    1.8M to 7.15M on MNIST, Bayesian search, Hyperband on `final/test_accuracy`;
    `sweeps/collective_only.yaml` searches the collective's own hyperparameters; both set
    `gradient_accumulation_steps` explicitly to 1."""
    s = load_sweep("phase1.yaml")
    assert s["method"] == "bayes" and s["program"] == "run.py"
    assert s["metric"]["name"] == "final/test_accuracy"
    assert s["early_terminate"]["type"] == "hyperband"
    p = s["parameters"]
    types = values_of(p["model_type"])
    assert len(types) == len(set(types)) == 7 and set(types) == {"collective", *BASELINES}
    targets = values_of(p["target_params"])
    assert len(targets) == len(set(targets)) == 6
    assert min(targets) == 1_800_000 and max(targets) == 7_150_000
    assert p["dataset"] == {"value": "mnist"}
    assert p["gradient_accumulation_steps"] == {"value": 1}

    c = load_sweep("collective_only.yaml")
    assert c["parameters"]["model_type"] == {"value": "collective"}
    assert c["parameters"]["gradient_accumulation_steps"] == {"value": 1}
    assert c["method"] == "bayes"


def test_the_local_sweep_maps_categorical_and_uniform_to_optunas_distributions():
    """docs/sweeps.md "Sweeps without a W&B server": parameters map as `value` (fixed),
    `values` / `distribution: categorical`, `uniform`, ...: here, on the original's phase-1
    file, to Optuna's CategoricalDistribution with the file's values and
    FloatDistribution with the file's bounds (linear, no step)."""
    p = load_sweep("original_phase1.yaml")["parameters"]
    fixed, space = search_space(p)
    assert p["model_type"]["distribution"] == "categorical"
    assert space["model_type"] == optuna.distributions.CategoricalDistribution(
        p["model_type"]["values"]
    )
    assert space["batch_size"] == optuna.distributions.CategoricalDistribution([256, 512])
    for key in ("expert_ratio", "c_expert", "c_collective", "diversity_lambda"):
        assert p[key]["distribution"] == "uniform"
        assert space[key] == optuna.distributions.FloatDistribution(
            p[key]["min"], p[key]["max"], log=False, step=None
        ), key
    assert space["learning_rate"] == optuna.distributions.FloatDistribution(0.0005, 0.002, log=True)
    assert fixed["dataset"] == "fashion_mnist" and fixed["epochs"] == 200
    assert set(fixed) | set(space) == set(p) and not set(fixed) & set(space)


# ------------------------------------------------------ docs/results.md, README
def mlp_params(din, hidden, classes, residual):
    """Closed form from docs/design.md "The baselines" and "Counting": Linear + BatchNorm
    (scale, bias) per hidden width, the output Linear, and for residual blocks a Linear
    projection (with bias) where the widths differ."""
    dims = [din, *hidden]
    n = sum(a * b + b + 2 * b for a, b in zip(dims, dims[1:])) + dims[-1] * classes + classes
    if residual:
        n += sum(a * b + b for a, b in zip(dims, dims[1:]) if a != b)
    return n


@pytest.mark.parametrize("preset,size", [("debug", 567_044), ("phase1", 2_969_887)])
def test_the_studys_baselines_are_within_0_4_percent_of_the_collective(preset, size):
    """README / docs/results.md: on Fashion-MNIST, at 567K and 2.97M parameters (the
    collective at the debug preset's 567,044 and at phase1's 2,969,887), "every baseline
    matched to the collective's count within 0.4%", both as the study sizes them (a
    baseline without `target_params` takes the collective's size) and from the target."""
    assert describe({}, preset=preset)["model_params"] == size
    for family in BASELINES:
        for config in (
            {"model_type": family},
            {"model_type": family, "target_params": size, "dataset": "fashion_mnist"},
        ):
            d = describe(config, preset=preset if "target_params" not in config else None)
            assert d["dataset"] == "fashion_mnist"
            assert abs(d["model_params"] - size) / size <= 0.004, (family, d["model_params"])
            assert d["model_params"] == mlp_params(784, d["hidden_dims"], 10, "resnet" in family)


# -------------------------------------------------- docs/design.md, "Training"
def fixed_digits(n=32):
    ds = load_digits()
    return jnp.asarray(ds.x_train[:n]), jnp.asarray(ds.y_train[:n])


def run_updates(cfg, x_u8, y, n):
    """The implementation's train_step n times on one fixed batch with fixed keys (as
    tests/test_train.py's one_step): the losses before each update and after the last,
    the initial state and the final one."""
    step = make_step(resolve(cfg), cfg.dataset_info)
    state0 = state = init_state(step, stream_keys(0)["params"])
    data = DeviceData(x_u8, y, x_u8, y, None, None)
    keys = {k: stream_keys(0)[k] for k in ("dropout", "augment")}
    idx = jnp.arange(len(y))[None]
    update = jax.jit(lambda s: train_step(step, s, idx, keys, data))
    losses, states = [], [state]
    for _ in range(n + 1):
        new, m = update(state)
        losses.append(float(m["loss"]))
        state = new
        states.append(state)
    return losses, state0, states[n]


def reference_setup(cfg, state0, x_u8):
    """The NumPy weights of state0, the normalised inputs and the dropout masks the step's
    micro-batch 0 draws (tests/test_train.py::test_one_step_matches_a_numpy_reference)."""
    k_drop = jax.random.fold_in(stream_keys(0)["dropout"], 0)
    w = npf.mlp_weights(state0.params)
    x = npf.inputs(x_u8, cfg.dataset_info.mean, cfg.dataset_info.std)
    keep = [
        npf.keep_mask(jax.random.fold_in(k_drop, i + 1), (len(x), h["W"].shape[1]), npf.DROPOUT)
        for i, h in enumerate(w["hidden"])
    ]
    return w, x, keep


def baseline_config(**kw):
    return Config.from_dict(
        {
            "model_type": "shallow",
            "dataset": "digits",
            "batch_size": 32,
            "target_params": 20_000,
            **kw,
        }
    )


def test_one_adamw_step_matches_a_numpy_reference():
    """docs/design.md "Training": "`adamw` decays decoupled". One update of a baseline MLP
    equals NumPy's AdamW first step (tests/numpy_forward.py: the weights move by
    lr * (g / (|g| + eps) + weight_decay * w), the gradient untouched by the decay), to
    the tolerance of test_one_step_matches_a_numpy_reference (Adam's first step turns
    float32 noise in near-zero gradients into whole steps). The weight decay is large
    enough that both Adam's L2 and no decay at all move the loss after well beyond it."""
    lr, wd = 1e-3, 1.0
    cfg = baseline_config(optimizer="adamw", learning_rate=lr, weight_decay=wd)
    x_u8, y = fixed_digits()
    (before, after), state0, _ = run_updates(cfg, x_u8, y, 1)
    w, x, keep = reference_setup(cfg, state0, x_u8)
    y = np.asarray(y)
    ref_before, grads = npf.loss_and_grads(w, x, y, keep)
    ref_after, _ = npf.loss_and_grads(npf.adamw_first_update(w, grads, lr, wd), x, y, keep)
    assert before == pytest.approx(ref_before, rel=2e-5, abs=0)
    assert after == pytest.approx(ref_after, rel=2e-5, abs=0)
    # the check tells the decay's kind apart: L2 (adam's) or none would be far off
    l2, _ = npf.loss_and_grads(npf.adam_first_update(w, grads, lr, wd), x, y, keep)
    none, _ = npf.loss_and_grads(npf.adam_first_update(w, grads, lr, 0.0), x, y, keep)
    assert abs(l2 - ref_after) > 50 * 2e-5 * ref_after
    assert abs(none - ref_after) > 50 * 2e-5 * ref_after


def test_two_sgd_momentum_steps_match_a_numpy_reference():
    """docs/design.md "Training": "`sgd` uses momentum 0.9 with L2 in the gradient" (as
    torch.optim.SGD). Two updates on one batch equal NumPy's: the first moves the weights
    by lr * (g + wd * w), the second by lr * (0.9 * that + g' + wd * w'); the losses and
    the weights after agree to float32 noise. Momentum 0, 0.8 or no decay would not."""
    lr, wd = 0.1, 0.05
    cfg = baseline_config(optimizer="sgd", learning_rate=lr, weight_decay=wd)
    x_u8, y = fixed_digits()
    losses, state0, state2 = run_updates(cfg, x_u8, y, 2)
    w0, x, keep = reference_setup(cfg, state0, x_u8)
    y = np.asarray(y)

    def reference(momentum, weight_decay):
        w, buf, out = w0, None, []
        for _ in range(2):
            loss, g = npf.loss_and_grads(w, x, y, keep)
            out.append(loss)
            w, buf = npf.sgd_momentum_update(w, g, buf, lr, weight_decay, momentum)
        out.append(npf.loss_and_grads(w, x, y, keep)[0])
        return out, w

    ref, w2 = reference(npf.SGD_MOMENTUM, wd)
    for got, want in zip(losses, ref):
        assert got == pytest.approx(want, rel=2e-6, abs=0)
    got_w = npf.mlp_weights(state2.params)
    for path, want in jax.tree_util.tree_flatten_with_path(w2)[0]:
        got = got_w
        for p in path:
            got = got[p.key if hasattr(p, "key") else p.idx]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert ref[0] - ref[2] > 1.0  # the updates moved the loss far beyond the tolerance
    for momentum, weight_decay in ((0.0, wd), (0.8, wd), (npf.SGD_MOMENTUM, 0.0)):
        other = reference(momentum, weight_decay)[0][2]
        assert abs(other - ref[2]) > 100 * 2e-6 * ref[2], (momentum, weight_decay)
