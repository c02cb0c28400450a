"""Model behaviour: shapes, batched members, eval determinism, BatchNorm statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcollective.config import Config
from jaxcollective.model.layers import drop_members
from jaxcollective.model.networks import MLP, MemberStack, build_model
from jaxcollective.model.sizing import abstract_params, count_params, resolve

X = jax.random.normal(jax.random.key(0), (16, 784))


# Compiled calls: a model called eagerly compiles each of its operations apart (seconds
# per model at these sizes); nnx.jit compiles a call once and still updates the model's
# BatchNorm statistics in place.
@nnx.jit(static_argnames=("train",))
def call(model, x, train=False, key=None):
    return model(x, train=train, key=key)


@nnx.jit
def call_members(members, x):
    from jaxcollective.model.layers import KeySeq

    return members(x, False, KeySeq(None))


def make(model_type="collective", **kw):
    r = resolve(Config.from_dict({"model_type": model_type, **kw}, preset="debug"))
    return build_model(r.cfg, r.hidden_dims, rngs=nnx.Rngs(0)), r.cfg


@pytest.mark.parametrize(
    "model_type",
    ["collective", "shallow", "balanced", "deep", "very_deep", "deep_resnet", "very_deep_resnet"],
)
def test_output_shapes_and_eval_determinism(model_type):
    model, cfg = make(model_type)
    # the counter's shapes-only build (no random initialisation) has this model's shapes
    dims = resolve(cfg).hidden_dims
    real = jax.tree.map(lambda p: (p.shape, p.dtype), nnx.state(model, nnx.Param))
    assert real == jax.tree.map(lambda p: (p.shape, p.dtype), abstract_params(cfg, dims))
    assert count_params(cfg, dims) == sum(
        p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))
    )
    stats0 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    y1, _ = call(model, X)
    y2, _ = call(model, X)
    assert y1.shape == (16, 10)
    np.testing.assert_array_equal(y1, y2)
    # eval leaves running statistics alone, and is per-example (batch of 1 agrees)
    jax.tree.map(np.testing.assert_array_equal, stats0, nnx.state(model, nnx.BatchStat))
    scale = float(np.abs(y1).max())
    np.testing.assert_allclose(call(model, X[:1])[0], y1[:1], rtol=1e-5, atol=1e-5 * scale)
    # train mode: dropout depends on the key, running statistics move
    t1, _ = call(model, X, train=True, key=jax.random.key(1))
    t2, _ = call(model, X, train=True, key=jax.random.key(2))
    assert not np.allclose(t1, t2)
    moved = jax.tree.map(
        lambda a, b: not np.allclose(a, b), stats0, nnx.state(model, nnx.BatchStat)
    )
    assert all(jax.tree.leaves(moved))


def test_collective_aux_outputs():
    model, cfg = make(use_drop_models=True)
    logits, aux = call(model, X, train=True, key=jax.random.key(3))
    assert aux["experts"].shape == (2, 16, 32) and aux["analysts"].shape == (6, 16, 16)


def test_batchnorm_matches_pytorch_semantics():
    model = MLP(784, [32, 32], 10, rngs=nnx.Rngs(0))
    h = model.dense[0](X)
    model(X, train=True, key=jax.random.key(0))
    mean, var = np.asarray(h).mean(0), np.asarray(h).var(0, ddof=1)
    np.testing.assert_allclose(model.norm[0].mean[...], 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.norm[0].var[...], 0.9 + 0.1 * var, rtol=1e-4)


def test_stacked_members_equal_separate_members():
    stack = MemberStack(3, 784, [64, 32], 16, rate=0.2, rngs=nnx.Rngs(0))
    from jaxcollective.model.layers import KeySeq

    out_NxBxO = stack(X, False, KeySeq(None))
    for i in range(3):
        single = MLP(784, [64, 32], 16, rngs=nnx.Rngs(1))
        for layer_s, layer_1 in zip([*stack.dense, stack.proj], [*single.dense, single.out]):
            layer_1.kernels[0][...] = layer_s.member_kernel(i)
            layer_1.bias[...] = layer_s.bias[...][i]
        np.testing.assert_allclose(single(X)[0], out_NxBxO[i], rtol=1e-4, atol=1e-4)


def test_vary_members_keep_member_order():
    model, cfg = make(n_total=9, expert_ratio=0.5, vary_analyst_architectures=True)
    groups = model.analysts
    # 5 analysts use variants 0, 1, 2, 3, 0: four stacks, the first holding analysts 0 and 4
    assert [int(s.proj.kernels[0][...].shape[0]) for s in groups.stacks] == [2, 1, 1, 1]
    assert [s.dense[0].member_kernel(0).shape[-1] for s in groups.stacks] == [64, 80, 64, 51]
    assert len(groups.stacks[2].dense) == 3
    x = (
        jax.random.normal(jax.random.key(1), (16, 784)),
        jax.random.normal(jax.random.key(2), (16, cfg.dims.expert_encoder_output_dim)),
    )
    out = call_members(groups, x)
    per_group = [call_members(s, x) for s in groups.stacks]
    expected = [per_group[0][0], per_group[1][0], per_group[2][0], per_group[3][0], per_group[0][1]]
    for i, e in enumerate(expected):
        np.testing.assert_array_equal(out[i], e)


def test_kaiming_init_scale():
    model, _ = make()
    k = np.asarray(model.experts.stacks[0].dense[0].kernels[0][...])  # (784, 2, 128), fan_in 784
    assert k.shape == (784, 2, 128)
    assert abs(k.std() - np.sqrt(2 / 784)) / np.sqrt(2 / 784) < 0.02
    b, _ = make("deep")
    kb = np.asarray(b.dense[1].kernels[0][...])  # fan_out = width
    assert abs(kb.std() - np.sqrt(2 / kb.shape[1])) / np.sqrt(2 / kb.shape[1]) < 0.05


def test_drop_members_keeps_at_least_one():
    h = jnp.ones((4, 2, 3))
    for i in range(50):
        out = drop_members(h, 0.95, jax.random.key(i))
        kept = np.asarray(out[:, 0, 0])
        assert kept.sum() >= 1 and set(np.unique(kept)) <= {0.0, 1.0}
    assert np.asarray(drop_members(h, 0.0, jax.random.key(0))).sum() == h.size
