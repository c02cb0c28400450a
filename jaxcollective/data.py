"""Datasets as whole uint8 arrays, loaded once (normalised later, inside the compiled step).

- `mnist`, `fashion_mnist`, `cifar10` through tensorflow-datasets. Prepared data is
  read without TensorFlow (TFDS's array_record data source); TensorFlow is needed
  only to *prepare* data, or to read a data dir prepared in the tfrecord format.
  The decoded arrays are cached as .npz beside the TFDS data, so later runs of a
  sweep start at once.
- `digits`: scikit-learn's 8x8 handwritten digits, no network needed.
- `synthetic`: random images in the shape of `synthetic_like`, for benchmarks.

The train/validation split is not made here: it is a pair of index arrays per seed
(`split_indices`), so replicas with different seeds can share one copy of the data.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .config import DATASETS, TFDS_DATASETS, Config, ConfigError, DatasetInfo

VAL_FRACTION = 0.1


class DataError(ConfigError):
    """The dataset cannot be had; the message says how to supply it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    info: DatasetInfo
    x_train: np.ndarray  # uint8, N x H x W x C (official training split, before the val split)
    y_train: np.ndarray  # int32
    x_test: np.ndarray
    y_test: np.ndarray
    synthetic: bool = False


def load(cfg: Config) -> Dataset:
    if cfg.dataset == "digits":
        return load_digits()
    if cfg.dataset == "synthetic":
        return make_synthetic(cfg.synthetic_like, seed=cfg.seed)
    return load_tfds(cfg.dataset, data_dir=cfg.data_dir, manual_dir=cfg.manual_dir)


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the official training split: 10% validation, fixed by seed."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * VAL_FRACTION))
    return np.sort(perm[n_val:]).astype(np.int32), np.sort(perm[:n_val]).astype(np.int32)


# ------------------------------------------------------------------- digits
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20240607  # fixed: the test set never moves with `seed`


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 1797 x 8 x 8 x 1
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(DIGITS_TEST_SEED).permutation(len(y))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return Dataset("digits", DATASETS["digits"], x[train], y[train], x[test], y[test])


# ---------------------------------------------------------------- synthetic
SYNTHETIC_SIZES = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000),
                   "cifar10": (50_000, 10_000), "digits": (1_438, 359)}


def make_synthetic(like: str, seed: int = 0, sizes: Optional[tuple[int, int]] = None) -> Dataset:
    info = DATASETS[like]
    n_train, n_test = sizes or SYNTHETIC_SIZES[like]
    rng = np.random.default_rng(seed)
    shape = info.image_shape
    return Dataset(f"synthetic[{like}]", info,
                   rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
                   rng.integers(0, info.num_classes, n_train, dtype=np.int32),
                   rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
                   rng.integers(0, info.num_classes, n_test, dtype=np.int32), synthetic=True)


# --------------------------------------------------------------------- tfds
def _data_dir(data_dir: Optional[str]) -> Path:
    return Path(data_dir or os.environ.get("TFDS_DATA_DIR")
                or Path.home() / "tensorflow_datasets").expanduser()


def _how_to_supply(name: str, data_dir: Path, missing_files: list[str]) -> str:
    files = ", ".join(missing_files) if missing_files else "the files TFDS lists for it"
    return (f"dataset {name!r} is not prepared in {data_dir} and the download site cannot be "
            f"reached. Supply it one of three ways: (1) run once with internet "
            f"(`python run.py --dataset={name} --epochs=1`); (2) copy a prepared TFDS data dir "
            f"from another machine and pass --data_dir=PATH (or set TFDS_DATA_DIR); (3) put the "
            f"raw files ({files}) in a folder and pass --manual_dir=PATH (preparing needs "
            f"`pip install tensorflow`). Or use --dataset=digits, which needs no download.")


def _online(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 2.0) -> bool:
    """True if `host` answers within `timeout` seconds, DNS included (hard cap via a thread)."""
    import socket

    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def load_tfds(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None) -> Dataset:
    assert name in TFDS_DATASETS, name

    root = _data_dir(data_dir)
    cache = root / "jaxcollective" / f"{name}.npz"
    if cache.exists():
        z = np.load(cache)
        return Dataset(name, DATASETS[name], z["x_train"], z["y_train"], z["x_test"], z["y_test"])

    import logging

    import tensorflow_datasets as tfds

    # TFDS warns through absl about every folder it probes; our error says what matters.
    logging.getLogger("absl").setLevel(logging.ERROR)
    builder = tfds.builder(name, data_dir=str(root))
    if not builder.is_prepared():
        expected = sorted({u.filename for u in (builder.url_infos or {}).values() if u.filename})
        if manual_dir:
            missing = [f for f in expected if not (Path(manual_dir).expanduser() / f).exists()]
            if missing:
                raise DataError(f"--manual_dir={manual_dir} lacks {', '.join(missing)} for "
                                f"dataset {name!r}; put the raw files there under these names")
            _prepare(builder, tfds, manual_dir)
        elif _online():
            _prepare(builder, tfds, None)
        else:
            raise DataError(_how_to_supply(name, root, expected))
    x_train, y_train = _read_split(builder, "train")
    x_test, y_test = _read_split(builder, "test")
    ds = Dataset(name, DATASETS[name], x_train, y_train, x_test, y_test)
    _write_cache(cache, ds)
    return ds


def _prepare(builder, tfds, manual_dir: Optional[str]) -> None:
    cfg = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
        builder.download_and_prepare(download_config=cfg, file_format="array_record")
    except ImportError as err:  # TFDS encodes the images it prepares with TensorFlow
        raise DataError(f"preparing {builder.name!r} needs TensorFlow: `pip install tensorflow`, "
                        "or copy a prepared TFDS data dir and pass --data_dir") from err


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        source = builder.as_data_source(split=split)
        items = [source[i] for i in range(len(source))]
        x = np.stack([np.asarray(it["image"], np.uint8) for it in items])
        y = np.asarray([int(it["label"]) for it in items], np.int32)
        return x, y
    except (NotImplementedError, ValueError, FileNotFoundError) as err:
        # Prepared as tfrecord (TFDS's default): readable only through TensorFlow.
        try:
            import tensorflow_datasets as tfds
            arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        except ImportError:
            raise DataError(f"{builder.name!r} in {builder.data_dir} is stored as tfrecord, which "
                            "needs TensorFlow to read: `pip install tensorflow` once (the decoded "
                            "arrays are then cached)") from err
        return np.asarray(arrays["image"], np.uint8), np.asarray(arrays["label"], np.int32)


def _write_cache(path: Path, ds: Dataset) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
        tmp.replace(path)
    except OSError:
        pass  # a read-only data dir only costs the decode next time
