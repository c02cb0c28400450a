"""The collective's best shot (docs/results.md): a collective sized to a budget, the drawn
candidates, the test accuracy at the best-validation epoch, and --from_record."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcollective.config import Config, ConfigError
from jaxcollective.main import main
from jaxcollective.model.sizing import count_params, describe_resolved, resolve, size_collective
from jaxcollective.study.halving import draw_candidates
from jaxcollective.study.schedules import BEST_SHOT, SIZES
from jaxcollective.train.metrics import SPLITS, TEST_AT_BEST_VAL, final_metrics, replica_finals

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"0.57M": 567_044, "2.97M": 2_969_887}


def fashion(**kw) -> Config:
    return Config.from_values({"model_type": "collective", "dataset": "fashion_mnist", **kw})


@pytest.mark.parametrize("size", list(BUDGETS))
@pytest.mark.parametrize(
    "n_total, ratio, factor",
    [(4, 0.1, 1.0), (6, 0.5, 0.25), (11, 0.33, 4.0), (16, 0.5, 1.0), (16, 0.1, 2.5)],
)
def test_a_budget_sized_collective_is_within_1_percent_at_any_architecture(
    size, n_total, ratio, factor
):
    cfg = fashion(
        **SIZES[size],
        n_total=n_total,
        expert_ratio=ratio,
        expert_width_factor=factor,
        collective_budget=BUDGETS[size],
    )
    r = resolve(cfg)
    # the count is the eval_shape counter's, of the architecture the run builds
    assert r.model_params == count_params(r.cfg.replace(collective_budget=None))
    assert abs(r.model_params - BUDGETS[size]) <= 0.01 * BUDGETS[size]
    d = describe_resolved(r)
    assert d["collective_budget"] == BUDGETS[size] and abs(d["params_off_target"]) <= 0.01
    # the widths follow the profile: the experts' share rises with the factor
    w = d["sized_widths"]
    share = w["expert_hidden"][0] / w["analyst_hidden"][0]
    profile = SIZES[size]["expert_hidden"].strip("[]").split(",")[0]
    base = int(profile) / int(SIZES[size]["analyst_hidden"].strip("[]").split(",")[0])
    assert share == pytest.approx(base * factor, rel=0.1)
    # the record keeps the config as given: sizing it again gives the same architecture
    assert r.config == cfg and resolve(Config.from_dict(r.config.to_dict())).cfg == r.cfg
    assert resolve(r.cfg).cfg == r.cfg  # the sized architecture is itself, resolved again


def test_without_a_budget_the_collective_is_the_originals():
    cfg = fashion(**SIZES["0.57M"])
    assert size_collective(cfg) is cfg
    r = resolve(cfg)
    assert r.model_params == 567_044 and r.cfg == cfg and r.given is None
    # phase1's own count, and its baselines still sized to it
    p1 = Config.from_values({"config": "phase1"})
    assert resolve(p1).model_params == 2_969_887
    assert "expert_width_factor" in cfg.ignored_keys()  # read only with a budget
    assert "expert_width_factor" not in cfg.replace(collective_budget=10**6).ignored_keys()


def test_a_baseline_beside_a_budget_is_sized_to_the_budget():
    cfg = fashion(**SIZES["0.57M"], collective_budget=1_000_000, n_total=12)
    r = resolve(cfg.replace(model_type="shallow"))
    assert r.target_params == resolve(cfg).model_params


@pytest.mark.parametrize("budget", [10, 1])
def test_a_budget_no_collective_reaches_is_one_line(budget):
    cfg = fashion(**SIZES["0.57M"], n_total=16, collective_budget=budget)
    with pytest.raises(ConfigError, match=f"collective_budget={budget}"):
        resolve(cfg)


def test_the_best_shot_candidates_are_drawn_once_and_span_the_space():
    a = draw_candidates(BEST_SHOT.candidates)
    assert a == draw_candidates(BEST_SHOT.candidates)  # a rerun draws the same
    assert draw_candidates(30)[:24] == a  # a larger study extends it
    assert len({c["n_total"] for c in a}) >= 4
    assert all(4 <= c["n_total"] <= 16 and 0.1 <= c["expert_ratio"] <= 0.5 for c in a)
    assert max(c["learning_rate"] for c in a) > 3e-3
    assert {c["use_drop_models"] for c in a} == {True, False}
    for c in a:  # a switched-off knob keeps its default (no value that changes nothing)
        assert ("drop_models_expert_rate" in c) == c["use_drop_models"]
        assert ("diversity_lambda" in c) == c["use_expert_diversity"] == c["use_analyst_diversity"]
        Config.from_values({**{k: str(v) for k, v in c.items()}, "model_type": "collective"})


def test_the_test_accuracy_at_each_replicas_best_validation_epoch():
    val = [[80, 70], [85, 72], [84, 75], [85, 74]]  # epochs x replicas
    test = [[79, 69], [83, 71], [86, 76], [84, 73]]
    hist = [
        {
            **{f"{s}/{m}": np.zeros(2, np.float32) for s in SPLITS for m in ("loss", "accuracy")},
            "val/accuracy": np.array(v, np.float32),
            "test/accuracy": np.array(t, np.float32),
        }
        for v, t in zip(val, test)
    ]
    m = final_metrics(hist, 1000)
    # replica 0: first best epoch 2 (85, not the tie at epoch 4); replica 1: epoch 3
    assert m[TEST_AT_BEST_VAL] == pytest.approx((83 + 76) / 2)
    assert m["final/test_accuracy"] == pytest.approx((84 + 73) / 2)
    reps = replica_finals(hist, [0, 1])
    assert [r["best_epoch"] for r in reps] == [2, 3]
    assert [r["test_accuracy_at_best_val"] for r in reps] == [83, 76]


def run_py(*args):
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_from_record_reruns_a_record_exactly_and_flags_override(tmp_path, capsys, monkeypatch):
    first = tmp_path / "first.jsonl"
    p = run_py(
        "--model_type=collective",
        "--dataset=digits",
        "--expert_hidden=[64, 32]",
        "--expert_output=16",
        "--analyst_hidden=[32, 16]",
        "--analyst_output=8",
        "--n_total=5",
        "--collective_budget=40000",
        "--use_augmentation=true",
        "--learning_rate=0.003",
        "--seed=7",
        "--epochs=2",
        "--progress=false",
        f"--results={first}",
        f"--checkpoint_dir={tmp_path / 'runs' / 'checkpoints'}",  # the default's place
        "--keep_checkpoint=true",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(first.read_text())
    kept = list((tmp_path / "runs" / "checkpoints").iterdir())
    # a rerun writes to runs/reruns/ unless told, never to the file it reads, and trains
    # from scratch: the original's kept checkpoint is not resumed (nor removed)
    monkeypatch.chdir(tmp_path)
    assert main([f"--from_record={first}:1", "--progress=false"]) == 0
    assert f"rerunning {first}:1: collective on digits, seed 7" in capsys.readouterr().err
    assert len(first.read_text().splitlines()) == 1
    assert list((tmp_path / "runs" / "checkpoints").iterdir()) == kept
    rerun = json.loads((tmp_path / "runs" / "reruns" / "results.jsonl").read_text())
    assert rerun["resumed_from_epoch"] == 0 and rerun["epochs_completed"] == 2
    assert rerun["final/test_accuracy"] == rec["final/test_accuracy"]
    assert rerun["val_accuracy_curves"] == rec["val_accuracy_curves"]
    assert rerun["sized_widths"] == rec["sized_widths"]
    outputs = ("results", "checkpoint_dir", "keep_checkpoint")
    assert {k: v for k, v in rerun["config"].items() if k not in outputs} == {
        k: v for k, v in rec["config"].items() if k not in outputs
    }
    # the file it reads is never its output; a dtype flag overrides the record's
    assert main([f"--from_record={first}:1", f"--results={first}"]) == 2
    assert "is the file --from_record reads" in capsys.readouterr().err
    assert main([f"--from_record={first}:1", "--use_mixed_precision=true", "--dry_run"]) == 0
    # a flag beside it overrides the record's value
    shorter = tmp_path / "shorter.jsonl"
    more = [f"--checkpoint_dir={tmp_path / 'ck3'}", "--epochs=1", f"--results={shorter}"]
    assert main([f"--from_record={first}:1", "--progress=false", *more]) == 0
    assert json.loads(shorter.read_text())["epochs_completed"] == 1


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nofile.jsonl:1", "no file nofile.jsonl"),
        ("{f}", "expected FILE:LINE"),
        ("{f}:0", "expected FILE:LINE"),
        ("{f}:3", "has 2 lines"),
        ("{f}:2", "is not a run record"),
    ],
)
def test_a_bad_from_record_is_one_line_and_exit_2(tmp_path, capsys, spec, fragment):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"config": {"model_type": "shallow"}}) + "\n{not json\n")
    assert main([f"--from_record={spec.format(f=f)}", "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_a_record_without_its_size_is_rerun_all_the_same(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"config": {"model_type": "shallow", "dataset": "digits"}}) + "\n")
    assert main([f"--from_record={f}:1", "--dry_run"]) == 0
    assert "shallow on digits, seed None, ? params" in capsys.readouterr().err


def test_a_record_with_a_key_this_version_lacks_is_refused(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"config": {"model_type": "shallow", "old_key": 1}}) + "\n")
    assert main([f"--from_record={f}:1", "--dry_run"]) == 2
    assert "'old_key'" in capsys.readouterr().err


def test_a_width_the_varied_members_would_shrink_to_0_is_refused():
    cfg = fashion(expert_hidden=[64, 1], vary_expert_architectures=False)
    assert cfg.expert_hidden == (64, 1)  # without variants a width of 1 is a width
    with pytest.raises(ConfigError, match=r"invalid expert_hidden=\[64, 1\].*0.8x variant"):
        fashion(expert_hidden=[64, 1], vary_expert_architectures=True)
    with pytest.raises(ConfigError, match="vary_analyst_architectures"):
        fashion(analyst_hidden=[1, 8], vary_analyst_architectures=True)


def test_baselines_sized_from_different_collectives_are_different_runs():
    """A baseline without target_params takes the count of the collective of its config:
    the keys that size that collective are read (checkpoint fingerprint, program key,
    population), the others are not."""
    from jaxcollective.api import unused_keys
    from jaxcollective.train.checkpoint import fingerprint

    a = Config.from_values({"model_type": "deep", "collective_budget": 100_000})
    b = a.replace(collective_budget=300_000)
    assert resolve(a).hidden_dims != resolve(b).hidden_dims
    assert fingerprint(a) != fingerprint(b) and a.program_key() != b.program_key()
    assert fingerprint(a) == fingerprint(a.replace(diversity_lambda=0.5))  # not a size key
    assert unused_keys(a, {"collective_budget", "diversity_lambda"}) == {
        "diversity_lambda": "collective-only"
    }
    # with its own target the collective's keys are not read at all
    c = a.replace(target_params=200_000)
    assert fingerprint(c) == fingerprint(c.replace(collective_budget=300_000))
    assert unused_keys(c, {"collective_budget"}) == {"collective_budget": "collective-only"}
    # expert_width_factor is read only with a budget
    d = Config.from_values({"model_type": "collective"})
    assert unused_keys(d, {"expert_width_factor"}) == {"expert_width_factor": "budget-off"}
    assert fingerprint(d) == fingerprint(d.replace(expert_width_factor=2.0))


# ------------------------------------------------- fairness: the baselines' own search


def test_baseline_dropout_is_the_baselines_rate_and_the_collective_ignores_it():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxcollective.model.networks import build_model

    x = jnp.ones((4, 64))

    def outputs(rate):
        cfg = Config.from_values(
            {"model_type": "deep_resnet", "dataset": "digits", "baseline_dropout": rate}
        )
        model = build_model(cfg, [16] * 8, rngs=nnx.Rngs(0))
        return [model(x, train=True, key=jax.random.key(s))[0] for s in (1, 2)]

    a, b = outputs(0.0)
    assert np.allclose(a, b)  # no dropout: the key changes nothing
    a, b = outputs(0.5)
    assert not np.allclose(a, b)
    base = Config.from_values({"model_type": "deep_resnet", "dataset": "digits"})
    assert base.baseline_dropout == 0.1  # the original's
    assert base.program_key() != base.replace(baseline_dropout=0.3).program_key()
    coll = fashion()
    assert "baseline_dropout" in coll.ignored_keys()
    assert coll.program_key() == coll.replace(baseline_dropout=0.3).program_key()
    with pytest.raises(ConfigError, match="baseline_dropout"):
        base.replace(baseline_dropout=1.0).validate()


def test_the_baseline_shot_draws_its_own_knobs_at_the_converged_widths():
    from jaxcollective.study.schedules import BASELINE_SEARCH, BASELINE_SHOT

    a = draw_candidates(BASELINE_SHOT.candidates, search=BASELINE_SHOT.search)
    assert a == draw_candidates(24, search=BASELINE_SEARCH) and len(a) == 24
    assert all(set(c) == set(BASELINE_SEARCH) for c in a)
    assert all(0.0 <= c["baseline_dropout"] <= 0.5 for c in a)
    assert max(c["learning_rate"] for c in a) > 3e-3
    for c in a:  # each sized as the converged study's run of its type: the same widths
        cfg = Config.from_values(
            {**SIZES["0.57M"], "model_type": "deep_resnet", "dataset": "fashion_mnist", **c}
        )
        assert resolve(cfg).hidden_dims == resolve(cfg.replace(learning_rate=0.003)).hidden_dims


@pytest.mark.parametrize(
    "model_type, key, value",
    [
        ("deep_resnet", "baseline_dropout", 0.3),
        ("collective", "collective_budget", 600_000),
        ("shallow", "baseline_dropout", 0.0),
    ],
)
def test_a_key_added_later_leaves_older_runs_fingerprints_at_its_default(model_type, key, value):
    """Keys the best shot added (declared with `since`) stay out of a run's trajectory at
    their default: checkpoints and records from before them keep their fingerprint."""
    from jaxcollective.config.core import FIELDS
    from jaxcollective.train.checkpoint import fingerprint

    cfg = Config.from_values({"model_type": model_type, "target_params": 500_000})
    if model_type == "collective":
        cfg = cfg.replace(target_params=None)
    assert FIELDS[key].metadata["since"]
    assert key not in cfg.trajectory()
    changed = cfg.replace(**{key: value})
    assert changed.trajectory()[key] == value
    assert fingerprint(changed) != fingerprint(cfg)
    # the fingerprint is that of the same trajectory without the key
    assert {k: v for k, v in changed.trajectory().items() if k != key} == cfg.trajectory()
