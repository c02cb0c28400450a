"""The datasets' raw files, read with numpy alone, and checked by their content.

MNIST and Fashion-MNIST come as four IDX files (gzipped or not); CIFAR-10 as the
python version (pickled batches, in `cifar-10-python.tar.gz` or extracted as
`cifar-10-batches-py/`) or the binary version that TFDS downloads
(`cifar-10-binary.tar.gz`). Each file's identity is the digest of its *decompressed*
content, so a repacked file (Debian's gzip headers differ from upstream's) is
accepted, and a file of another dataset under the same name is refused by name.

`find(name, dirs)` looks for a complete set of files in a list of folders, in the
layouts users have (the folder itself, `<folder>/<dataset>`, torchvision's
`<folder>/<MNIST|FashionMNIST>/raw`, TFDS's `<folder>/downloads/manual`);
`read(source)` decodes it to uint8 arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_NAMES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}

# SHA-256 of the decompressed IDX files, as published with the datasets.
IDX_SHA256 = {
    "mnist": {
        "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
# CIFAR-10, python version: MD5 of each pickled batch (the CIFAR page's, as torchvision
# checks them); binary version: SHA-256 of the archive, TFDS's registered checksum.
CIFAR_PY_DIR = "cifar-10-batches-py"
CIFAR_PY_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_BIN_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
CIFAR_PY_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_BIN_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"

TORCHVISION_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# Where Linux distributions install datasets (Debian/Ubuntu: `dataset-fashion-mnist`).
SYSTEM_DIRS = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
    "cifar10": ("/usr/share/datasets/cifar10", "/usr/share/datasets/cifar-10"),
}


class RawDataError(ValueError):
    """A raw file is not what it should be; the message names it."""


@dataclass(frozen=True)
class Source:
    """A complete set of raw files of one dataset: `kind` says how to read `files`."""

    dataset: str
    kind: str  # "idx", "cifar_py_dir", "cifar_py_archive", "cifar_bin_archive"
    files: tuple[Path, ...]

    @property
    def folder(self) -> Path:
        return self.files[0].parent


def layouts(name: str, root: Path) -> list[Path]:
    """The folders under `root` where `name`'s raw files may lie, in search order."""
    out = [root, root / name]
    if name in TORCHVISION_DIRS:
        out.append(root / TORCHVISION_DIRS[name] / "raw")
    out.append(root / "downloads" / "manual")
    return out


def _idx_file(folder: Path, role: str) -> Optional[Path]:
    for base in IDX_NAMES[role]:
        for f in (folder / base, folder / f"{base}.gz"):
            if f.is_file():
                return f
    return None


def find_in(name: str, folder: Path) -> tuple[Optional[Source], list[str]]:
    """(the complete source in `folder`, or None; the file names found if it is partial)."""
    if name in IDX_SHA256:
        found = {r: _idx_file(folder, r) for r in ROLES}
        files = [f for f in found.values() if f is not None]
        if len(files) == len(ROLES):
            return Source(name, "idx", tuple(found[r] for r in ROLES)), []
        return None, [f.name for f in files]
    for sub in (folder / CIFAR_PY_DIR, folder):
        batches = [sub / b for b in CIFAR_TRAIN + CIFAR_TEST]
        if all(b.is_file() for b in batches):
            return Source(name, "cifar_py_dir", tuple(batches)), []
    if (folder / CIFAR_PY_ARCHIVE).is_file():
        return Source(name, "cifar_py_archive", (folder / CIFAR_PY_ARCHIVE,)), []
    if (folder / CIFAR_BIN_ARCHIVE).is_file():
        return Source(name, "cifar_bin_archive", (folder / CIFAR_BIN_ARCHIVE,)), []
    return None, []


def find(name: str, roots: Iterable[Path]) -> tuple[Optional[Source], list[str]]:
    """The first complete source over `roots` and their layouts; otherwise the partial
    sets seen (as 'folder: names') for the error message."""
    partial = []
    seen = set()
    for root in roots:
        for folder in layouts(name, Path(root).expanduser()):
            key = str(folder.resolve()) if folder.exists() else str(folder)
            if key in seen or not folder.is_dir():
                continue
            seen.add(key)
            src, names = find_in(name, folder)
            if src is not None:
                return src, partial
            if names:
                partial.append(f"{folder}: {', '.join(names)}")
    return None, partial


# ------------------------------------------------------------------- reading
def _raw_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise RawDataError(f"{path} is a damaged gzip file ({err}); copy it again") from None
    return data


