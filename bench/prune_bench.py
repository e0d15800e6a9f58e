"""Pruning to a measured latency target on a search run's winner: every block kind, then a distilled fine-tune.

Three stages, each its own process, so that the timing runs at normal priority under the machine's
quiet lock and the long fine-tune runs niced, without holding the lock:

    python -m bench.prune_bench prune --run R --winner K --target-ms T   # lock: prune -> measure until <= T
    nice -n 19 python -m bench.prune_bench tune --run R --winner K --epochs E   # distilled fine-tune, top-1
    python -m bench.prune_bench time --run R --winner K [--out FILE]   # lock: interleaved latency, report

`prune` starts from the winner's final weights (nas.train at the target resolution; refused without
them), steps the pruning ratio (compress.prune: channels, CATM/GLSRA stage widths, LiteMLA heads,
MBConv expansions) and measures each step with nas.latency (the run's backend, threads, precision,
target resolution) until the target is met. `tune` fine-tunes at the target resolution with the
unpruned model as teacher and evaluates both on the run's val and test splits. `time` times the two
models interleaved, writes the run's compress/<winner>/pruned/ (model.pt, metrics.json: what
compress.report reads) and the bench JSON: per-block parameters, test/val top-1 and drop, latency
ratio, IR size, loadavg during each timed stage, CPU.
Intermediate models live in <run>/compress/<winner>/prune_bench/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/prune_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from compress._target import Target, load_target
from compress.prune import PruneStep, interleaved_latency, prune_model, save_pruned, snapshot
from nas.atomic import atomic_write
from nas.cli import Parser
from nas.errors import UserError, run_cli
from nas.latency import cpu_name, describe_machine, measure, runtime_version

RESULTS = Path(__file__).resolve().parent / "results"


def _work(target: Target) -> Path:
    path = target.out_dir / "prune_bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state(target: Target) -> dict[str, Any]:
    path = _work(target) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(target: Target, state: dict[str, Any]) -> None:
    atomic_write(_work(target) / "state.json", json.dumps(state, indent=2, default=str) + "\n")


def _latency(target: Target) -> Any:
    def latency(model: nn.Module) -> float:
        stats = measure(model, target.target_resolution, target.backend, target.threads, precision=target.precision)
        print(f"  {sum(p.numel() for p in model.parameters()) / 1e3:.1f} k params: {stats.summary()}", file=sys.stderr)
        return stats.ms

    return latency


def _original(target: Target) -> nn.Module:
    if target.weights != "final":
        raise UserError(f"no final weights for {target.winner.directory.name}: run python -m nas.train --run "
                        f"{target.run_dir} --winner {target.winner.trial} first")
    return target.fp32_model().eval()


def stage_prune(target: Target, target_ms: float, step_ratio: float) -> None:
    model = _original(target)
    latency = _latency(target)
    load = os.getloadavg()
    start_ms = latency(model)
    history = prune_model(model, target.target_resolution, target_ms=target_ms, latency=latency,
                          step_ratio=step_ratio)
    torch.save(model, _work(target) / "pruned_raw.pt")
    _save_state(target, {"target_ms": target_ms, "start_ms": start_ms, "history": [h.__dict__ for h in history],
                         "prune_loadavg": [load, os.getloadavg()]})
    print(f"pruned to ratio {history[-1].ratio:.2f} in {len(history)} steps: {start_ms:.3f} -> "
          f"{history[-1].latency_ms:.3f} ms (target {target_ms})")


def stage_tune(target: Target, epochs: int, lr: float) -> None:
    from nas.train import evaluate, train_proxy

    state = _state(target)
    if "history" not in state:
        raise UserError("run the prune stage first")
    original = _original(target)
    model = torch.load(_work(target) / "pruned_raw.pt", weights_only=False)
    splits = target.splits(target.target_resolution)
    started = time.time()
    pruned_val = evaluate(model, splits.val)
    if epochs > 0:
        train_proxy(model, splits, epochs=epochs, lr=lr, teacher=original, threads=target.threads, progress=True)
    model.eval()
    torch.save(model, _work(target) / "pruned_tuned.pt")
    state["tune"] = {
        "epochs": epochs, "lr": lr, "distill": True, "resolution": target.target_resolution,
        "pruned_before_fine_tune_val": pruned_val, "seconds": time.time() - started,
        "val": {"unpruned": evaluate(original, splits.val), "pruned": evaluate(model, splits.val)},
        "test": {"unpruned": evaluate(original, splits.test), "pruned": evaluate(model, splits.test)},
        "images": {"val": len(splits.val), "test": len(splits.test)},
    }
    _save_state(target, state)
    print(json.dumps(state["tune"], indent=1))


def _ir_bytes(model: nn.Module, resolution: int, directory: Path, name: str) -> int:
    from nas.export import convert_openvino, save_openvino

    xml = save_openvino(convert_openvino(model, resolution), directory / f"{name}.xml")
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def stage_time(target: Target, rounds: int, out: Path | None) -> dict[str, Any]:
    state = _state(target)
    if "tune" not in state:
        raise UserError("run the prune and tune stages first")
    original = _original(target)
    model = torch.load(_work(target) / "pruned_tuned.pt", weights_only=False).eval()
    resolution = target.target_resolution
    load = os.getloadavg()
    before_ms, after_ms = interleaved_latency([original, model], _latency(target), rounds=rounds)
    load_after = os.getloadavg()
    mixers = [stage.mixer for stage in target.winner.arch.stages]
    tune = state["tune"]
    before = snapshot(original, resolution, tune["val"]["unpruned"], before_ms, mixers)
    after = snapshot(model, resolution, tune["val"]["pruned"], after_ms, mixers)
    before["test_accuracy"], after["test_accuracy"] = tune["test"]["unpruned"], tune["test"]["pruned"]
    before["ir_bytes"] = _ir_bytes(original, resolution, _work(target), "unpruned")
    after["ir_bytes"] = _ir_bytes(model, resolution, _work(target), "pruned")
    history = [PruneStep(**h) for h in state["history"]]
    metrics = save_pruned(target, model, history, before=before, after=after,
                          pruned_accuracy=tune["pruned_before_fine_tune_val"], target_ms=state["target_ms"],
                          epochs=tune["epochs"], distill=True)
    machine = describe_machine()
    report = {
        "what": "pruning to a measured latency target + distilled fine-tune at the target resolution",
        "run": str(target.run_dir), "winner": target.winner.directory.name, "arch": str(target.winner.arch),
        "cpu": cpu_name(), "machine": machine, "runtime": runtime_version(target.backend),
        "backend": target.backend, "threads": target.threads, "precision": target.precision,
        "resolution": resolution, "weights": target.weights,
        "target_ms": state["target_ms"], "start_ms_during_pruning": state["start_ms"],
        "history": state["history"], "fine_tune": tune,
        "latency_ms": {"unpruned": before_ms, "pruned": after_ms}, "latency_ratio": after_ms / before_ms,
        "test_top1": tune["test"], "test_drop_points": 100 * (tune["test"]["unpruned"] - tune["test"]["pruned"]),
        "val_top1": tune["val"], "params": {"unpruned": before["params"], "pruned": after["params"]},
        "macs": {"unpruned": before["macs"], "pruned": after["macs"]},
        "ir_bytes": {"unpruned": before["ir_bytes"], "pruned": after["ir_bytes"]},
        "blocks": {"unpruned": before["blocks"], "pruned": after["blocks"]},
        "loadavg": {"prune_stage": state.get("prune_loadavg"), "time_stage": [load, load_after]},
        "timing": f"interleaved, min of {rounds} rounds per model, nas.latency default settings",
        "targets": {"latency_ratio": 0.7, "test_drop_points": 1.0},
        "pruned_metrics": str(target.pruned_dir / "metrics.json"),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    report["met"] = report["latency_ratio"] <= 0.7 and report["test_drop_points"] <= 1.0
    path = out or RESULTS / f"prune_bench_{target.run_dir.name}_{target.winner.trial}.json"
    atomic_write(path, json.dumps(report, indent=2, default=str) + "\n")
    print(f"latency {before_ms:.3f} -> {after_ms:.3f} ms ({report['latency_ratio']:.2f}x), test top-1 "
          f"{100 * tune['test']['unpruned']:.2f}% -> {100 * tune['test']['pruned']:.2f}% "
          f"(drop {report['test_drop_points']:.2f} points), params {before['params']} -> {after['params']} -> {path}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.prune_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("prune", "tune", "time"))
    parser.add_argument("--run", required=True)
    parser.add_argument("--winner", type=int, default=None)
    parser.add_argument("--target-ms", type=float, help="prune stage: latency to reach")
    parser.add_argument("--step-ratio", type=float, default=0.05, help="prune stage: ratio added per step")
    parser.add_argument("--epochs", type=int, default=1, help="tune stage: fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=1e-3, help="tune stage: peak learning rate")
    parser.add_argument("--rounds", type=int, default=3, help="time stage: interleaved rounds")
    parser.add_argument("--out", type=Path, help="time stage: bench JSON (default bench/results/...)")
    args = parser.parse_args(argv)
    target = load_target(args.run, args.winner)
    if args.stage == "prune":
        if args.target_ms is None:
            raise UserError("the prune stage needs --target-ms")
        stage_prune(target, args.target_ms, args.step_ratio)
    elif args.stage == "tune":
        stage_tune(target, args.epochs, args.lr)
    else:
        stage_time(target, args.rounds, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
