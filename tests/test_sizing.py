"""Parameter counts: eval_shape counter vs independent closed forms, baseline sizing."""

import math

import pytest

from jaxcollective import describe
from jaxcollective.config import Config, ConfigError
from jaxcollective.model.networks import BASELINE_FAMILIES
from jaxcollective.model.sizing import count_params, match_baseline, resolve

SEED_TARGETS = [1_800_000, 2_850_000, 3_950_000, 5_000_000, 6_100_000, 7_150_000]
SPREAD = [200_000, 500_000, 1_000_000, 12_000_000, 25_000_000, 50_000_000]
FAMILIES = ["shallow", "balanced", "deep", "very_deep", "deep_resnet", "very_deep_resnet"]


# ---- closed forms written from docs/design.md's text, sharing no code with the package
def lin(a, b):
    return a * b + b


def mlp_closed(din, hidden, classes):
    dims = [din, *hidden]
    return sum(lin(a, b) + 2 * b for a, b in zip(dims, dims[1:])) + lin(dims[-1], classes)


def resmlp_closed(din, hidden, classes):
    dims = [din, *hidden]
    skips = sum(lin(a, b) for a, b in zip(dims, dims[1:]) if a != b)
    return mlp_closed(din, hidden, classes) + skips


def encoder_closed(i, o):
    h = int(math.sqrt(i * o))
    return lin(i, h) + 2 * h + lin(h, o)


