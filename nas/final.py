"""Final training: a run's winner (or baseline) trained at the resolution it ships at.

The search ranks candidates by a short proxy at a low resolution; what ships runs at the target
resolution, where a proxy-only model scores at chance. `python -m nas.train --run R --winner K`
trains the candidate there, from its proxy weights (default) or from scratch, on the run's own
train split, with val accuracy per epoch (early stop, if any, reads val) and test accuracy per
epoch (reported only). State is checkpointed after every epoch; running the command again resumes.

results/<run>/final/<arch hash>/
  checkpoint.pt   full training state after the last completed epoch (resume)
  weights.pt      final state_dict (written when training ends)
  metrics.json    epochs, init, resolution, val/test curves, final val/test top-1, proxy accuracy, seconds
results/<run>/final/proxy_fidelity.json   Kendall tau between proxy val accuracy and final test accuracy
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.arch import Arch
from nas.data import Splits, load_dataset
from nas.errors import UserError
from nas.runs import (
    Winner,
    atomic_path,
    atomic_write,
    get_winner,
    list_winners,
    load_weights,
    read_config,
    read_json,
)

FINAL_DIR = "final"
DEFAULT_MAX_MINUTES = 15.0
MAX_AUTO_EPOCHS = 8
# Epochs are sized by measurement (`auto_epochs`): a 1.7 ms LiteMLA hybrid took 4-8 min an epoch at
# 224 px on 3,500 MNIST images (2 cores), a CAS-ViT-style one ~2 min; a fixed count would either
# overrun the time budget or waste it.
SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class Candidate:
    """Something to final-train: a winner or a baseline of the run, with its proxy result."""

    label: str  # "winner of trial 12", "baseline casvit"
    trial: int | None
    arch: Arch
    proxy_weights: Path | None
    proxy_accuracy: float | None


def final_dir(run_dir: Path, arch_hash: str) -> Path:
    return run_dir / FINAL_DIR / arch_hash


def final_weights(run_dir: Path, arch: Arch) -> Path | None:
    """The final weights of `arch` in this run, if final training has finished for it."""
    path = final_dir(run_dir, arch.hash) / "weights.pt"
    return path if path.is_file() else None


def run_splits(run_dir: Path, resolution: int, config: dict[str, Any] | None = None) -> Splits:
    """The run's own train/val/test images at `resolution`: same source, seed and limit as the search.

    When the search recorded its split manifest (splits.json), the reloaded splits must match it:
    a dataset directory that changed since would silently mix trained-on images into val/test.
    """
    config = config if config is not None else read_config(run_dir)
    splits = load_dataset(config.get("data"), resolution, seed=int(config.get("seed") or 0), limit=config.get("limit"))
    check_split_manifest(run_dir, splits, config.get("data"))
    return splits


def check_split_manifest(run_dir: Path, splits: Splits, data: str | None) -> None:
    """UserError unless `splits` are the ones the run recorded (nothing recorded yet: fine)."""
    recorded = run_dir / SPLITS_FILE
    expected = read_json(recorded)
    if expected is not None and expected != splits.manifest():
        raise UserError(f"{recorded}: the data at {data or 'mnist'} no longer gives this run's "
                        f"splits (recorded {expected}, now {splits.manifest()}); restore the data or start a "
                        "new run")


def write_split_manifest(run_dir: Path, splits: Splits) -> None:
    atomic_write(run_dir / SPLITS_FILE, json.dumps(splits.manifest(), indent=2) + "\n")


def winner_candidate(run_dir: Path, trial: int | None) -> Candidate:
    """The winner of trial number `trial` (None: the best)."""
    return _candidate(get_winner(run_dir, trial))


def _candidate(winner: Winner) -> Candidate:
    return Candidate(f"winner of trial {winner.trial}", winner.trial, winner.arch, winner.directory / "weights.pt",
                     winner.metrics.get("accuracy"))


def candidates(run_dir: Path, top: int, config: dict[str, Any]) -> list[Candidate]:
    """The `top` best winners plus every trained baseline of the run (deduplicated by architecture)."""
    out = [_candidate(w) for w in list_winners(run_dir) if w.rank is not None][:top]
    seen = {c.arch.hash for c in out}
    for trial in _study_trials(run_dir, config):
        attrs = trial.user_attrs
        if not attrs.get("baseline") or not attrs.get("trained") or not attrs.get("checkpoint"):
            continue
        arch = Arch.from_dict(attrs["arch"])
        if arch.hash in seen:
            continue
        seen.add(arch.hash)
        out.append(Candidate(f"baseline {attrs['baseline']}", trial.number, arch,
                             run_dir / "checkpoints" / attrs["checkpoint"], trial.values[0]))
    return out


def _study_trials(run_dir: Path, config: dict[str, Any]) -> list[Any]:
    import optuna

    path = run_dir / "study.db"
    if not path.is_file():
        raise UserError(f"{path}: not found (a run with another storage: final-train its winners one by one)")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=config.get("study_name", "search"), storage=f"sqlite:///{path.resolve()}")
    except Exception as exc:  # a damaged or foreign database
        raise UserError(f"{path}: cannot open the study ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def estimate_epoch_seconds(model: torch.nn.Module, splits: Splits, batch_size: int, threads: int | None,
                           steps: int = 3) -> float:
    """Seconds one epoch (training + val/test evaluation) will take, from a few timed steps on a copy."""
    import copy

    from nas.threads import torch_threads
    from nas.train import TRAIN_MEMORY_FORMAT

    probe = copy.deepcopy(model).train().to(memory_format=TRAIN_MEMORY_FORMAT)  # as nas.train trains
    optimizer = torch.optim.AdamW(probe.parameters(), lr=0.0)
    images, labels = splits.train.batch(torch.arange(min(batch_size, len(splits.train))))
    images = images.contiguous(memory_format=TRAIN_MEMORY_FORMAT)
    with torch_threads(threads):
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(probe(images), labels).backward()
            optimizer.step()

        step()  # warm-up: allocations, kernel selection
        start = time.perf_counter()
        for _ in range(steps):
            step()
        per_step = (time.perf_counter() - start) / steps
        probe.eval()
        with torch.inference_mode():
            start = time.perf_counter()
            probe(images)
            per_eval_batch = time.perf_counter() - start
    train_steps = max(1, len(splits.train) // batch_size)
    eval_batches = (len(splits.val) + len(splits.test)) / len(images)
    return per_step * train_steps + per_eval_batch * eval_batches


def auto_epochs(seconds_per_epoch: float, max_minutes: float) -> int:
    """As many epochs as fit 90% of the time budget (at least 1, at most MAX_AUTO_EPOCHS)."""
    return max(1, min(MAX_AUTO_EPOCHS, int(0.9 * 60.0 * max_minutes / max(seconds_per_epoch, 1e-3))))


def set_aside(out: Path) -> Path | None:
    """Move an earlier final training's files (checkpoint, weights, metrics) into out/replaced-<UTC time>/,
    so starting over loses nothing; that folder, or None when there was nothing to move."""
    present = [out / name for name in ("checkpoint.pt", "weights.pt", "metrics.json") if (out / name).is_file()]
    if not present:
        return None
    folder = out / time.strftime("replaced-%Y%m%dT%H%M%SZ", time.gmtime())
    folder.mkdir(parents=True, exist_ok=True)
    for path in present:
        path.replace(folder / path.name)
    return folder


def train_final(run_dir: Path, candidate: Candidate, *, epochs: int | None = None, init: str = "proxy",
                batch_size: int = 64, lr: float = 1e-3, threads: int | None = None,
                max_minutes: float = DEFAULT_MAX_MINUTES, progress: bool = True,
                restart: bool = False) -> dict[str, Any]:
    """Train `candidate` at the run's target resolution; write final/<hash>/; return its metrics.

    `epochs=None` sizes the run by measurement to fit `max_minutes` (a resumed run keeps the
    epoch count its checkpoint was started with). `restart` sets an earlier final training of the
    candidate aside (`set_aside`) and starts over; without it, asking a finished or interrupted
    training for another epoch count is a UserError that says so."""
    from nas.models import build_model
    from nas.train import seed_everything, train_proxy

    config = read_config(run_dir)
    resolution = int(config.get("target_resolution") or 224)
    out = final_dir(run_dir, candidate.arch.hash)
    if restart:
        moved = set_aside(out)
        if moved is not None and progress:
            print(f"  the earlier final training moved to {moved}", flush=True)
    done = out / "metrics.json"
    if done.is_file() and (out / "weights.pt").is_file():
        metrics = read_json(done)
        if metrics.get("epochs") == metrics.get("epochs_run") and epochs in (None, metrics.get("epochs")) \
                and metrics.get("init") == init:
            return {**metrics, "already_done": True}
    splits = run_splits(run_dir, resolution, config)
    seed = int(config.get("seed") or 0)
    seed_everything(seed)
    model = build_model(candidate.arch)
    if init == "proxy":
        if candidate.proxy_weights is None or not candidate.proxy_weights.is_file():
            raise UserError(f"{candidate.label}: no proxy weights to start from; use --init scratch")
        load_weights(model, candidate.proxy_weights, f"the arch of {candidate.label}")
    estimate = None
    checkpoint = out / "checkpoint.pt"
    started_with = _checkpoint_epochs(checkpoint) if checkpoint.is_file() else None
    if epochs is not None and started_with is not None and started_with != epochs:
        raise UserError(f"{checkpoint}: a final training of {started_with} epoch(s) of {candidate.label} is "
                        f"there; resume it with --epochs {started_with}, or pass --restart to start over (its "
                        "files are kept under replaced-<time>/)")
    if epochs is None:
        if started_with is not None:
            epochs = started_with
        else:
            estimate = estimate_epoch_seconds(model, splits, batch_size, threads)
            epochs = auto_epochs(estimate, max_minutes)
        if progress:
            sized = f"~{estimate:.0f} s an epoch measured: " if estimate else "resuming: "
            print(f"  {sized}{epochs} epoch(s) within {max_minutes:g} min", flush=True)
    started = time.monotonic()
    epoch_seconds: list[float] = []
    last = [started]

    def on_epoch(epoch: int, val_accuracy: float) -> bool:
        now = time.monotonic()
        epoch_seconds.append(now - last[0])
        last[0] = now
        if progress:
            print(f"  epoch {epoch + 1}/{epochs}: val {100 * val_accuracy:.2f}% ({epoch_seconds[-1]:.0f} s)",
                  flush=True)
        # Stop before an epoch that would overrun the time cap (the cap bounds a slow machine, not a fast one).
        return (now - started) + max(epoch_seconds) <= 60.0 * max_minutes

    result = train_proxy(model, splits, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads,
                         warmup_epochs=0.0 if init == "proxy" else 0.3, on_epoch=on_epoch, progress=progress,
                         report_test=True, checkpoint=out / "checkpoint.pt")
    with atomic_path(out / "weights.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    metrics = {
        "label": candidate.label, "trial": candidate.trial, "arch_hash": candidate.arch.hash, "init": init,
        "epochs": epochs, "epochs_run": result.epochs_run, "stopped_for_time": result.stopped_early,
        "epoch_seconds_estimate": estimate, "max_minutes": max_minutes,
        "resolution": resolution, "batch_size": batch_size, "lr": lr, "val_curve": result.curve,
        "test_curve": result.test_curve, "val_accuracy": result.accuracy, "test_accuracy": result.test_curve[-1],
        "proxy_accuracy": candidate.proxy_accuracy, "proxy_resolution": config.get("proxy_resolution"),
        "seconds_this_session": round(result.seconds, 1), "splits": splits.manifest(),
    }
    atomic_write(done, json.dumps(metrics, indent=2) + "\n")
    return metrics


def _checkpoint_epochs(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epochs"])
    except Exception as exc:  # truncated or foreign file
        raise UserError(f"{path}: not a readable training checkpoint ({type(exc).__name__}); "
                        "delete it to start over") from None


def proxy_fidelity(run_dir: Path) -> dict[str, Any] | None:
    """Kendall tau between proxy val accuracy and final test accuracy over the final-trained candidates."""
    rows = []
    for path in sorted((run_dir / FINAL_DIR).glob("*/metrics.json")):
        metrics = read_json(path)
        if metrics.get("proxy_accuracy") is not None:
            rows.append(metrics)
    if len(rows) < 2:
        return None
    from scipy.stats import kendalltau

    proxy = [r["proxy_accuracy"] for r in rows]
    final = [r["test_accuracy"] for r in rows]
    tau, p_value = kendalltau(proxy, final)
    return {"kendall_tau": None if tau != tau else float(tau),
            "p_value": None if p_value != p_value else float(p_value),
            "candidates": [{"label": r["label"], "arch_hash": r["arch_hash"], "proxy_accuracy": r["proxy_accuracy"],
                            "final_test_accuracy": r["test_accuracy"], "final_val_accuracy": r["val_accuracy"],
                            "epochs_run": r["epochs_run"]} for r in rows]}


def final_markdown(run_dir: Path) -> list[str]:
    """The summary.md section on final training and proxy fidelity ([] when nothing was final-trained)."""
    data = proxy_fidelity(run_dir)
    rows = [read_json(p) for p in sorted((run_dir / FINAL_DIR).glob("*/metrics.json"))]
    if not rows:
        return []
    lines = ["## Final training at the target resolution (`python -m nas.train`)", "",
             "| candidate | proxy val | final val | final test | epochs | init |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        proxy = "-" if r.get("proxy_accuracy") is None else f"{100 * r['proxy_accuracy']:.2f}%"
        lines.append(f"| {r['label']} ({r['arch_hash']}) | {proxy} | {100 * r['val_accuracy']:.2f}% | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['epochs_run']} | {r['init']} |")
    if data is not None and data["kendall_tau"] is not None:
        lines += ["", "Proxy fidelity: Kendall tau between proxy val accuracy and final test accuracy "
                      f"{data['kendall_tau']:.2f} over {len(data['candidates'])} candidates "
                      f"(p = {data['p_value']:.2f})."]
    return [*lines, ""]
