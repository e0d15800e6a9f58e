"""nas.data: bundled sources, CIFAR-10 python format, ImageFolder, and every malformed input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import ImageDataset, Splits, batches, calibration_subset, load_dataset, make_loader
from nas.errors import DataError, UserError

# --------------------------------------------------------------------------------------------
# Fixture writers: tiny datasets in the real on-disk formats


def write_cifar_batch(path: Path, n: int, num_classes: int = 10, seed: int = 0) -> None:
    """A batch pickle as CIFAR-10 ships it (bytes keys, uint8 (N, 3072) rows, list of labels)."""
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"training batch",
        b"labels": [int(i % num_classes) for i in range(n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar_dir(root: Path, *, batches_n: tuple[int, ...] = (30, 30), test_n: int | None = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(batches_n, start=1):
        write_cifar_batch(root / f"data_batch_{i}", n, seed=i)
    if test_n is not None:
        write_cifar_batch(root / "test_batch", test_n, seed=99)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"truck"]
    meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_image_folder(root: Path, classes: dict[str, int], *, size: tuple[int, int] = (20, 14)) -> Path:
    """PNG and JPEG images (RGB and gray, two sizes) in one subfolder per class."""
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            shape = (size[1], size[0], 3) if i % 2 == 0 else (size[0], size[1])
            pixels = np.clip(rng.normal(40 + 60 * c, 20, size=shape), 0, 255).astype(np.uint8)
            suffix = ".png" if i % 3 else ".JPG"
            Image.fromarray(pixels).save(folder / f"{i}{suffix}")
    return root


@pytest.fixture(scope="module")
def mnist() -> Splits:
    return load_dataset(None, 16)


# --------------------------------------------------------------------------------------------
# Bundled sources


def test_mnist_shapes_dtype_classes(mnist: Splits) -> None:
    assert mnist.name == "mnist" and mnist.num_classes == 10 and mnist.resolution == 16
    assert mnist.class_names == tuple(str(i) for i in range(10))
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (3500, 750, 750)
    # Stored small: one uint8 channel at the target resolution.
    assert mnist.train.images.dtype == torch.uint8 and mnist.train.images.shape == (3500, 1, 16, 16)
    assert np.bincount(mnist.val.labels.numpy()).tolist() == [75] * 10  # stratified
    assert np.bincount(mnist.test.labels.numpy()).tolist() == [75] * 10
    # The source is sorted by class; the splits are not: any prefix is class-balanced.
    assert np.bincount(mnist.val.labels[:50].numpy()).tolist() == [5] * 10
    x, y = mnist.train.batch(torch.arange(512))
    assert x.shape == (512, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2])  # gray repeated to 3 channels
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3  # normalised
    image, label = mnist.train[3]
    assert image.shape == (3, 16, 16) and label.ndim == 0
    assert torch.equal(mnist.train[np.int64(3)][0], image) and torch.equal(mnist.train[2:5][0][1], image)


def test_mnist_split_is_deterministic_by_seed(mnist: Splits) -> None:
    again = load_dataset("mnist", 16, seed=0)
    other = load_dataset("MNIST", 16, seed=1)
    assert torch.equal(again.val.images, mnist.val.images)
    assert torch.equal(again.train.labels, mnist.train.labels)
    assert not torch.equal(other.val.images, mnist.val.images)
    # The three splits never share a source image.
    ids = [set(part.ids.tolist()) for part in (mnist.train, mnist.val, mnist.test)]
    assert sum(map(len, ids)) == 5000 and len(set().union(*ids)) == 5000
    train_rows = {bytes(r) for r in mnist.train.images.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in mnist.val.images.flatten(1).numpy()[:200])


def test_splits_do_not_depend_on_the_resolution(mnist: Splits) -> None:
    """Later commands reload a run's data at another resolution: same images in every split."""
    bigger = load_dataset(None, 40)
    assert bigger.manifest() == mnist.manifest()
    assert torch.equal(bigger.test.labels, mnist.test.labels)
    assert load_dataset(None, 16, seed=1).manifest()["test"] != mnist.manifest()["test"]


