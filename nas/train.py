"""Short proxy training: AdamW + per-step cosine, label smoothing, optional distillation.

The search calls `train_proxy` once per feasible trial; pruning reuses it with a teacher for
fine-tuning, and compression reuses `evaluate`. Each epoch holds the machine-wide training lock
(shared), so a latency measurement (exclusive) can only slip in between epochs.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas import machine_lock
from nas.data import ImageDataset, Splits, batches
from nas.errors import UserError
from nas.threads import torch_threads


class TrainingDiverged(RuntimeError):
    """The loss, gradients or weights became NaN/Inf. A property of the model/run, not user input."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class TrainResult:
    accuracy: float  # validation top-1 after the last epoch run, 0..1
    best_accuracy: float
    curve: list[float]  # validation top-1 after each epoch run
    epochs_run: int
    seconds: float  # wall time of the whole run, lock waits included
    stopped_early: bool
    train_loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    test_curve: list[float] = field(default_factory=list)  # test top-1 per epoch (reported only), if asked


@dataclass(frozen=True)
class _Distill:
    teacher: nn.Module
    alpha: float
    temperature: float


# channels_last: 1.3x training images/s for the conv/CATM/LiteMLA baselines on CPU, neutral for
# the ViT-style one (bench/train_throughput.py).
TRAIN_MEMORY_FORMAT = torch.channels_last


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_proxy(
    model: nn.Module,
    splits: Splits,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    seed: int = 0,
    threads: int | None = None,
    warmup_epochs: float = 0.0,
    grad_clip: float | None = 2.0,
    teacher: nn.Module | None = None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 4.0,
    on_epoch: Callable[[int, float], bool | None] | None = None,
    progress: bool = False,
    report_test: bool = False,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train `model` in place on `splits.train`; validate on `splits.val` after every epoch.

    `on_epoch(epoch_index, val_acc)` runs after each epoch, outside the machine lock (it may
    measure latency); returning False stops the run (`stopped_early`), None or True continues.
    With `teacher`, the loss is (1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T).
    `report_test` also measures `splits.test` after each epoch (`test_curve`: reported, never
    used to decide anything). With `checkpoint`, the full training state (weights, optimizer,
    schedule, curves) is saved there atomically after every epoch, and a run started with an
    existing checkpoint continues after its last completed epoch.
    Raises TrainingDiverged as soon as the loss, gradient norm or weights are not finite.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not 0.0 <= distill_alpha <= 1.0 or distill_temperature <= 0:
        raise ValueError(f"need 0 <= distill_alpha <= 1 and temperature > 0, got "
                         f"{distill_alpha}, {distill_temperature}")
    distill = _Distill(teacher.eval(), distill_alpha, distill_temperature) if teacher is not None else None
    # The model is handed back in the default layout (see TRAIN_MEMORY_FORMAT).
    model.to(memory_format=TRAIN_MEMORY_FORMAT)
    if distill is not None:
        distill.teacher.to(memory_format=TRAIN_MEMORY_FORMAT)
    start = time.perf_counter()
    with torch_threads(threads):
        seed_everything(seed)
        steps_per_epoch = _steps_per_epoch(len(splits.train), batch_size)
        optimizer = make_optimizer(model, lr, weight_decay)
        warmup_steps = round(warmup_epochs * steps_per_epoch)
        scheduler = _cosine_schedule(optimizer, epochs * steps_per_epoch, warmup_steps)
        curves: dict[str, list[float]] = {"val": [], "test": [], "loss": []}
        first = _resume(checkpoint, model, optimizer, scheduler, curves, epochs)
        stopped = False
        for epoch in range(first, epochs):
            with machine_lock.training():
                loss = _train_epoch(model, splits, optimizer, scheduler, epoch=epoch, batch_size=batch_size,
                                    seed=_epoch_seed(seed, epoch), label_smoothing=label_smoothing,
                                    grad_clip=grad_clip, distill=distill,
                                    desc=f"epoch {epoch + 1}/{epochs}" if progress else None)
                _check_weights(model, epoch)
                curves["val"].append(evaluate(model, splits.val, batch_size=max(256, batch_size)))
                if report_test:
                    curves["test"].append(evaluate(model, splits.test, batch_size=max(256, batch_size)))
            curves["loss"].append(loss)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, optimizer, scheduler, curves, epoch, epochs)
            if on_epoch is not None and on_epoch(epoch, curves["val"][-1]) is False:
                stopped = epoch + 1 < epochs
                break
    for module in (model, teacher):  # handed back as passed in: export, pruning and saving expect it
        if module is not None:
            module.to(memory_format=torch.contiguous_format)
    curve = curves["val"]
    if not curve:
        raise ValueError(f"no epoch to run: the checkpoint {checkpoint} already holds {epochs} epochs")
    return TrainResult(accuracy=curve[-1], best_accuracy=max(curve), curve=curve, epochs_run=len(curve),
                       seconds=time.perf_counter() - start, stopped_early=stopped, train_loss=curves["loss"],
                       test_curve=curves["test"])


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, curves: dict[str, list[float]],
                     epoch: int, epochs: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "curves": curves, "epoch": epoch, "epochs": epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume(path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, curves: dict[str, list[float]], epochs: int) -> int:
    """Load a checkpoint written by `_save_checkpoint` into the live objects; the first epoch to run."""
    if path is None or not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except Exception as exc:  # truncated or foreign file: the user's to remove, not ours to overwrite
        raise UserError(f"{path}: not a readable training checkpoint ({type(exc).__name__}); "
                        "delete it to start over") from None
    if state["epochs"] != epochs:
        raise UserError(f"{path}: a run of {state['epochs']} epochs; resume it with --epochs {state['epochs']} "
                        "or delete it to start over")
    curves.update({k: list(v) for k, v in state["curves"].items()})
    return int(state["epoch"]) + 1


