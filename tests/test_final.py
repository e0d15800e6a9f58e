"""Final training at the target resolution (nas.final, `python -m nas.train`) and the run's splits.

Real data (bundled MNIST, an ImageFolder of real digit images), real training of tiny models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from compress._target import load_target
from nas import final
from nas.data import load_dataset
from nas.errors import UserError
from nas.models import build_model
from nas.runs import save_winner
from nas.train import train_proxy
from tests.conftest import tiny_arch

ROOT = Path(__file__).resolve().parent.parent
PROXY, TARGET = 16, 32


def make_run(directory: Path, data: str | None = None, seed: int = 0, limit: int = 700) -> Path:
    """A run directory as the search leaves it: config, split manifest, one winner trained at PROXY px."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"data": data, "seed": seed, "limit": limit, "proxy_resolution": PROXY, "target_resolution": TARGET,
              "backend": "openvino", "threads": 2, "num_classes": 10, "budget_ms": 5, "lr": 3e-3}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    splits = load_dataset(data, PROXY, seed=seed, limit=limit)
    final.write_split_manifest(directory, splits)  # what nas.search writes
    arch = tiny_arch("catm")
    torch.manual_seed(0)
    model = build_model(arch)
    accuracy = train_proxy(model, splits, epochs=2, batch_size=16, lr=3e-3, threads=2).accuracy
    save_winner(directory, 1, arch, model.state_dict(), {"accuracy": accuracy, "trial": 0})
    return directory


def test_final_training_resumes_and_compress_uses_it(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    candidate = final.winner_candidate(run, None)
    # A time cap that one epoch already exceeds: stops after epoch 1 with a checkpoint (like a kill).
    first = final.train_final(run, candidate, epochs=3, batch_size=16, lr=2e-3, threads=2, max_minutes=1e-6,
                              progress=False)
    assert first["epochs_run"] == 1 and first["stopped_for_time"]
    assert (final.final_dir(run, candidate.arch.hash) / "checkpoint.pt").is_file()
    done = final.train_final(run, candidate, epochs=3, batch_size=16, lr=2e-3, threads=2, progress=False)
    assert done["epochs_run"] == 3 and len(done["test_curve"]) == 3
    assert done["val_curve"][0] == first["val_curve"][0]  # continued, not restarted
    # 10 classes, chance 0.1; measured 0.7 test after 3 epochs (490 train images at 32 px)
    assert done["resolution"] == TARGET and done["test_accuracy"] > 0.4
    again = final.train_final(run, candidate, epochs=3, progress=False)
    assert again.get("already_done") and again["test_accuracy"] == done["test_accuracy"]

    target = load_target(run, None)
    assert target.weights == "final" and target.train_resolution == TARGET
    model = target.fp32_model()
    reference = build_model(candidate.arch)
    reference.load_state_dict(torch.load(final.final_weights(run, candidate.arch), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))


def test_epochs_are_sized_by_a_measurement() -> None:
    splits = load_dataset(None, TARGET, limit=300)
    seconds = final.estimate_epoch_seconds(build_model(tiny_arch("mbconv")), splits, 16, threads=2)
    assert 0 < seconds < 60
    assert final.auto_epochs(60.0, 15) == final.MAX_AUTO_EPOCHS  # 13 fit: capped
    assert final.auto_epochs(300.0, 15) == 2 and final.auto_epochs(5000.0, 15) == 1


def test_corrupt_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    candidate = final.winner_candidate(run, None)
    path = final.final_dir(run, candidate.arch.hash) / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable training checkpoint"):
        final.train_final(run, candidate, epochs=1, progress=False)


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    for args in (["--run", str(tmp_path / "nope")], ["--run", str(run), "--winner", "9"],
                 ["--run", str(run), "--epochs", "0"]):
        result = subprocess.run([sys.executable, "-m", "nas.train", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def write_digit_folder(root: Path) -> None:
    """An ImageFolder of the real 8x8 scikit-learn digits as PNG files (one folder per class)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:1000], digits.target[:1000], strict=True)):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(image * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")


def test_compress_evaluates_exactly_the_runs_test_split(tmp_path: Path) -> None:
    data = tmp_path / "digits"
    write_digit_folder(data)
    run = make_run(tmp_path / "run", data=str(data), seed=3, limit=800)
    recorded = json.loads((run / final.SPLITS_FILE).read_text())
    target = load_target(run, None)
    at_target = target.splits(TARGET)
    assert at_target.manifest() == recorded and len(at_target.test) == recorded["test"]["images"]
    expected = load_dataset(str(data), PROXY, seed=3, limit=800)
    assert torch.equal(at_target.test.ids, expected.test.ids)
    assert not set(at_target.test.ids.tolist()) & set(at_target.train.ids.tolist())
    # The data changed under the run: refuse rather than evaluate on other images.
    next((data / "digit3").glob("*.png")).unlink()
    with pytest.raises(UserError, match="no longer gives this run's splits"):
        final.run_splits(run, TARGET)