def test_limit_takes_a_stratified_subset() -> None:
    splits = load_dataset(None, 12, limit=200, val_fraction=0.25, test_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 50, 50)
    assert np.bincount(splits.train.labels.numpy()).tolist() == [10] * 10


def test_digits_loads() -> None:
    splits = load_dataset("digits", 8)
    assert splits.num_classes == 10 and len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.train.images.shape[1:] == (1, 8, 8)
    assert int(splits.train.images.max()) == 255  # 0..16 rescaled to 0..255


# --------------------------------------------------------------------------------------------
# CIFAR-10 python format


def test_cifar_dir_uses_test_batch_as_test(tmp_path: Path) -> None:
    root = write_cifar_dir(tmp_path / "cifar")
    splits = load_dataset(str(root), 24, val_fraction=0.15, test_fraction=0.15)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 20)  # val: 1 of 6 per class
    assert splits.class_names is not None and splits.class_names[3] == "cat"
    assert splits.num_classes == 10 and splits.train.images.shape == (50, 3, 24, 24)
    x, _ = splits.test.batch(torch.arange(4))
    assert x.shape == (4, 3, 24, 24) and not torch.equal(x[:, 0], x[:, 1])


def test_cifar_dir_without_test_batch_is_split(tmp_path: Path) -> None:
    root = write_cifar_dir(tmp_path / "cifar", batches_n=(50,), test_n=None)
    splits = load_dataset(str(root), 32, val_fraction=0.2, test_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    assert splits.train.images.shape[1:] == (3, 32, 32)


def test_cifar_parent_of_extracted_archive(tmp_path: Path) -> None:
    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    splits = load_dataset(str(tmp_path), 32, limit=40)
    assert len(splits.train) + len(splits.val) == 34 and len(splits.test) == 6


# --------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder_loads_png_and_jpeg(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", {"cat": 10, "dog": 10, "emu": 5})
    splits = load_dataset(str(root), 16, val_fraction=0.2, test_fraction=0.2)
    assert splits.class_names == ("cat", "dog", "emu") and splits.num_classes == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 5)
    assert splits.train.images.shape[1:] == (3, 16, 16)
    # Classes were drawn with different brightness: the class mean survives decoding/resizing.
    means = [float(splits.train.images[splits.train.labels == c].float().mean()) for c in range(3)]
    assert means[0] < means[1] < means[2]


def test_image_folder_limit_and_hidden_files(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    (root / "a" / "._0.png").write_bytes(b"AppleDouble junk, not an image")
    (root / ".DS_Store").write_bytes(b"junk")
    splits = load_dataset(root, 8, limit=10, val_fraction=0.2, test_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert sorted(splits.val.labels.tolist()) == [0, 1] == sorted(splits.test.labels.tolist())


def test_image_folder_train_val_layout(tmp_path: Path) -> None:
    """train/ + val/ trees: the held-out tree is the test split; val is split off train."""
    write_image_folder(tmp_path / "train", {"a": 6, "b": 6})
    write_image_folder(tmp_path / "val", {"b": 2, "a": 3})
    splits = load_dataset(str(tmp_path), 8, val_fraction=0.15, test_fraction=0.15)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 5)
    assert sorted(splits.test.labels.tolist()) == [0, 0, 0, 1, 1]  # "a" is 0 in both trees


def test_image_folder_train_val_test_layout(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", {"a": 6, "b": 6})
    write_image_folder(tmp_path / "val", {"b": 2, "a": 2})
    write_image_folder(tmp_path / "test", {"a": 3, "b": 1})
    splits = load_dataset(str(tmp_path), 8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    assert sorted(splits.test.labels.tolist()) == [0, 0, 0, 1]


# --------------------------------------------------------------------------------------------
# Malformed input: DataError, one line, naming the path


def _corrupt_png(root: Path) -> Path:
    write_image_folder(root, {"a": 3, "b": 3})
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return bad


def _truncated_png(root: Path) -> Path:
    write_image_folder(root, {"a": 3, "b": 3}, size=(64, 64))
    bad = root / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:120])
    return bad


def _corrupt_pickle(root: Path) -> Path:
    write_cifar_dir(root)
    bad = root / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:500])
    return bad