def variant(h, v):
    return [
        h,
        [int(w * 1.25) for w in h],
        [h[0], (h[0] + h[-1]) // 2, h[-1]],
        [int(w * 0.8) for w in h],
    ][v]


def collective_closed(c):
    din, classes = (3072, 10) if c.get("dataset") == "cifar10" else (784, 10)
    n_total = c["n_total"]
    n_e = max(2, round(n_total * c["expert_ratio"]))
    n_e = min(n_e, n_total - 1)
    n_a = n_total - n_e
    eed = int(n_e * c["expert_output"] * c["c_expert"])
    ad = min(2048, max(64, int(c["analyst_output"] * (1 + math.log2(max(n_a, 1))))))
    cid = int(ad * c["c_collective"])

    def members(n, i, hidden, o, vary):
        return sum(mlp_closed(i, variant(hidden, k % 4) if vary else hidden, o) for k in range(n))

    total = members(
        n_e, din, c["expert_hidden"], c["expert_output"], c.get("vary_expert_architectures")
    )
    total += encoder_closed(n_e * c["expert_output"], eed)
    total += members(
        n_a,
        din + eed,
        c["analyst_hidden"],
        c["analyst_output"],
        c.get("vary_analyst_architectures"),
    )
    total += encoder_closed(n_a * c["analyst_output"], cid)
    scale = c["collective_hidden_scale"]
    if c["collective_version"] == "simple_mlp":
        hid = max(int(cid * scale), 2 * classes)
        total += lin(cid, hid) + lin(hid, classes)
    else:
        enc = max(int(cid * c["c_collective"]), 2 * classes)
        hid = max(int(enc * scale), 2 * classes)
        total += encoder_closed(cid, enc) + lin(enc, hid) + lin(hid, classes)
    return total


PHASE1 = dict(
    n_total=8,
    expert_ratio=0.2,
    expert_hidden=[512, 256],
    expert_output=128,
    analyst_hidden=[256, 128],
    analyst_output=64,
    c_expert=0.25,
    c_collective=1.0,
    collective_version="simple_mlp",
    collective_hidden_scale=1.0,
    dataset="fashion_mnist",
)
DEBUG = dict(
    PHASE1, expert_output=32, analyst_output=16, expert_hidden=[128, 64], analyst_hidden=[64, 32]
)


def test_spec_reference_sizes_are_pinned():
    assert describe(PHASE1)["model_params"] == 2_969_887
    assert describe(DEBUG)["model_params"] == 567_044
    assert describe({}, preset="phase1")["model_params"] == 2_969_887
    assert describe({}, preset="debug")["model_params"] == 567_044
    d = describe(PHASE1)
    assert (d["n_experts"], d["n_analysts"]) == (2, 6)
    assert (d["expert_encoder_output_dim"], d["analyst_input_dim"], d["collective_input_dim"]) == (
        64,
        848,
        229,
    )
    assert sum(d["params_by_component"].values()) == d["model_params"]


@pytest.mark.parametrize(
    "version,vary_e,vary_a,n_total,ratio,c_coll,scale",
    [
        ("simple_mlp", False, False, 8, 0.2, 1.0, 1.0),
        ("encoder_head", False, False, 8, 0.2, 1.0, 1.0),
        ("simple_mlp", True, False, 10, 0.5, 0.75, 0.5),
        ("encoder_head", True, True, 12, 0.35, 0.5, 2.0),
        ("simple_mlp", False, True, 5, 0.4, 1.5, 1.0),
        ("encoder_head", True, True, 3, 0.9, 1.0, 0.25),
    ],
)
def test_collective_count_equals_closed_form(
    version, vary_e, vary_a, n_total, ratio, c_coll, scale
):
    c = dict(
        PHASE1,
        collective_version=version,
        vary_expert_architectures=vary_e,
        vary_analyst_architectures=vary_a,
        n_total=n_total,
        expert_ratio=ratio,
        c_collective=c_coll,
        collective_hidden_scale=scale,
    )
    assert describe(c)["model_params"] == collective_closed(c)
    c10 = dict(c, dataset="cifar10")
    assert describe(c10)["model_params"] == collective_closed(c10)


@pytest.mark.parametrize("family", FAMILIES)
def test_baseline_count_equals_closed_form(family):
    closed = resmlp_closed if "resnet" in family else mlp_closed
    for hidden in ([300, 300, 300], [1000, 37, 5], [64, 64]):
        cfg = Config.from_dict({"model_type": family})
        assert count_params(cfg, tuple(hidden)) == closed(784, hidden, 10)


def _family_shape_ok(family, dims):
    if family == "shallow":
        return len(dims) == 2 and dims[1] <= dims[0]
    if family == "balanced":
        s = dims[0]
        return list(dims) == [w for w in (s, s // 2, s // 4, s // 8) if w > 20] and len(dims) >= 3
    depth = 12 if family.startswith("very") else 8
    return len(dims) == depth and len(set(dims)) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_baseline_matches_targets_within_one_percent(family):
    cfg = Config.from_dict({"model_type": family})
    for target in SEED_TARGETS + SPREAD:
        m = match_baseline(cfg, target)
        assert abs(m.model_params - target) / target < 0.01, (family, target, m)
        assert _family_shape_ok(family, m.hidden_dims)
        closed = resmlp_closed if "resnet" in family else mlp_closed
        assert m.model_params == closed(784, list(m.hidden_dims), 10)


@pytest.mark.parametrize("family", ["shallow", "balanced", "very_deep_resnet"])
def test_baseline_match_is_the_closest_in_the_family(family):
    """No other width of the family gets closer to the target (exhaustive near the answer)."""
    cfg = Config.from_dict({"model_type": family})
    for target in (1_800_000, 7_150_000):
        m = match_baseline(cfg, target)
        s = m.hidden_dims[0]
        for other in range(max(1, s - 40), s + 40):
            widths = BASELINE_FAMILIES[family][0](other, 10)
            if widths is None:
                continue
            closed = resmlp_closed if "resnet" in family else mlp_closed
            assert abs(closed(784, widths, 10) - target) >= abs(m.model_params - target)


def test_cifar10_inputs_are_sized_too():
    for family in FAMILIES:
        cfg = Config.from_dict({"model_type": family, "dataset": "cifar10"})
        m = match_baseline(cfg, 4_321_000)
        assert abs(m.model_params - 4_321_000) / 4_321_000 < 0.01, family


def test_baseline_without_target_matches_the_collective_of_the_same_config():
    r = resolve(Config.from_dict({"model_type": "deep"}, preset="debug"))
    assert r.target_params == 567_044
    assert abs(r.model_params - 567_044) / 567_044 < 0.01


def test_unreachable_target_is_a_clear_error():
    with pytest.raises(ConfigError, match="balanced.*starts at"):
        describe({"model_type": "balanced", "target_params": 5_000})


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_baseline_fields(family):
    d = describe({"model_type": family, "target_params": "6.1e6"})
    assert d["target_params"] == 6_100_000
    assert d["model_params"] == (resmlp_closed if "resnet" in family else mlp_closed)(
        784, d["hidden_dims"], 10
    )


def test_vary_variants_cover_all_four_shapes():
    c = dict(PHASE1, n_total=10, expert_ratio=0.5, vary_expert_architectures=True)
    counts = [mlp_closed(784, variant([512, 256], v), 128) for v in range(4)]
    assert len(set(counts)) == 4  # the four variants really differ
    assert describe(c)["params_by_component"]["experts"] == sum(counts[k % 4] for k in range(5))
