"""Config derivation (docs/design.md, "Derivation rules"), validation and typed parsing."""

import pytest

from jaxcollective.config import Config, ConfigError, collective_dims, parse_value


def dims(**kw):
    return collective_dims(Config.from_dict(kw))


@pytest.mark.parametrize(
    "n_total,ratio,n_experts",
    [
        (8, 0.2, 2),  # round(1.6) = 2
        (5, 0.5, 2),  # round(2.5) = 2 (banker's rounding)
        (7, 0.5, 4),  # round(3.5) = 4
        (10, 0.05, 2),  # at least 2
        (3, 0.9, 2),  # at most n_total - 1
        (2, 0.5, 1),  # 2 experts would leave no analyst
    ],
)
def test_expert_count_rules(n_total, ratio, n_experts):
    d = dims(n_total=n_total, expert_ratio=ratio)
    assert d.n_experts == n_experts
    assert d.n_analysts == n_total - n_experts


def test_n_experts_overrides_ratio_and_is_clamped():
    assert dims(n_total=8, n_experts=5).n_experts == 5
    assert dims(n_total=8, n_experts=1).n_experts == 2
    assert dims(n_total=8, n_experts=20).n_experts == 7


def test_derived_dims_follow_spec():
    d = dims(
        n_total=12,
        expert_ratio=0.25,
        expert_output=100,
        c_expert=0.3,
        analyst_output=50,
        c_collective=0.7,
        dataset="cifar10",
    )
    assert d.n_experts == 3 and d.n_analysts == 9
    assert d.expert_encoder_output_dim == int(3 * 100 * 0.3)
    assert d.analyst_input_dim == 3072 + 90
    # 50 * (1 + log2 9) = 208.49 -> 208
    assert d.adaptive_dim == 208
    assert d.collective_input_dim == int(208 * 0.7)


def test_adaptive_dim_is_clamped():
    assert dims(analyst_output=8).adaptive_dim == 64
    assert dims(analyst_output=4000, adaptive_collective_max_dim=2048).adaptive_dim == 2048


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("n_total", 1, "n_total"),
        ("expert_ratio", 0.0, "strictly between 0 and 1"),
        ("expert_ratio", 1.0, "strictly between 0 and 1"),
        ("c_expert", 0, "c_expert"),
        ("c_collective", -1, "c_collective"),
        ("collective_hidden_scale", 0, "collective_hidden_scale"),
        ("expert_hidden", [512], "2 or more"),
        ("analyst_hidden", [256, 0], "positive widths"),
        ("model_type", "transformer", "one of collective"),
        ("collective_version", "v3", "simple_mlp"),
        ("dataset", "imagenet", "mnist"),
        ("optimizer", "lion", "adam"),
        ("input_dim", 3072, "784 for dataset 'mnist'"),
        ("batch_size", "many", "an integer"),
    ],
)
def test_invalid_values_name_key_value_and_allowed(key, value, fragment):
    with pytest.raises(ConfigError) as e:
        Config.from_dict({key: value})
    msg = str(e.value)
    assert key in msg and fragment in msg and "\n" not in msg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="'learning_rat'"):
        Config.from_dict({"learning_rat": 0.1})


@pytest.mark.parametrize(
    "key,raw,want",
    [
        ("use_augmentation", "True", True),
        ("use_augmentation", "true", True),
        ("use_augmentation", "False", False),
        ("use_augmentation", True, True),
        ("expert_hidden", "[512, 256]", (512, 256)),
        ("expert_hidden", [64, 32], (64, 32)),
        ("expert_hidden", "128,64", (128, 64)),
        ("learning_rate", "1e-05", 1e-5),
        ("learning_rate", 0.001, 0.001),
        ("target_params", "6100000", 6_100_000),
        ("target_params", 6.1e6, 6_100_000),
        ("target_params", "None", None),
        ("n_experts", "null", None),
        ("data_dir", "None", None),
        ("dataset", "mnist", "mnist"),
        ("batch_size", "256", 256),
        ("batch_size", 256.0, 256),
    ],
)
def test_typed_parsing(key, raw, want):
    got = parse_value(key, raw)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "key,raw",
    [
        ("batch_size", "2.5"),
        ("use_augmentation", "maybe"),
        ("batch_size", "None"),
        ("learning_rate", "nan"),
    ],
)
def test_typed_parsing_rejects(key, raw):
    with pytest.raises(ConfigError, match=key):
        parse_value(key, raw)


def test_presets_then_overrides():
    c = Config.from_dict({"expert_output": 48}, preset="debug")
    assert c.expert_hidden == (128, 64) and c.expert_output == 48
    with pytest.raises(ConfigError, match="config"):
        Config.from_dict({}, preset="huge")