def evaluate(model: nn.Module, data: ImageDataset | Iterable[tuple[Tensor, Tensor]],
             batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of `model` on a dataset or any iterable of (images, labels) batches.

    The model runs in eval mode; its previous train/eval mode is restored afterwards.
    """
    loader = batches(data, batch_size) if isinstance(data, ImageDataset) else data
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for images, labels in loader:
                correct += int((model(images).argmax(dim=-1) == labels).sum())
                total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate() got no samples")
    return correct / total


# --------------------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    # Distinct per (seed, epoch): seed + epoch would give run 1's epoch 0 the order of run 0's epoch 1.
    return (seed * 1_000_003 + epoch) % 2**63


def _steps_per_epoch(n: int, batch_size: int) -> int:
    # The trailing partial batch is dropped (a 1-sample batch breaks BatchNorm in train mode),
    # unless the whole split is smaller than one batch.
    return max(1, n // batch_size)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and norm/scale vectors (1-d parameters) get no weight decay, as usual for ViTs."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        # Fused AdamW runs on CPU too: one kernel instead of ~10 ops per parameter tensor
        # (7x faster steps on a model with 160 small tensors, which ViT-like nets have).
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(groups, lr=lr)


def _cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                     warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps` (stepped per batch)."""
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loss(logits: Tensor, labels: Tensor, images: Tensor, label_smoothing: float,
          distill: _Distill | None) -> Tensor:
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if distill is None:
        return loss
    with torch.no_grad():  # not inference_mode: teacher outputs are used inside the autograd graph
        teacher_logits = distill.teacher(images)
    t = distill.temperature
    kd = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="batchmean", log_target=True) * (t * t)
    return (1.0 - distill.alpha) * loss + distill.alpha * kd


def _train_epoch(model: nn.Module, splits: Splits, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, epoch: int, batch_size: int, seed: int,
                 label_smoothing: float, grad_clip: float | None, distill: _Distill | None,
                 desc: str | None) -> float:
    """One pass over the shuffled train split; returns the mean loss."""
    model.train()
    drop_last = len(splits.train) >= batch_size
    loader = batches(splits.train, batch_size, shuffle=True, seed=seed, drop_last=drop_last)
    bar = None
    if desc is not None:
        from tqdm import tqdm

        bar = tqdm(total=_steps_per_epoch(len(splits.train), batch_size), desc=desc, leave=False)
    total = torch.zeros((), dtype=torch.float64)
    steps = 0
    try:
        for step, (images, labels) in enumerate(loader):
            try:
                loss = _train_step(model, images, labels, splits, optimizer, label_smoothing=label_smoothing,
                                   grad_clip=grad_clip, distill=distill)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc.reason} at epoch {epoch + 1}, step {step + 1}") from None
            scheduler.step()
            total += loss
            steps += 1
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return float(total) / max(1, steps)


def _train_step(model: nn.Module, images: Tensor, labels: Tensor, splits: Splits,
                optimizer: torch.optim.Optimizer, *, label_smoothing: float, grad_clip: float | None,
                distill: _Distill | None) -> Tensor:
    """Forward, backward, clip, step; returns the detached loss. Raises TrainingDiverged."""
    logits = model(images.contiguous(memory_format=TRAIN_MEMORY_FORMAT))
    if logits.shape != (len(labels), splits.num_classes):
        raise ValueError(f"model returns logits of shape {tuple(logits.shape)}, expected "
                         f"({len(labels)}, {splits.num_classes}) for {splits.name}")
    loss = _loss(logits, labels, images, label_smoothing, distill)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss.item()} (lr {optimizer.param_groups[0]['lr']:.3g})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = _clip_grad_norm(model, grad_clip)
    if not torch.isfinite(grad_norm):  # stepping now would write NaN/Inf into the weights
        raise TrainingDiverged(f"gradient norm is {grad_norm.item()}")
    optimizer.step()
    return loss.detach()


