"""Datasets as whole uint8 arrays, loaded once (normalised later, inside the compiled step).

- `mnist`, `fashion_mnist`, `cifar10` from their raw files (rawdata.py: numpy only,
  each file checked by the digest of its content), found in the usual layouts under
  `--data_dir`, `$JAXCOLLECTIVE_DATA_DIR`, `$TFDS_DATA_DIR` and where Linux
  distributions install datasets; or from a prepared TFDS data dir (read without
  TensorFlow through the array_record data source); or, with internet, downloaded
  once with TFDS's download manager and its registered checksums. The decoded arrays
  are cached per dataset with the digests and on-disk signature of their source, so
  a later run starts at once and a changed or damaged source is never trusted.
- `digits`: scikit-learn's 8x8 handwritten digits, no network needed.
- `synthetic`: random images in the shape of `synthetic_like`, for benchmarks.

The train/validation split is not made here: it is a pair of index arrays per seed
(`split_indices`), so replicas with different seeds can share one copy of the data.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from jaxcollective.data import raw as rawdata
from jaxcollective.config import DATASETS, TFDS_DATASETS, Config, ConfigError, DatasetInfo
from jaxcollective.util import reachable


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
    return load_real(cfg.dataset, data_dir=cfg.data_dir, manual_dir=cfg.manual_dir)


def split_indices(n: int, seed: int, val_split: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the official training split: `val_split` of it for
    validation, fixed by seed."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_split))
    return np.sort(perm[n_val:]).astype(np.int32), np.sort(perm[:n_val]).astype(np.int32)


# ------------------------------------------------------------------- digits
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20240607  # fixed: the test set never moves with `seed`


def digits_file() -> str:
    """scikit-learn's copy of the UCI digits (1797 rows of 64 pixels in 0..16, then the
    label), found without importing scikit-learn (its import costs ~2 s per process)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "--dataset=digits reads scikit-learn's bundled copy: "
            "`pip install scikit-learn` (it is in requirements.txt)"
        )
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")


