"""nas.train: proxy training on real (bundled MNIST) data with tiny conv nets."""

from __future__ import annotations

import fcntl
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from nas import machine_lock
from nas.data import Splits, batches, load_dataset
from nas.train import TrainingDiverged, _cosine_schedule, evaluate, train_proxy


def tiny_net(width: int = 8, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Two stride-2 convs with BatchNorm and a linear head on the 4x4 map of a 16x16 input."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * 16, num_classes),
    )


class BlowsUp(nn.Module):
    """Finite for the first training forward, then multiplies its output by inf."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += self.training
        out = self.net(x)
        return out * math.inf if self.calls > 1 else out


class ProbesLock(nn.Module):
    """Records whether an exclusive (measuring) lock could be taken while it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()
        self.exclusive_possible: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.exclusive_possible.append(_can_lock_exclusive())
        return self.net(x)


def _can_lock_exclusive() -> bool:
    with open(machine_lock.lock_path(), "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must neither wait for nor block a real latency measurement on this machine.
    monkeypatch.setenv("VITNAS_LOCK", str(tmp_path / "machine.lock"))


# One thread throughout: on these 2 shared cores a busy neighbour makes 2-thread OpenMP steps of a
# tiny net 10-40x slower (threads wait at barriers for a descheduled sibling).
T = 1


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_dataset(None, 16, limit=1000)  # 800 train / 200 val real MNIST images


def test_trains_above_chance(splits: Splits) -> None:
    result = train_proxy(tiny_net(), splits, epochs=2, batch_size=32, threads=T)
    assert result.accuracy > 0.3, result
    assert len(result.curve) == result.epochs_run == 2 and len(result.train_loss) == 2
    assert result.best_accuracy == max(result.curve) and not result.stopped_early
    assert result.train_loss[1] < result.train_loss[0] and result.seconds > 0


def test_on_epoch_early_stop(splits: Splits) -> None:
    seen: list[tuple[int, float]] = []

    def stop_after_first(epoch: int, acc: float) -> bool:
        seen.append((epoch, acc))
        return False

    result = train_proxy(tiny_net(), splits, epochs=3, threads=T, on_epoch=stop_after_first, progress=True)
    assert result.stopped_early and result.epochs_run == 1 and seen == [(0, result.curve[0])]


def test_same_seed_same_result(splits: Splits) -> None:
    a, b = tiny_net(seed=1), tiny_net(seed=1)
    ra = train_proxy(a, splits, epochs=1, seed=7, threads=T)
    rb = train_proxy(b, splits, epochs=1, seed=7, threads=T)
    assert ra.curve == rb.curve and ra.train_loss == rb.train_loss
    weights = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in weights)
    rc = train_proxy(tiny_net(seed=1), splits, epochs=1, seed=8, threads=T)
    assert rc.train_loss != ra.train_loss  # the seed drives the batch order


@pytest.mark.parametrize("case", ["inf_output", "huge_lr"])
def test_divergence_raises_promptly(splits: Splits, case: str) -> None:
    model, lr = (BlowsUp(), 2e-3) if case == "inf_output" else (tiny_net(), 1e9)
    steps: list[int] = []
    model.register_forward_hook(lambda m, i, o: steps.append(1) if m.training else None)
    with pytest.raises(TrainingDiverged) as info:
        train_proxy(model, splits, epochs=3, lr=lr, grad_clip=None, threads=T)
    assert isinstance(info.value, RuntimeError) and info.value.reason
    assert len(steps) <= 3  # stopped within a few steps, not after three epochs


def test_distillation_runs(splits: Splits) -> None:
    teacher = tiny_net(width=12, seed=3)
    train_proxy(teacher, splits, epochs=1, threads=T)
    teacher_before = [p.clone() for p in teacher.parameters()]
    result = train_proxy(tiny_net(seed=4), splits, epochs=1, threads=T, warmup_epochs=0.3, teacher=teacher,
                         distill_alpha=0.7, distill_temperature=2.0)
    assert math.isfinite(result.train_loss[0])
    assert all(torch.equal(p, q) for p, q in zip(teacher.parameters(), teacher_before, strict=True))
    assert result.accuracy > 0.2
    alone = train_proxy(tiny_net(seed=4), splits, epochs=1, threads=T, warmup_epochs=0.3)
    assert alone.train_loss != result.train_loss  # the teacher's term is in the loss


def test_lock_held_during_epochs_released_between(splits: Splits) -> None:
    model = ProbesLock()
    between: list[bool] = []
    train_proxy(model, splits, epochs=2, batch_size=200, threads=T,
                on_epoch=lambda epoch, acc: between.append(_can_lock_exclusive()))
    assert model.exclusive_possible and not any(model.exclusive_possible)
    assert between == [True, True]  # on_epoch may measure latency: it runs outside the lock


def test_evaluate_dataset_or_batches_and_mode_restored(splits: Splits) -> None:
    model = tiny_net()
    model.train()
    acc = evaluate(model, splits.val, batch_size=64)
    assert acc == evaluate(model, batches(splits.val, 50))
    assert model.training
    images, labels = splits.val.batch(torch.arange(len(splits.val)))
    with torch.no_grad():
        expected = (model.eval()(images).argmax(-1) == labels).float().mean().item()
    assert acc == pytest.approx(expected)  # top-1 accuracy over every validation image


def test_threads_restored_and_shape_mismatch(splits: Splits) -> None:
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="logits of shape"):
        train_proxy(tiny_net(num_classes=7), splits, epochs=1, threads=before + 1)
    assert torch.get_num_threads() == before


def test_warmup_then_cosine_schedule() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    schedule = _cosine_schedule(optimizer, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] < lrs[1] < lrs[2] == 1.0
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and lrs[-1] < 0.05