def _clip_grad_norm(model: nn.Module, grad_clip: float | None) -> Tensor:
    """Clip the global gradient norm to `grad_clip` (no clipping when None/0); return the norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf, foreach=True)


def _check_weights(model: nn.Module, epoch: int) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainingDiverged(f"{name} holds NaN/Inf after epoch {epoch + 1}")


__all__ = ["TrainResult", "TrainingDiverged", "evaluate", "seed_everything", "train_proxy"]


# --------------------------------------------------------------------------------------------
# python -m nas.train: final training of a run's winners at the target resolution (nas.final)


def build_parser() -> Any:
    from nas.cli import Parser, positive_float, positive_int
    from nas.final import DEFAULT_MAX_MINUTES

    p = Parser(prog="python -m nas.train",
               description="Final training of a search run's winner at the target resolution (resumable).")
    p.add_argument("--run", default=None, help="run directory or name under results/ (default: the latest run)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--winner", type=int, default=None, metavar="TRIAL",
                       help="the winner of this trial number (winners/<trial>-<hash>/; default: the best, rank 1)")
    which.add_argument("--top", type=positive_int, default=None,
                       help="train the K best winners and every baseline, then report the proxy's Kendall tau")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs (default: as many as fit --max-minutes, sized from a few timed training steps)")
    p.add_argument("--init", choices=("proxy", "scratch"), default="proxy",
                   help="start from the proxy weights (default) or from a fresh initialisation")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 1e-3 from proxy "
                                                                     "weights, the run's --lr from scratch)")
    p.add_argument("--threads", type=positive_int, default=None, help="training threads (default: the run's)")
    p.add_argument("--max-minutes", type=positive_float, default=DEFAULT_MAX_MINUTES,
                   help=f"stop after the epoch that would overrun this (default {DEFAULT_MAX_MINUTES:g})")
    p.add_argument("--restart", action="store_true",
                   help="start the final training over, e.g. with more --epochs (the earlier one's checkpoint, "
                        "weights and metrics move to final/<hash>/replaced-<time>/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return p


def main(argv: list[str] | None = None) -> int:
    import json

    from nas import final
    from nas.runs import read_config, resolve_run

    args = build_parser().parse_args(argv)
    run_dir = resolve_run(args.run)
    config = read_config(run_dir)
    chosen = (final.candidates(run_dir, args.top, config) if args.top
              else [final.winner_candidate(run_dir, args.winner)])
    lr = args.lr or (1e-3 if args.init == "proxy" else float(config.get("lr") or 2e-3))
    for candidate in chosen:
        if not args.quiet:
            print(f"final training of {candidate.label} ({candidate.arch.hash}) at "
                  f"{config.get('target_resolution')} px from {args.init} weights ...",
                  flush=True)
        metrics = final.train_final(run_dir, candidate, epochs=args.epochs, init=args.init, batch_size=args.batch_size,
                                    lr=lr, threads=args.threads or config.get("threads"),
                                    max_minutes=args.max_minutes, progress=not args.quiet,
                                    restart=args.restart)
        note = " (already trained)" if metrics.get("already_done") else ""
        print(f"{candidate.label}: val {100 * metrics['val_accuracy']:.2f}%, "
              f"test {100 * metrics['test_accuracy']:.2f}% "
              f"at {metrics['resolution']} px after {metrics['epochs_run']} epoch(s){note} -> "
              f"{final.final_dir(run_dir, candidate.arch.hash)}")
    data = final.proxy_fidelity(run_dir)
    if data is not None:
        from nas.runs import atomic_write

        atomic_write(run_dir / final.FINAL_DIR / "proxy_fidelity.json", json.dumps(data, indent=2) + "\n")
        if args.top and data["kendall_tau"] is not None:
            print(f"proxy fidelity: Kendall tau {data['kendall_tau']:.2f} over {len(data['candidates'])} candidates")
    _refresh_summary(run_dir)
    return 0


def _refresh_summary(run_dir: Path) -> None:
    """Rewrite the run's report so summary.md shows the final accuracies (skipped without a study.db)."""
    if (run_dir / "study.db").is_file():
        from nas.report import main as report_main

        report_main(["--run", str(run_dir)])


if __name__ == "__main__":
    import sys

    from nas.errors import run_cli

    sys.exit(run_cli(main))