def load_digits() -> Dataset:
    """The digits as sklearn.datasets.load_digits gives them (tests/test_data.py)."""
    with gzip.open(digits_file(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    x = np.round(rows[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = rows[:, -1].astype(np.int32)  # 1797 x 8 x 8 x 1 images, labels 0..9
    perm = np.random.default_rng(DIGITS_TEST_SEED).permutation(len(y))
    n_test = int(round(len(y) * DIGITS_TEST_FRACTION))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return Dataset("digits", DATASETS["digits"], x[train], y[train], x[test], y[test])


# ---------------------------------------------------------------- synthetic
SYNTHETIC_SIZES = {
    "mnist": (60_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
    "digits": (1_438, 359),
}


def make_synthetic(like: str, seed: int = 0, sizes: Optional[tuple[int, int]] = None) -> Dataset:
    info = DATASETS[like]
    n_train, n_test = sizes or SYNTHETIC_SIZES[like]
    rng = np.random.default_rng(seed)
    shape = info.image_shape
    return Dataset(
        f"synthetic[{like}]",
        info,
        rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        rng.integers(0, info.num_classes, n_train, dtype=np.int32),
        rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        rng.integers(0, info.num_classes, n_test, dtype=np.int32),
        synthetic=True,
    )


# --------------------------------------------------------- mnist, fashion_mnist, cifar10
def search_roots(data_dir: Optional[str] = None, manual_dir: Optional[str] = None) -> list[Path]:
    """Folders searched for raw files, in order (each also in its layouts, see rawdata)."""
    roots = []
    for flag, d in (("--data_dir", data_dir), ("--manual_dir", manual_dir)):
        if d:
            p = Path(d).expanduser()
            if not p.is_dir():
                what = "is a file, not a folder" if p.exists() else "does not exist"
                raise DataError(f"{flag}={d} {what}; pass the folder that holds the dataset files")
            roots.append(p)
    for var in ("JAXCOLLECTIVE_DATA_DIR", "TFDS_DATA_DIR"):
        if os.environ.get(var):
            roots.append(Path(os.environ[var]).expanduser())
    roots.append(Path.home() / "tensorflow_datasets")
    return roots


def _tfds_dir(data_dir: Optional[str]) -> Path:
    return Path(
        data_dir
        or os.environ.get("JAXCOLLECTIVE_DATA_DIR")
        or os.environ.get("TFDS_DATA_DIR")
        or Path.home() / "tensorflow_datasets"
    ).expanduser()


def cache_dir() -> Path:
    return Path(
        os.environ.get("JAXCOLLECTIVE_DATA_CACHE")
        or Path.home() / ".cache" / "jaxcollective" / "data"
    ).expanduser()


def how_to_supply(name: str, partial: list[str]) -> str:
    files = {
        "cifar10": f"{rawdata.CIFAR_PY_ARCHIVE}, its extracted {rawdata.CIFAR_PY_DIR}/, or "
        f"{rawdata.CIFAR_BIN_ARCHIVE}"
    }.get(name, ", ".join(f"{n[0]}.gz" for n in rawdata.IDX_NAMES.values()))
    ways = [
        f"put the raw files ({files}) in a folder and pass --data_dir=PATH (the folder "
        f"itself, PATH/{name}, torchvision's layout or PATH/downloads/manual; or set "
        "JAXCOLLECTIVE_DATA_DIR)",
        "pass --data_dir of a prepared TFDS data dir",
        "run once with internet",
    ]
    if name == "fashion_mnist":
        ways.insert(0, "on Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist`")
    seen = f" Incomplete sets seen: {'; '.join(partial)}." if partial else ""
    return (
        f"dataset {name!r} was not found and the download site cannot be reached.{seen} "
        f"Supply it: "
        + "; ".join(f"({i}) {w}" for i, w in enumerate(ways, 1))
        + ". Or use --dataset=digits, which needs no download."
    )


def load_real(
    name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None
) -> Dataset:
    """Raw files if found (verified), else a prepared TFDS dir, else a download."""
    assert name in TFDS_DATASETS, name
    roots = search_roots(data_dir, manual_dir)
    roots += [Path(d) for d in rawdata.SYSTEM_DIRS.get(name, ())]
    src, partial = rawdata.find(name, roots)
    if src is None:
        ds = load_prepared_tfds(name, _tfds_dir(data_dir))
        if ds is not None:
            return ds
        if not reachable():
            raise DataError(how_to_supply(name, partial))
        src = download(name, _tfds_dir(data_dir))
    return from_source(src)


def from_source(src: rawdata.Source) -> Dataset:
    """The dataset of a raw source, through the cache when the cache matches it."""
    sig = rawdata.signature(src)
    path = cache_dir() / f"{src.dataset}.npz"
    ds = read_cache(
        path, src.dataset, src.kind, rawdata.expected_digests(src.dataset, src.kind), sig
    )
    if ds is not None:
        return ds
    try:
        arrays, digests = rawdata.read(src)
    except rawdata.RawDataError as err:
        raise DataError(str(err)) from None
    ds = Dataset(
        src.dataset,
        DATASETS[src.dataset],
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
    )
    check_arrays(ds)
    write_cache(
        path, ds, {"dataset": src.dataset, "kind": src.kind, "digests": digests, "signature": sig}
    )
    return ds


def check_arrays(ds: Dataset) -> None:
    """Shapes, dtypes and label range of decoded data (what a cache entry must also pass)."""
    info = ds.info
    for x, y, split in ((ds.x_train, ds.y_train, "train"), (ds.x_test, ds.y_test, "test")):
        if (
            x.dtype != np.uint8
            or x.shape[1:] != info.image_shape
            or y.ndim != 1
            or len(x) != len(y)
            or len(y) == 0
            or y.min() < 0
            or y.max() >= info.num_classes
        ):
            raise DataError(
                f"{ds.name}'s {split} split decodes to images {x.shape} {x.dtype} and "
                f"labels {y.shape}, not {info.image_shape} uint8 images with labels "
                f"0..{info.num_classes - 1}"
            )


def read_cache(path: Path, name: str, kind: str, digests: dict, signature) -> Optional[Dataset]:
    """The cached arrays if the entry is for this dataset, these source digests and these
    files as they are on disk, and reads back whole (zip CRCs) with valid shapes;
    otherwise None (the caller rebuilds it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if (
                meta.get("dataset") != name
                or meta.get("kind") != kind
                or meta.get("digests") != digests
                or meta.get("signature") != signature
            ):
                return None
            ds = Dataset(name, DATASETS[name], z["x_train"], z["y_train"], z["x_test"], z["y_test"])
        check_arrays(ds)
        return ds
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, DataError):
        return None


def write_cache(path: Path, ds: Dataset, meta: dict) -> None:
    """Atomically: a temporary file in the same folder, then a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                x_train=ds.x_train,
                y_train=ds.y_train,
                x_test=ds.x_test,
                y_test=ds.y_test,
                meta=np.asarray(json.dumps(meta)),
            )
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass  # a read-only cache folder only costs the decode next time


def download(name: str, root: Path) -> rawdata.Source:
    """The official raw files through TFDS's download manager (its registered URLs and
    checksums; no TensorFlow needed), then linked under `root/name` by their own names,
    where the next run finds them."""
    import tensorflow_datasets as tfds

    logging.getLogger("absl").setLevel(logging.ERROR)
    url_infos = tfds.builder(name, data_dir=str(root)).url_infos
    dm = tfds.download.DownloadManager(
        download_dir=root / "downloads",
        url_infos=url_infos,
        dataset_name=name,
        force_checksums_validation=True,
    )
    paths = dm.download({info.filename: url for url, info in url_infos.items()})
    dest = root / name
    dest.mkdir(parents=True, exist_ok=True)
    for filename, path in paths.items():
        target = dest / filename
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    src, _ = rawdata.find_in(name, dest)
    if src is None:
        raise DataError(
            f"downloaded {', '.join(paths)} for {name!r} but they are not its raw files"
        )
    return src


# ------------------------------------------------------- a prepared TFDS data dir
def load_prepared_tfds(name: str, root: Path) -> Optional[Dataset]:
    """`name` from a data dir prepared by TFDS, or None when it holds none."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    # TFDS warns through absl about every folder it probes; our error says what matters.
    logging.getLogger("absl").setLevel(logging.ERROR)
    builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
    if not builder.is_prepared():
        return None
    info_file = Path(builder.data_dir) / "dataset_info.json"
    sig = [str(info_file), info_file.stat().st_mtime_ns if info_file.exists() else 0]
    path = cache_dir() / f"{name}.npz"
    ds = read_cache(path, name, "tfds", {}, sig)
    if ds is None:
        x_train, y_train = _read_split(builder, "train")
        x_test, y_test = _read_split(builder, "test")
        ds = Dataset(name, DATASETS[name], x_train, y_train, x_test, y_test)
        check_arrays(ds)
        write_cache(path, ds, {"dataset": name, "kind": "tfds", "digests": {}, "signature": sig})
    return ds


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        source = builder.as_data_source(split=split)
        items = [source[i] for i in range(len(source))]
        x = np.stack([np.asarray(it["image"], np.uint8) for it in items])
        y = np.asarray([int(it["label"]) for it in items], np.int32)
        return x, y
    except (NotImplementedError, ValueError, FileNotFoundError) as err:
        raise DataError(
            f"{builder.name!r} in {builder.data_dir} is prepared in a format that "
            "needs TensorFlow to read (tfrecord); use the raw files instead "
            "(--data_dir=FOLDER, see docs/datasets.md)"
        ) from err


# Official training split sizes, known before loading (for checks before any work).
TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000, "digits": 1_438}


def train_split_size(cfg: Config) -> Optional[int]:
    """Examples left for training after the validation split, without loading."""
    n = (
        SYNTHETIC_SIZES[cfg.synthetic_like][0]
        if cfg.dataset == "synthetic"
        else TRAIN_SIZES.get(cfg.dataset)
    )
    return None if n is None else n - int(round(n * cfg.val_split))