def _what_is(digest: str) -> Optional[str]:
    for ds, roles in IDX_SHA256.items():
        for role, d in roles.items():
            if d == digest:
                return f"{ds}'s {role.replace('_', ' ')}"
    return None


def _parse_idx(path: Path, raw: bytes, ndim: int) -> np.ndarray:
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise RawDataError(f"{path} is not an IDX file of {ndim}-d uint8 data")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise RawDataError(f"{path} is truncated: {len(body)} bytes of data for shape {dims}")
    return np.frombuffer(body, np.uint8).reshape(dims)


def read_idx(source: Source) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The four IDX files as arrays, and their content digests; a file whose content is
    not the dataset's is refused with what it is."""
    want = IDX_SHA256[source.dataset]
    arrays, digests = {}, {}
    for role, path in zip(ROLES, source.files):
        raw = _raw_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != want[role]:
            what = _what_is(digest)
            what = f"it holds {what}" if what else "its content matches no known release"
            raise RawDataError(
                f"{path} is not {source.dataset}'s {role.replace('_', ' ')}: "
                f"{what} (SHA-256 of the decompressed file {digest[:12]}...)"
            )
        a = _parse_idx(path, raw, 3 if role.endswith("images") else 1)
        arrays[role] = a[..., None] if a.ndim == 3 else a.astype(np.int32)
        digests[role] = digest
    return arrays, digests


def _unpickle_batch(name: str, raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    digest = hashlib.md5(raw).hexdigest()
    if digest != CIFAR_PY_MD5[name]:
        raise RawDataError(
            f"{where} is not CIFAR-10's {name}: its MD5 {digest} differs from "
            f"the release's {CIFAR_PY_MD5[name]}"
        )
    d = pickle.loads(raw, encoding="bytes")
    x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.asarray(d[b"labels"], np.int32)


def _cifar_arrays(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    tr = [parts[b] for b in CIFAR_TRAIN]
    te = [parts[b] for b in CIFAR_TEST]
    return {
        "train_images": np.concatenate([x for x, _ in tr]),
        "train_labels": np.concatenate([y for _, y in tr]),
        "test_images": np.concatenate([x for x, _ in te]),
        "test_labels": np.concatenate([y for _, y in te]),
    }


def _tar_members(path: Path, wanted: Iterable[str]) -> dict[str, bytes]:
    wanted = set(wanted)
    out = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted:
                    out[base] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise RawDataError(f"{path} is not a readable tar archive ({err}); copy it again") from None
    missing = sorted(wanted - set(out))
    if missing:
        raise RawDataError(f"{path} lacks {', '.join(missing)}: is it the CIFAR-10 archive?")
    return out


def read_cifar(source: Source) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    names = CIFAR_TRAIN + CIFAR_TEST
    if source.kind == "cifar_bin_archive":
        path = source.files[0]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != CIFAR_BIN_SHA256:
            raise RawDataError(
                f"{path} is not CIFAR-10's binary archive: SHA-256 {digest[:12]}... "
                f"differs from the registered {CIFAR_BIN_SHA256[:12]}..."
            )
        members = _tar_members(path, [f"{n}.bin" for n in names])
        parts = {}
        for n in names:
            rec = np.frombuffer(members[f"{n}.bin"], np.uint8).reshape(-1, 3073)
            x = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            parts[n] = (np.ascontiguousarray(x), rec[:, 0].astype(np.int32))
        return _cifar_arrays(parts), {"archive": digest}
    if source.kind == "cifar_py_archive":
        members = _tar_members(source.files[0], names)
        raws = {n: (members[n], f"{source.files[0]}:{n}") for n in names}
    else:
        raws = {p.name: (p.read_bytes(), str(p)) for p in source.files}
    parts = {n: _unpickle_batch(n, raw, where) for n, (raw, where) in raws.items()}
    return _cifar_arrays(parts), {n: hashlib.md5(raws[n][0]).hexdigest() for n in names}


def read(source: Source) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays by role, content digests) of a verified source."""
    return read_idx(source) if source.kind == "idx" else read_cifar(source)


def signature(source: Source) -> list[list]:
    """What identifies the source files on disk without reading them (path, size, mtime)."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in source.files]


def expected_digests(name: str, kind: str) -> dict[str, str]:
    """The digests a verified source of this kind has (what a cache entry must carry)."""
    if kind == "idx":
        return dict(IDX_SHA256[name])
    if kind == "cifar_bin_archive":
        return {"archive": CIFAR_BIN_SHA256}
    return dict(CIFAR_PY_MD5)
