"""Compression benchmark: INT8 and pruning ratios per model family, measured side by side.

For EfficientViT-B0, CAS-ViT-XS and a scaled-down CageViT-style model (the 43 M-parameter preset
is too slow to train here), each with a 10-class head trained briefly on the bundled MNIST at a
small resolution, and for the best winner of the latest search run when one exists:
  (a) INT8 / FP32 latency in OpenVINO at 224 (target <= 0.6): NNCF PTQ (TRANSFORMER, attention
      cores and selection kept float) calibrated at 224; FP32 and INT8 IRs timed interleaved. The
      full run also times an INT8 model with nothing kept float, to show what the ignored scope costs;
  (b) INT8 top-1 drop at the training resolution (target <= 0.5 points), calibrated there;
  (c) pruned / unpruned latency (OpenVINO, 224) with the top-1 change after one fine-tuning epoch
      with distillation (target <= 0.7 at <= 1 point drop). The pruned model gets that extra epoch
      and the unpruned one does not: with this little training, that favours the pruned model.
Prints a table; writes bench/results/compress_bench[_quick].json.

    python -m bench.compress_bench --quick    # ~5 min: less data, shorter timing
    python -m bench.compress_bench            # ~12-15 min on 2 cores

This CPU has AVX2 but no VNNI/AVX-512: INT8 ran at only 0.72-0.93x of FP32 on the published models
here (measured on that machine), so (a) is expected to miss 0.6; the numbers are reported as measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/compress_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from compress.prune import prune_model
from compress.quantize import quantize_model
from nas.arch import Arch, StageSpec
from nas.atomic import atomic_write
from nas.cli import Parser
from nas.data import calibration_subset, load_dataset
from nas.errors import run_cli
from nas.export import save_openvino
from nas.latency import (
    MeasureSettings,
    best_of_rounds,
    cpu_name,
    default_threads,
    describe_machine,
    ir_precision,
    measure,
    measure_ir,
    runtime_version,
)
from nas.models import build_model
from nas.presets import load_preset
from nas.train import evaluate, train_proxy

RESULTS = Path(__file__).resolve().parent / "results"
LATENCY_RESOLUTION = 224
TARGETS = {"int8_latency_ratio": 0.6, "int8_drop_points": 0.5, "pruned_latency_ratio": 0.7, "pruned_drop_points": 1.0}


def cage_small() -> Arch:
    """CageViT-style, scaled down: same trunk kind (16 px patches, one GLSRA stage, ViT head)."""
    return Arch(stages=(StageSpec("glsra", 4, 192, expand=4, downsample="none", head_dim=32, keep_ratio=0.5,
                                  fusion_tokens=4, pool_size=7),),
                stem_kind="patch", stem_width=192, stem_depth=0, head_kind="vit", num_classes=10,
                name="CageViT-small")


FAMILIES: dict[str, tuple[Any, int]] = {  # name -> (arch factory, training resolution)
    "efficientvit_b0": (lambda: load_preset("efficientvit_b0", num_classes=10), 32),
    "casvit_xs": (lambda: load_preset("casvit_xs", num_classes=10), 32),
    "cagevit_small": (cage_small, 64),
}


def int8_latency(model: nn.Module, calibration: torch.Tensor, validation: Any, threads: int, rounds: int,
                 settings: MeasureSettings, workdir: Path, with_quantize_all: bool) -> dict[str, Any]:
    """(a): quantize at 224 and time FP32 vs INT8 IRs interleaved."""
    from nas.export import convert_openvino

    paths = {"fp32": save_openvino(convert_openvino(model, LATENCY_RESOLUTION), workdir / "fp32.xml")}
    variants = [("int8", True)] + ([("int8_quantize_all", False)] if with_quantize_all else [])
    out: dict[str, Any] = {}
    for name, keep_float in variants:
        result = quantize_model(model, calibration, validation, max_drop=100.0, keep_float=keep_float,
                                threads=threads, val_limit=32)
        paths[name] = save_openvino(result.model, workdir / f"{name}.xml")
        out[f"{name}_kept_float_ops"] = len(result.ignored_ops)
        out[f"{name}_fake_quantize_ops"] = result.fake_quantize_ops
    stats = best_of_rounds({name: partial(measure_ir, path, "openvino", threads, precision=ir_precision(path),
                                          settings=settings) for name, path in paths.items()}, rounds)
    for name, s in stats.items():
        out[f"{name}_ms"], out[f"{name}_median_ms"], out[f"{name}_cv"] = s.estimate_ms, s.median_ms, s.cv
    out["int8_latency_ratio"] = stats["int8"].estimate_ms / stats["fp32"].estimate_ms
    if "int8_quantize_all" in stats:
        out["int8_quantize_all_latency_ratio"] = stats["int8_quantize_all"].estimate_ms / stats["fp32"].estimate_ms
    return out


def bench_model(name: str, model: nn.Module, train_res: int, args: argparse.Namespace, trained: bool,
                workdir: Path) -> dict[str, Any]:
    threads, settings = args.threads, args.settings
    record: dict[str, Any] = {"model": name, "train_resolution": train_res,
                              "params": sum(p.numel() for p in model.parameters())}
    start = time.perf_counter()
    splits = load_dataset(args.data, train_res, limit=args.limit)
    if not trained:
        record["train"] = train_proxy(model, splits, epochs=1, threads=threads).accuracy
    model.eval()
    # (b) INT8 accuracy at the training resolution.
    q = quantize_model(model, calibration_subset(splits, args.calibration), splits.val, max_drop=args.max_drop,
                       threads=threads, val_limit=args.val_limit)
    record.update(fp32_accuracy=q.fp32_accuracy, int8_accuracy=q.int8_accuracy, int8_drop_points=q.drop_points,
                  int8_method=q.method)
    # (a) INT8 / FP32 latency at 224, calibrated at 224.
    big = load_dataset(args.data, LATENCY_RESOLUTION, limit=400)
    workdir.mkdir(parents=True, exist_ok=True)
    record.update(int8_latency(model, calibration_subset(big, 64), big.val, threads, args.rounds, settings,
                               workdir, with_quantize_all=not args.quick))
    # (c) prune + 1 distilled fine-tuning epoch, latency at 224 interleaved with the unpruned model.
    teacher = copy.deepcopy(model).eval()
    pruned = copy.deepcopy(model)
    prune_model(pruned, train_res, ratio=args.ratio)
    train_proxy(pruned, splits, epochs=1, teacher=teacher, threads=threads)
    pruned.eval()
    stats = best_of_rounds({name: partial(measure, m, LATENCY_RESOLUTION, "openvino", threads, settings=settings)
                            for name, m in (("unpruned", model), ("pruned", pruned))}, args.rounds)
    before, after = evaluate(model, splits.val), evaluate(pruned, splits.val)
    record.update(prune_ratio=args.ratio, pruned_params=sum(p.numel() for p in pruned.parameters()),
                  unpruned_ms=stats["unpruned"].estimate_ms, pruned_ms=stats["pruned"].estimate_ms,
                  pruned_latency_ratio=stats["pruned"].estimate_ms / stats["unpruned"].estimate_ms,
                  unpruned_accuracy=before, pruned_accuracy=after, pruned_drop_points=100 * (before - after),
                  seconds=time.perf_counter() - start)
    return record


def latest_winner() -> tuple[str, nn.Module, int] | None:
    from nas.errors import UserError
    from nas.runs import get_winner, read_config, resolve_run

    try:
        run = resolve_run(None)
        winner = get_winner(run, None)
    except UserError:
        return None
    return f"winner {run.name}/{winner.directory.name}", winner.model(), int(read_config(run)["proxy_resolution"])


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'model':34s} {'INT8/FP32 @224':>15s} {'INT8 drop pt':>13s} {'pruned/unpr. @224':>18s} "
            f"{'prune drop pt':>14s} {'FP32 ms':>8s} {'INT8 ms':>8s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:34s} {r['int8_latency_ratio']:15.3f} {r['int8_drop_points']:13.2f} "
              f"{r['pruned_latency_ratio']:18.3f} {r['pruned_drop_points']:14.2f} "
              f"{r['fp32_ms']:8.3f} {r['int8_ms']:8.3f}")
    print(f"targets: INT8/FP32 <= {TARGETS['int8_latency_ratio']}, INT8 drop <= {TARGETS['int8_drop_points']} pt, "
          f"pruned/unpruned <= {TARGETS['pruned_latency_ratio']} at <= {TARGETS['pruned_drop_points']} pt drop")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.compress_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="less data and shorter timing (~5 min)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--ratio", type=float, default=0.3, help="pruning channel ratio (default 0.3)")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--data", default=None, help="dataset source (default: bundled MNIST)")
    parser.add_argument("--no-winner", action="store_true", help="skip the search run's winner")
    args = parser.parse_args(argv)
    args.limit, args.val_limit, args.calibration = (1000, 200, 64) if args.quick else (2500, 500, 128)
    args.rounds, args.max_drop = (2, 0.5) if args.quick else (3, 0.5)
    args.settings = MeasureSettings(passes=3, min_samples=15, max_seconds_per_pass=0.4) if args.quick else None
    torch.manual_seed(0)
    rows = []
    workroot = RESULTS / "compress_bench_ir"
    jobs: list[tuple[str, nn.Module, int, bool]] = []
    if not args.no_winner and (found := latest_winner()) is not None:
        jobs.append((*found, True))
    for family in args.families:
        factory, res = FAMILIES[family]
        jobs.append((family, build_model(factory()), res, False))
    for name, model, res, trained in jobs:
        print(f"[{name}] training/quantizing/pruning ...", file=sys.stderr, flush=True)
        rows.append(bench_model(name, model, res, args, trained, workroot / name.replace("/", "_").replace(" ", "_")))
    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"compress_bench{'_quick' if args.quick else ''}.json"
    atomic_write(out, json.dumps({
        "settings": {k: v for k, v in vars(args).items() if k != "settings"}, "targets": TARGETS,
        "device": cpu_name(), "machine": describe_machine(), "precision": "fp32 (pinned; INT8 IRs: float ops f32)",
        "openvino": runtime_version("openvino"), "threads": args.threads,
        "latency_resolution": LATENCY_RESOLUTION, "results": rows}, indent=2, default=str))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
