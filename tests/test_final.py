"""Final training at the target resolution (nas.final, `python -m nas.train`) and the run's splits.

Real data (bundled MNIST, an ImageFolder of real digit images), real training of tiny models.
"""

from __future__ import annotations

import json
import shutil
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
from nas.errors import UserError, run_cli
from nas.models import build_model
from nas.runs import save_winner
from nas.train import train_proxy
from tests.conftest import tiny_arch

ROOT = Path(__file__).resolve().parent.parent
PROXY, TARGET = 16, 32
T = 1  # one thread: on 2 shared cores a busy neighbour stalls 2-thread steps of tiny nets


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
    accuracy = train_proxy(model, splits, epochs=2, batch_size=16, lr=3e-3, threads=T).accuracy
    save_winner(directory, 1, arch, model.state_dict(), {"accuracy": accuracy, "trial": 0})
    return directory


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with one winner trained on bundled MNIST; tests that change it take a copy."""
    return make_run(tmp_path_factory.mktemp("final") / "run")


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_final_training_resumes_and_compress_uses_it(mnist_run: Path, tmp_path: Path) -> None:
    run = copy_of(mnist_run, tmp_path)
    candidate = final.winner_candidate(run, None)
    # A time cap that one epoch already exceeds: stops after epoch 1 with a checkpoint (like a kill).
    first = final.train_final(run, candidate, epochs=3, batch_size=16, lr=2e-3, threads=T, max_minutes=1e-6,
                              progress=False)
    assert first["epochs_run"] == 1 and first["stopped_for_time"]
    assert (final.final_dir(run, candidate.arch.hash) / "checkpoint.pt").is_file()
    done = final.train_final(run, candidate, epochs=3, batch_size=16, lr=2e-3, threads=T, progress=False)
    assert done["epochs_run"] == 3 and len(done["test_curve"]) == 3
    assert done["val_curve"][0] == first["val_curve"][0]  # continued, not restarted
    # 10 classes, chance 0.1; measured 0.7 test after 3 epochs (490 train images at 32 px)
    assert done["resolution"] == TARGET and done["test_accuracy"] > 0.4
    again = final.train_final(run, candidate, epochs=3, threads=T, progress=False)
    assert again.get("already_done") and again["test_accuracy"] == done["test_accuracy"]

    target = load_target(run, None)
    assert target.weights == "final" and target.train_resolution == TARGET
    model = target.fp32_model()
    reference = build_model(candidate.arch)
    reference.load_state_dict(torch.load(final.final_weights(run, candidate.arch), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))


def test_more_epochs_after_a_finished_training_need_restart_and_keep_the_old_files(mnist_run: Path,
                                                                                  tmp_path: Path) -> None:
    run = copy_of(mnist_run, tmp_path)
    candidate = final.winner_candidate(run, None)
    out = final.final_dir(run, candidate.arch.hash)
    one = final.train_final(run, candidate, epochs=1, batch_size=16, lr=2e-3, threads=T, progress=False)
    assert one["epochs_run"] == 1 and (out / "checkpoint.pt").is_file()
    with pytest.raises(UserError, match=r"--epochs 1, or pass --restart"):
        final.train_final(run, candidate, epochs=2, batch_size=16, threads=T, progress=False)
    two = final.train_final(run, candidate, epochs=2, batch_size=16, lr=2e-3, threads=T, progress=False, restart=True)
    assert two["epochs"] == two["epochs_run"] == 2 and len(two["val_curve"]) == 2  # a fresh 2-epoch run
    (kept,) = out.glob("replaced-*")
    assert json.loads((kept / "metrics.json").read_text())["epochs"] == 1
    assert {p.name for p in kept.iterdir()} == {"checkpoint.pt", "weights.pt", "metrics.json"}


def test_epochs_are_sized_by_a_measurement() -> None:
    splits = load_dataset(None, TARGET, limit=300)
    seconds = final.estimate_epoch_seconds(build_model(tiny_arch("mbconv")), splits, 16, threads=T)
    assert 0 < seconds < 60
    assert final.auto_epochs(60.0, 15) == final.MAX_AUTO_EPOCHS  # 13 fit: capped
    assert final.auto_epochs(300.0, 15) == 2 and final.auto_epochs(5000.0, 15) == 1


def test_corrupt_checkpoint_is_a_user_error(mnist_run: Path, tmp_path: Path) -> None:
    run = copy_of(mnist_run, tmp_path)
    candidate = final.winner_candidate(run, None)
    path = final.final_dir(run, candidate.arch.hash) / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable training checkpoint"):
        final.train_final(run, candidate, epochs=1, progress=False)


def test_cli_bad_input_is_one_line_exit_2(mnist_run: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from nas.train import main

    result = subprocess.run([sys.executable, "-m", "nas.train", "--run", str(tmp_path / "nope")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # the real process, once
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for args, expected in ((["--run", str(mnist_run), "--winner", "9"], "--winner 9"),
                           (["--run", str(mnist_run), "--epochs", "0"], "--epochs")):
        assert run_cli(main, args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines


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
