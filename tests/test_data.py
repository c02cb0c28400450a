"""Data: raw files in every layout, verified by content, the cache, a prepared TFDS dir
(mock_data), offline failure, real Fashion-MNIST, digits, splits, augmentation."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import tarfile
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcollective.data.datasets as data
import jaxcollective.data.raw as rawdata
from jaxcollective.data.augment import AUGMENTATIONS, AugSpec, augment
from jaxcollective.config import Config
from jaxcollective.train.loop import train_and_evaluate
from jaxcollective.train.writers import Writer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name,shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]
)
def test_prepared_tfds_dir_under_mock_data(name, shape, tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("JAXCOLLECTIVE_DATA_CACHE", str(tmp_path / "cache"))
    # as if `tmp_path` held a data dir that TFDS prepared (array_record)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=200):
        ds = data.load_prepared_tfds(name, tmp_path / "tfds")
        assert ds.x_train.shape == (200, *shape) and ds.x_train.dtype == np.uint8
        assert ds.y_train.dtype == np.int32 and ds.x_test.shape[1:] == shape
        cfg = Config.from_dict(
            {
                "model_type": "shallow",
                "dataset": name,
                "epochs": 1,
                "batch_size": 32,
                "target_params": 300_000,
                "use_augmentation": True,
            }
        )
        record = train_and_evaluate(cfg, Writer(), dataset=ds)
        # the decoded arrays were cached: a later load does not read TFDS's files again
        monkeypatch.setattr(data, "_read_split", lambda *a: pytest.fail("cache not used"))
        np.testing.assert_array_equal(
            data.load_prepared_tfds(name, tmp_path / "tfds").x_train, ds.x_train
        )
    assert record["status"] == "finished" and np.isfinite(record["final/test_loss"])


@pytest.mark.slow
def test_offline_without_data_fails_fast_with_the_ways_to_supply_it(tmp_path):
    env = dict(
        os.environ,
        WANDB_MODE="disabled",
        TFDS_DATA_DIR=str(tmp_path),
        HOME=str(tmp_path),
        JAXCOLLECTIVE_OFFLINE="1",
    )
    env.pop("JAXCOLLECTIVE_DATA_DIR", None)
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "run.py", "--model_type=shallow", "--dataset=mnist", "--epochs=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.perf_counter() - t
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "--data_dir" in err[0] and "internet" in err[0]
    assert "train-images-idx3-ubyte.gz" in err[0] and "Traceback" not in p.stderr
    # the whole process, interpreter start and imports included, well inside 5 s of waiting
    assert elapsed < 15, elapsed


# ------------------------------------------------------------- raw files
def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()


def tiny_arrays(seed: int, shape=(28, 28)):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (30, *shape), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 30, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (12, *shape), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 12, dtype=np.uint8),
    }


def register(monkeypatch, name, arrays):
    """Make tiny files the 'official' release of `name` for this test."""
    digests = {r: hashlib.sha256(idx_bytes(a)).hexdigest() for r, a in arrays.items()}
    monkeypatch.setitem(rawdata.IDX_SHA256, name, digests)


def write_idx(folder: Path, arrays, gz=True, dotted=False):
    folder.mkdir(parents=True, exist_ok=True)
    for role, a in arrays.items():
        name = rawdata.IDX_NAMES[role][1 if dotted else 0]
        raw = idx_bytes(a)
        if gz:  # a fixed mtime, as Debian's repacked files differ from upstream's wrapper
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=12345))
        else:
            (folder / name).write_bytes(raw)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real data folder, cache or network reachable from the test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAXCOLLECTIVE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXCOLLECTIVE_OFFLINE", "1")
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.delenv("JAXCOLLECTIVE_DATA_DIR", raising=False)
    monkeypatch.setattr(rawdata, "SYSTEM_DIRS", {})
    return tmp_path


@pytest.mark.parametrize(
    "layout",
    ["flat_gz", "flat_raw", "dotted", "named_subfolder", "torchvision", "tfds_manual", "env_var"],
)
def test_idx_files_are_found_in_every_layout(layout, isolated, monkeypatch):
    arrays = tiny_arrays(0)
    register(monkeypatch, "mnist", arrays)
    d = isolated / "data"
    folder = {
        "named_subfolder": d / "mnist",
        "torchvision": d / "MNIST" / "raw",
        "tfds_manual": d / "downloads" / "manual",
    }.get(layout, d)
    write_idx(folder, arrays, gz=layout != "flat_raw", dotted=layout == "dotted")
    if layout == "env_var":
        monkeypatch.setenv("JAXCOLLECTIVE_DATA_DIR", str(d))
        ds = data.load_real("mnist")
    else:
        ds = data.load_real("mnist", data_dir=str(d))
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.y_train.dtype == np.int32


def test_files_of_another_dataset_are_refused_by_content(isolated, monkeypatch):
    mnist, fashion = tiny_arrays(0), tiny_arrays(1)
    register(monkeypatch, "mnist", mnist)
    register(monkeypatch, "fashion_mnist", fashion)
    write_idx(isolated / "d", mnist)
    with pytest.raises(
        data.DataError, match="is not fashion_mnist's train images: it holds mnist's train images"
    ):
        data.load_real("fashion_mnist", data_dir=str(isolated / "d"))
    # and through run.py: one line, exit 2, before any training
    env = dict(
        os.environ, WANDB_MODE="disabled", HOME=str(isolated / "home"), JAXCOLLECTIVE_OFFLINE="1"
    )
    p = subprocess.run(
        [
            sys.executable,
            "run.py",
            "--dataset=fashion_mnist",
            "--epochs=1",
            f"--data_dir={isolated / 'd'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the real digests apply in the subprocess: the tiny files are refused as unknown
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert "is not fashion_mnist's train images" in p.stderr


def test_two_datasets_in_one_data_dir_are_kept_apart(isolated, monkeypatch):
    mnist, fashion = tiny_arrays(0), tiny_arrays(1)
    register(monkeypatch, "mnist", mnist)
    register(monkeypatch, "fashion_mnist", fashion)
    write_idx(isolated / "d" / "mnist", mnist)
    write_idx(isolated / "d" / "FashionMNIST" / "raw", fashion)
    for _ in range(2):  # the second time through the cache
        m = data.load_real("mnist", data_dir=str(isolated / "d"))
        f = data.load_real("fashion_mnist", data_dir=str(isolated / "d"))
        np.testing.assert_array_equal(m.x_train[..., 0], mnist["train_images"])
        np.testing.assert_array_equal(f.x_train[..., 0], fashion["train_images"])
    assert sorted(p.name for p in (isolated / "cache").iterdir()) == [
        "fashion_mnist.npz",
        "mnist.npz",
    ]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_bytes", "other_source"])
def test_a_damaged_or_stale_cache_is_rebuilt(damage, isolated, monkeypatch):
    arrays = tiny_arrays(0)
    register(monkeypatch, "mnist", arrays)
    write_idx(isolated / "d", arrays)
    data.load_real("mnist", data_dir=str(isolated / "d"))
    cache = isolated / "cache" / "mnist.npz"
    raw = cache.read_bytes()
    if damage == "truncate":
        cache.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        cache.write_bytes(b"not a cache")
    elif damage == "flip_bytes":  # inside x_train's data: only the zip CRC can tell
        i = raw.index(arrays["train_images"].tobytes()[:64]) + 100
        cache.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :])
    else:  # the source changed on disk (new files): the entry no longer matches them
        arrays = tiny_arrays(5)
        register(monkeypatch, "mnist", arrays)
        write_idx(isolated / "d", arrays)
    ds = data.load_real("mnist", data_dir=str(isolated / "d"))
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train_images"])
    assert (
        data.read_cache(
            cache,
            "mnist",
            "idx",
            rawdata.IDX_SHA256["mnist"],
            rawdata.signature(rawdata.find("mnist", [isolated / "d"])[0]),
        )
        is not None
    )


def test_truncated_and_non_idx_files_are_one_line_errors(isolated, monkeypatch):
    arrays = tiny_arrays(0)
    register(monkeypatch, "mnist", arrays)
    write_idx(isolated / "d", arrays)
    f = isolated / "d" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz is a damaged gzip"):
        data.load_real("mnist", data_dir=str(isolated / "d"))


def test_missing_or_file_data_dir_is_named(isolated):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_real("mnist", data_dir=str(isolated / "nope"))
    (isolated / "f").write_text("x")
    with pytest.raises(data.DataError, match="is a file, not a folder"):
        data.load_real("mnist", data_dir=str(isolated / "f"))


def cifar_batches(seed):
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(rawdata.CIFAR_TRAIN + rawdata.CIFAR_TEST):
        out[name] = {
            b"data": rng.integers(0, 256, (4 + i, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, 4 + i).tolist()),
        }
    return out


@pytest.mark.parametrize("form", ["extracted", "python_archive", "binary_archive"])
def test_cifar10_in_each_distributed_form(form, isolated, monkeypatch):
    batches = cifar_batches(0)
    pickles = {n: pickle.dumps(b, protocol=2) for n, b in batches.items()}
    for n, raw in pickles.items():
        monkeypatch.setitem(rawdata.CIFAR_PY_MD5, n, hashlib.md5(raw).hexdigest())
    d = isolated / "d"
    d.mkdir()
    if form == "binary_archive":
        members = {
            f"cifar-10-batches-bin/{n}.bin": b"".join(
                bytes([lab]) + row.tobytes() for lab, row in zip(b[b"labels"], b[b"data"])
            )
            for n, b in batches.items()
        }
        archive = d / rawdata.CIFAR_BIN_ARCHIVE
    else:
        members = {f"{rawdata.CIFAR_PY_DIR}/{n}": raw for n, raw in pickles.items()}
        archive = d / rawdata.CIFAR_PY_ARCHIVE
    if form == "extracted":
        for name, raw in members.items():
            (d / name).parent.mkdir(exist_ok=True)
            (d / name).write_bytes(raw)
    else:
        with tarfile.open(archive, "w:gz") as tar:
            for name, raw in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        if form == "binary_archive":
            monkeypatch.setattr(
                rawdata, "CIFAR_BIN_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest()
            )
    ds = data.load_real("cifar10", data_dir=str(d))
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(ds.x_train[0], first)  # CHW rows to HWC images
    assert ds.x_train.shape == (4 + 5 + 6 + 7 + 8, 32, 32, 3) and ds.x_test.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])


def test_cifar_binary_digest_is_tfds_registered_checksum():
    tfds = pytest.importorskip("tensorflow_datasets")
    infos = tfds.builder("cifar10").url_infos
    assert {i.checksum for i in infos.values()} == {rawdata.CIFAR_BIN_SHA256}
    assert {i.filename for i in infos.values()} == {rawdata.CIFAR_BIN_ARCHIVE}


def test_with_internet_the_registered_files_are_downloaded_then_read(isolated, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    arrays = tiny_arrays(0)
    register(monkeypatch, "mnist", arrays)
    served = isolated / "served"
    write_idx(served, arrays)
    calls = []

    def fake_download(self, urls):  # what TFDS's manager returns: paths under download_dir
        calls.append(dict(urls))
        return {k: served / k for k in urls}

    monkeypatch.setattr(data, "reachable", lambda *a, **k: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    (isolated / "d").mkdir()
    ds = data.load_real("mnist", data_dir=str(isolated / "d"))
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays["test_images"])
    assert set(calls[0]) == {f"{n[0]}.gz" for n in rawdata.IDX_NAMES.values()}
    assert all(u.startswith("https://") for u in calls[0].values())
    assert (isolated / "d" / "mnist" / "train-images-idx3-ubyte.gz").exists()  # found next time


DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    if not (DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            "Debian's dataset-fashion-mnist is not installed "
            "(`sudo apt-get install dataset-fashion-mnist`)"
        )
    monkeypatch.setenv("JAXCOLLECTIVE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.delenv("JAXCOLLECTIVE_DATA_DIR", raising=False)
    ds = data.load_real("fashion_mnist")  # no flag: found where Debian installs it
    assert ds.x_train.shape == (60_000, 28, 28, 1) and ds.x_test.shape == (10_000, 28, 28, 1)
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    # the study's smaller collective (README, Results): one epoch
    cfg = Config.from_dict(
        {
            "model_type": "collective",
            "epochs": 1,
            "batch_size": 256,
            "gradient_accumulation_steps": 1,
            "use_augmentation": False,
        },
        preset="debug",
    )
    record = train_and_evaluate(cfg, Writer(), dataset=ds)
    assert record["model_params"] == 567_044
    assert record["final/test_accuracy"] >= 80.0, record["final/test_accuracy"]


def test_digits_are_real_and_test_split_is_fixed():
    a, b = data.load_digits(), data.load_digits()
    assert a.x_train.shape == (1438, 8, 8, 1) and a.x_test.shape == (359, 8, 8, 1)
    assert a.x_train.max() == 255 and set(np.unique(a.y_test)) == set(range(10))
    np.testing.assert_array_equal(a.x_test, b.x_test)
    # read from scikit-learn's bundled file without importing it: what load_digits gives
    from sklearn.datasets import load_digits

    sk = load_digits()
    x = np.round(sk.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(np.concatenate([a.x_train, a.x_test]).sum(0), x.sum(0))
    perm = np.random.default_rng(data.DIGITS_TEST_SEED).permutation(len(sk.target))
    test = np.sort(perm[:359])
    np.testing.assert_array_equal(a.x_test, x[test])
    np.testing.assert_array_equal(a.y_test, sk.target[test])


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
    matches = [
        np.allclose(cs[8:24, 8:24], xs[8 + dy : 24 + dy, 8 + dx : 24 + dx], atol=1e-6)
        for dy in range(-4, 5)
        for dx in range(-4, 5)
    ]
    assert sum(matches) == 1


def test_rotation_moves_mass_about_the_centre():
    """A rotation-only warp turns a blob about the image centre: its distance from the
    centre and its shape are kept, its angle spreads over [-rotate_deg, rotate_deg].

    64 copies of one image holding a small Gaussian blob 9 px left of the centre, warped
    with AugSpec(rotate_deg=90) and nothing else. Each output's centroid must stay 9 px from
    the centre (a translation moves it off that circle, a scaling scales the radius), the
    blob's spread must be kept but for bilinear blur (a scaling changes it), and the angle
    it turned through must take both signs, reach past 60 degrees (uniform on [-90, 90]: 64
    draws all within 60 has probability (2/3)^64) and never pass 90 (plus 0.5 for sampling).
    A warp without its rotation turns nothing. Measured with key 0: radius within 0.006 px
    of 9 (tolerance 0.05), angles -88.9 to 87.1 degrees.
    """
    h = w = 28
    c = (w - 1) / 2.0  # the warp's centre (augment.py)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    bx, by, sigma = c - 9.0, c, 1.2  # > 3.5 sigma from every edge at every angle: no clipping
    blob = np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * sigma**2))
    x = jnp.asarray(np.broadcast_to(blob[None, :, :, None], (64, h, w, 1)), jnp.float32)
    y = np.asarray(augment(x, jax.random.key(0), AugSpec(rotate_deg=90.0)))[..., 0]
    y = y.astype(np.float64)

    def moments(img_BxHxW):
        m_B = img_BxHxW.sum((1, 2))
        cx_B = (img_BxHxW * xs).sum((1, 2)) / m_B
        cy_B = (img_BxHxW * ys).sum((1, 2)) / m_B
        spread_B = (
            img_BxHxW * ((xs - cx_B[:, None, None]) ** 2 + (ys - cy_B[:, None, None]) ** 2)
        ).sum((1, 2)) / m_B
        return m_B, cx_B - c, cy_B - c, spread_B

    m0, cx0, cy0, spread0 = (v[0] for v in moments(blob[None]))
    m_B, cx_B, cy_B, spread_B = moments(y)
    np.testing.assert_allclose(m_B, m0, rtol=0.02)  # the blob is moved whole, not cut
    np.testing.assert_allclose(np.hypot(cx_B, cy_B), np.hypot(cx0, cy0), atol=0.05)
    # bilinear sampling at a fractional offset f blurs by a variance f(1 - f) <= 1/4 per
    # axis, so the spread may only grow, and by at most 0.5 px^2 (measured: +0.16 to +0.35)
    assert np.all(spread_B >= spread0 - 0.01) and np.all(spread_B <= spread0 + 0.5), spread_B
    turned_B = np.degrees(np.arctan2(cy_B, cx_B) - np.arctan2(cy0, cx0))
    turned_B = (turned_B + 180.0) % 360.0 - 180.0
    assert np.abs(turned_B).max() <= 90.5, np.sort(turned_B)
    assert turned_B.min() < -60.0 and turned_B.max() > 60.0, np.sort(turned_B)