def _wrong_shape_pickle(root: Path) -> Path:
    write_cifar_dir(root)
    bad = root / "data_batch_1"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}))
    return bad


def _single_class_folder(root: Path) -> Path:
    write_image_folder(root, {"only": 4})
    return root


def _single_class_cifar(root: Path) -> Path:
    root.mkdir()
    write_cifar_batch(root / "data_batch_1", 20, num_classes=1)
    return root


def _no_images(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "notes.txt").write_text("hello")
    return root / "a"


def _files_only(root: Path) -> Path:
    root.mkdir()
    (root / "readme.txt").write_text("no class folders here")
    return root


def _empty(root: Path) -> Path:
    root.mkdir()
    return root


def _a_file(root: Path) -> Path:
    root.parent.mkdir(exist_ok=True)
    path = root.with_suffix(".tar.gz")
    path.write_bytes(b"\x1f\x8b")
    return path


def _missing(root: Path) -> Path:
    return root / "does" / "not" / "exist"


BAD_INPUTS = [_missing, _a_file, _empty, _files_only, _no_images, _corrupt_png, _truncated_png,
              _corrupt_pickle, _wrong_shape_pickle, _single_class_folder, _single_class_cifar]


@pytest.mark.parametrize("make", BAD_INPUTS)
def test_bad_input_raises_data_error_naming_the_path(tmp_path: Path, make) -> None:
    root = tmp_path / "data"
    culprit = make(root)
    source = str(culprit if make in (_missing, _a_file) else root)
    with pytest.raises(DataError) as info:
        load_dataset(source, 16)
    message = str(info.value)
    assert str(culprit) in message and "\n" not in message, message


def test_unknown_source_name() -> None:
    with pytest.raises(DataError, match=r"imagenet21k: .*not a built-in dataset \(mnist, digits\)"):
        load_dataset("imagenet21k", 32)


def test_pickle_cannot_run_code(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    root = write_cifar_dir(tmp_path / "cifar")
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset(str(root), 16)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kwargs", [{"resolution": 0}, {"val_fraction": 1.0}, {"limit": 2},
                                    {"val_fraction": 0.5, "test_fraction": 0.5}])
def test_bad_arguments_are_user_errors(kwargs: dict) -> None:
    args = {"resolution": 16} | kwargs
    with pytest.raises(UserError):
        load_dataset("digits", args.pop("resolution"), **args)


# --------------------------------------------------------------------------------------------
# Batches, loader, calibration subset


def test_batches_and_loader_are_seeded(mnist: Splits) -> None:
    small = mnist.val

    def order(seed: int) -> torch.Tensor:
        return torch.cat([y for _, y in batches(small, 100, shuffle=True, seed=seed)])

    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == sorted(small.labels.tolist())  # a permutation
    assert sum(len(y) for _, y in batches(small, 300, drop_last=True)) == 600  # 750 val images
    loader = make_loader(small, 128, shuffle=True, seed=5)
    x, y = next(iter(loader))
    assert x.shape == (128, 3, 16, 16) and y.shape == (128,) and len(loader) == 6
    again = next(iter(make_loader(small, 128, shuffle=True, seed=5)))[1]
    assert torch.equal(y, again)


def test_calibration_subset_is_deterministic_train_data(mnist: Splits) -> None:
    calib = calibration_subset(mnist, 50)
    assert calib.shape == (50, 3, 16, 16) and calib.dtype == torch.float32 and calib.is_contiguous()
    assert torch.equal(calib, calibration_subset(mnist, 50))
    train_x, _ = mnist.train.batch(torch.arange(len(mnist.train)))
    rows = {bytes(r) for r in train_x[:, 0].flatten(1).numpy()}
    assert all(bytes(r) in rows for r in calib[:, 0].flatten(1).numpy())
    assert len(calibration_subset(mnist, 10**6)) == len(mnist.train)


def test_image_dataset_rejects_float_images() -> None:
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2), torch.zeros(3), torch.ones(3))
