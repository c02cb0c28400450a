"""Data: TFDS loading under mock_data, offline failure, digits, splits, augmentation."""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcollective.data as data
from jaxcollective.augment import AUGMENTATIONS, AugSpec, augment
from jaxcollective.config import Config
from jaxcollective.experiment import train_and_evaluate
from jaxcollective.writers import Writer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)),
                                        ("cifar10", (32, 32, 3))])
def test_tfds_loading_and_one_epoch_under_mock_data(name, shape, tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "_online", lambda *a, **k: True)  # as if the site answered
    with tfds.testing.mock_data(num_examples=200):
        ds = data.load_tfds(name, data_dir=str(tmp_path))
        assert ds.x_train.shape == (200, *shape) and ds.x_train.dtype == np.uint8
        assert ds.y_train.dtype == np.int32 and ds.x_test.shape[1:] == shape
        cfg = Config.from_dict({"model_type": "shallow", "dataset": name, "epochs": 1,
                                "batch_size": 32, "target_params": 300_000,
                                "use_augmentation": True, "data_dir": str(tmp_path)})
        record = train_and_evaluate(cfg, Writer())
    assert record["status"] == "finished" and np.isfinite(record["final/test_loss"])
    # the decoded arrays were cached: a later run needs neither TFDS's files nor mock
    assert (tmp_path / "jaxcollective" / f"{name}.npz").exists()
    np.testing.assert_array_equal(data.load_tfds(name, data_dir=str(tmp_path)).x_train, ds.x_train)


def test_offline_without_data_fails_fast_with_the_ways_to_supply_it(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", TFDS_DATA_DIR=str(tmp_path))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "run.py", "--model_type=shallow", "--dataset=mnist",
                        "--epochs=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "--data_dir" in err[0] and "--manual_dir" in err[0]
    assert "train-images-idx3-ubyte.gz" in err[0] and "Traceback" not in p.stderr
    # the whole process, interpreter start and imports included, well inside 5 s of waiting
    assert elapsed < 15, elapsed


def test_manual_dir_missing_files_is_named(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_tfds("mnist", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path))


def test_digits_are_real_and_test_split_is_fixed():
    a, b = data.load_digits(), data.load_digits()
    assert a.x_train.shape == (1438, 8, 8, 1) and a.x_test.shape == (359, 8, 8, 1)
    assert a.x_train.max() == 255 and set(np.unique(a.y_test)) == set(range(10))
    np.testing.assert_array_equal(a.x_test, b.x_test)


def test_validation_split_is_ten_percent_fixed_by_seed():
    t0, v0 = data.split_indices(60_000, seed=0)
    t0b, v0b = data.split_indices(60_000, seed=0)
    t1, v1 = data.split_indices(60_000, seed=1)
    assert len(v0) == 6_000 and len(t0) == 54_000
    assert not set(t0) & set(v0)
    np.testing.assert_array_equal(v0, v0b)
    assert not np.array_equal(v0, v1)


def test_synthetic_is_marked():
    ds = data.load(Config.from_dict({"dataset": "synthetic", "synthetic_like": "cifar10"}))
    assert ds.synthetic and ds.x_train.shape == (50_000, 32, 32, 3) and "synthetic" in ds.name


# ---------------------------------------------------------------- augmentation
def images(shape=(16, 28, 28, 1)):
    return jax.random.uniform(jax.random.key(0), shape)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "digits"])
def test_augmentation_keeps_shape_and_range(name):
    shape = {"cifar10": (16, 32, 32, 3), "digits": (16, 8, 8, 1)}.get(name, (16, 28, 28, 1))
    x = images(shape)
    y = augment(x, jax.random.key(1), AUGMENTATIONS[name])
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6
    assert not np.allclose(y, x)


def test_augmentation_is_identity_at_zero_strength():
    x = images()
    np.testing.assert_array_equal(augment(x, jax.random.key(3), AugSpec()), x)


def test_flip_and_integer_crop_move_pixels_exactly():
    x = images((4, 32, 32, 3))
    flipped = augment(x, jax.random.key(0), AugSpec(flip_p=1.0))
    np.testing.assert_allclose(flipped, x[:, :, ::-1], atol=1e-6)
    cropped = augment(x, jax.random.key(5), AugSpec(crop_pad=4))
    # every output row of image 0 is an input row shifted by an integer, zero-filled
    xs, cs = np.asarray(x[0]), np.asarray(cropped[0])
    matches = [np.allclose(cs[8:24, 8:24], xs[8 + dy:24 + dy, 8 + dx:24 + dx], atol=1e-6)
               for dy in range(-4, 5) for dx in range(-4, 5)]
    assert sum(matches) == 1


def test_rotation_moves_mass_about_the_centre():
    x = jnp.zeros((1, 28, 28, 1)).at[0, 13:15, 2:8, 0].set(1.0)  # a bar left of centre
    y = augment(x, jax.random.key(0), AugSpec(rotate_deg=90.0))
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=0.15)
