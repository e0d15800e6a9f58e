"""Precision benchmark: fp32 vs bf16 vs fp16 vs INT8 on this CPU, side by side in one run.

For presets and a search run's best winner, at 224 px, batch 1, sync single stream, fixed threads:
  latency  the FP32 IR at every float precision OpenVINO runs here (INFERENCE_PRECISION_HINT f32,
           bf16, f16) and the NNCF INT8 IR (nas.quantization rules, calibrated on train images,
           float ops f32), interleaved round by round, by our clock (nas.latency, min of pass
           medians) and by `benchmark_app -infer_precision P` on the same IR and settings;
  accuracy the same precisions on the run's test split: for the winner at the resolution its
           weights were trained at (its final weights at the target resolution when nas.train has
           run, else its proxy weights at the proxy resolution) -- top-1; for the untrained presets,
           fidelity to PyTorch fp32 instead (top-1 agreement, max |diff| / scale);
  numerics (--numerics-only too) OpenVINO bf16 vs PyTorch fp32 over the tiny per-mixer models and
           every preset: the measurement the bf16 test tolerances come from.
Writes bench/results/precision_<cpu>.json (named by CPU model + ISA fingerprint) and prints a table.

    python -m bench.precision_bench --run results/<run>      # presets + the run's winner, ~10 min
    python -m bench.precision_bench --quick                  # 2 presets, shorter timing, ~4 min
    python -m bench.precision_bench --numerics-only          # the bf16 tolerance measurement, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # `python bench/precision_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency_bench import run_benchmark_app
from nas.atomic import atomic_write
from nas.cli import Parser
from nas.errors import run_cli
from nas.export import convert_openvino, save_openvino
from nas.latency import (
    FLOAT_PRECISIONS,
    MeasureSettings,
    best_of_rounds,
    compile_openvino,
    cpu_clock,
    describe_machine,
    machine_line,
    measure_ir,
    others_cores,
    runtime_version,
    supported_precisions,
)
from nas.quantization import quantize_openvino

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ["casvit_xs", "efficientvit_b0", "efficientvit_b1", "cagevit"]
QUICK_PRESETS = ["casvit_xs", "efficientvit_b0"]
OV_HINT_NAME = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def precisions_here() -> list[str]:
    here = supported_precisions("openvino")
    return [p for p in (*FLOAT_PRECISIONS, "int8") if p in here]


def cpu_slug(description: dict[str, Any]) -> str:
    name = re.sub(r"\(R\)|\(TM\)|processor|cpu|@.*", "", description["cpu"], flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + "-" + description["fingerprint"][:6]


# --- models ------------------------------------------------------------------------------------

def _logits(compiled: Any, images: torch.Tensor) -> np.ndarray:
    return np.concatenate([compiled(image[None].numpy())[0] for image in images])


def _ir_pair(model: torch.nn.Module, resolution: int, calibration: torch.Tensor, out: Path,
             name: str) -> dict[str, Path]:
    """FP32 IR and NNCF INT8 IR of `model` at `resolution` (INT8 calibrated on `calibration`)."""
    ov_model = convert_openvino(model, resolution)
    fp32 = save_openvino(ov_model, out / f"{name}-fp32.xml")
    int8 = quantize_openvino(ov_model, [image[None].numpy() for image in calibration])
    return {"fp32": fp32, "int8": save_openvino(int8, out / f"{name}-int8.xml")}


def fidelity(model: torch.nn.Module, files: dict[str, Path], images: torch.Tensor, labels: np.ndarray | None,
             threads: int, precisions: list[str]) -> dict[str, Any]:
    """Per precision: agreement with PyTorch fp32 (and top-1 on `labels` when the model is trained)."""
    with torch.inference_mode():
        reference = torch.cat([model(images[i:i + 64]) for i in range(0, len(images), 64)]).numpy()
    scale = max(1.0, float(np.abs(reference).max()))
    out: dict[str, Any] = {}
    if labels is not None:
        out["torch_fp32"] = {"top1": float((reference.argmax(-1) == labels).mean())}
    for precision in precisions:
        path = files["int8" if precision == "int8" else "fp32"]
        logits = _logits(compile_openvino(path, threads, precision), images)
        row = {"top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
               "max_abs_diff_over_scale": float(np.abs(logits - reference).max()) / scale}
        if labels is not None:
            row["top1"] = float((logits.argmax(-1) == labels).mean())
        out[precision] = row
    return out


def interleaved_latency(models: dict[str, dict[str, Path]], precisions: list[str], threads: int, rounds: int,
                        seconds: int, settings: MeasureSettings) -> dict[str, dict[str, Any]]:
    """Round-robin over (model, precision): ours then benchmark_app, so slow spells hit all alike."""
    result: dict[str, dict[str, Any]] = {m: {p: {"ours": [], "benchmark_app": []} for p in precisions}
                                         for m in models}
    timings: dict[tuple[str, str, str], Any] = {}
    for name, files in models.items():
        for precision in precisions:
            path = files["int8" if precision == "int8" else "fp32"]
            timings[name, precision, "ours"] = partial(measure_ir, path, threads=threads, precision=precision,
                                                       settings=settings)
            timings[name, precision, "benchmark_app"] = partial(run_benchmark_app, path, threads, seconds,
                                                                infer_precision=OV_HINT_NAME[precision])

    def record(r: int, key: tuple[str, str, str], measured: Any) -> None:
        name, precision, clock = key
        if key == next(iter(timings)):
            log(f"timing round {r}/{rounds}")
        if clock == "ours":
            measured = {"estimate_ms": measured.estimate_ms, "median_ms": measured.median_ms,
                        "pass_cv": measured.pass_cv, "others_cpu": measured.others_cpu}
        result[name][precision][clock].append(measured)

    best = best_of_rounds(timings, rounds, each=record,
                          ms=lambda m: m["median_ms"] if isinstance(m, dict) else m.estimate_ms)
    for name, per_model in result.items():
        for precision, slot in per_model.items():
            slot["ours_best_ms"] = best[name, precision, "ours"].estimate_ms
            slot["benchmark_app_best_median_ms"] = best[name, precision, "benchmark_app"]["median_ms"]
    return result


def ratios(latency: dict[str, Any], precisions: list[str], clock: str) -> dict[str, float]:
    """fp32 / P latency (> 1: P is faster) and int8 vs each float precision, by one clock."""
    key = "ours_best_ms" if clock == "ours" else "benchmark_app_best_median_ms"
    ms = {p: latency[p][key] for p in precisions}
    out = {f"fp32/{p}": ms["fp32"] / ms[p] for p in precisions if p != "fp32"}
    out.update({f"{p}/int8": ms[p] / ms["int8"] for p in precisions if p not in ("fp32", "int8") and "int8" in ms})
    out["fastest"] = min(ms, key=ms.get)
    return out


# --- numerics (the bf16 tolerance measurement) ---------------------------------------------------

def numerics(precisions: list[str], threads: int) -> list[dict[str, Any]]:
    from nas.models import build_model
    from nas.presets import list_presets, load_preset
    from tests.conftest import MIXERS, tiny_arch

    rows = []
    cases = [(f"tiny-{m}", lambda m=m: tiny_arch(m), res, 16) for m in MIXERS for res in (32, 64)]
    cases += [(name, lambda n=name: load_preset(n), 224, 4) for name in list_presets()]
    for name, arch, resolution, n in cases:
        torch.manual_seed(2 if name.startswith("tiny") else 0)
        model = build_model(arch()).eval()
        images = torch.randn(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            reference = model(images).numpy()
        ov_model = convert_openvino(model, resolution)
        scale = max(1.0, float(np.abs(reference).max()))
        row: dict[str, Any] = {"model": name, "resolution": resolution, "inputs": n}
        for precision in [p for p in precisions if p != "int8"]:
            logits = _logits(compile_openvino(ov_model, threads, precision), images)
            row[precision] = {"max_abs_diff_over_scale": float(np.abs(logits - reference).max()) / scale,
                              "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean())}
        rows.append(row)
        log(f"numerics {name} @{resolution}: " + ", ".join(
            f"{p} {row[p]['max_abs_diff_over_scale']:.1e}/{row[p]['top1_agreement']:.2f}"
            for p in precisions if p in row))
    return rows


# --- main --------------------------------------------------------------------------------------

def _winner(run: Path | None) -> tuple[Any, dict[str, Any]] | None:
    from nas.runs import get_winner, read_config, resolve_run

    try:
        run_dir = resolve_run(str(run) if run else None)
        return get_winner(run_dir, None), read_config(run_dir) or {}
    except Exception as exc:  # no run: the bench still covers the presets
        log(f"no winner ({exc}); presets only")
        return None


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.precision_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None, help="search run whose best winner to include (default latest)")
    p.add_argument("--presets", nargs="*", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--numerics-only", action="store_true")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3, quick 2)")
    p.add_argument("--bench-seconds", type=int, default=None, help="benchmark_app -t (default 8, quick 4)")
    p.add_argument("--images", type=int, default=500, help="held-out images for accuracy (default 500)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    started = time.time()
    machine = describe_machine()
    precisions = precisions_here()
    log(f"{machine_line(machine)}; precisions here: {', '.join(precisions)}")
    begin = cpu_clock()
    report: dict[str, Any] = {
        "machine": machine, "openvino": runtime_version("openvino"), "torch": torch.__version__,
        "threads": args.threads, "precisions": precisions, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_at_start": os.getloadavg(),
    }
    report["numerics"] = numerics(precisions, args.threads)
    if not args.numerics_only:
        report.update(_latency_and_accuracy(args, precisions))
    report["others_cpu_mean"] = others_cores(begin, cpu_clock())
    report["seconds_total"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"precision_{'numerics_' if args.numerics_only else ''}{cpu_slug(machine)}"
    path = args.out / f"{stem}{'_quick' if args.quick else ''}.json"
    atomic_write(path, json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"\nwrote {path} in {report['seconds_total']} s")
    return 0


def _latency_and_accuracy(args: argparse.Namespace, precisions: list[str]) -> dict[str, Any]:
    from nas.data import calibration_subset, load_dataset
    from nas.final import final_weights, run_splits
    from nas.models import build_model
    from nas.presets import load_preset

    presets = args.presets if args.presets is not None else (QUICK_PRESETS if args.quick else PRESETS)
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.bench_seconds or (4 if args.quick else 8)
    settings = MeasureSettings()
    winner = _winner(args.run)
    config = winner[1] if winner else {}
    data = config.get("data")
    target = int(config.get("target_resolution") or 224)
    splits_224 = run_splits(winner[0].directory.parent.parent, target) if winner else load_dataset(data, target)
    calibration = calibration_subset(splits_224, 64)
    held_out = torch.arange(min(args.images, len(splits_224.test)))
    models: dict[str, dict[str, Path]] = {}
    accuracy: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="precision-bench-") as tmp:
        out = Path(tmp)
        for name in presets:
            log(f"exporting {name}")
            model = build_model(load_preset(name)).eval()
            models[name] = _ir_pair(model, target, calibration, out, name)
            images, _ = splits_224.test.batch(held_out[:100])
            accuracy[name] = {"resolution": target, "images": len(images), "trained": False,
                              **fidelity(model, models[name], images, None, args.threads, precisions)}
        if winner:
            w, config = winner
            run_dir = w.directory.parent.parent
            name = f"winner:{w.directory.name}"
            model = w.model().eval()
            # Accuracy where the weights were trained: the final weights at the target resolution
            # (python -m nas.train), else the proxy weights at the proxy resolution.
            final = final_weights(run_dir, w.arch)
            if final is not None:
                model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True))
            log(f"exporting {name} ({'final' if final else 'proxy'} weights)")
            models[name] = _ir_pair(model, target, calibration, out, "winner")
            trained_res = target if final else int(config.get("proxy_resolution") or target)
            splits = run_splits(run_dir, trained_res)
            trained_at = (models[name] if final else
                          _ir_pair(model, trained_res, calibration_subset(splits, 300), out, "winner-proxy"))
            images, labels = splits.test.batch(torch.arange(min(args.images, len(splits.test))))
            accuracy[name] = {"resolution": trained_res, "images": len(images), "trained": True, "split": "test",
                              "weights": "final" if final else "proxy", "data": data or "mnist",
                              **fidelity(model, trained_at, images, labels.numpy(), args.threads, precisions)}
        latency = interleaved_latency(models, precisions, args.threads, rounds, seconds, settings)
    return {
        "settings": {"resolution": target, "rounds": rounds, "benchmark_app_seconds": seconds,
                     "benchmark_app_flags": f"-hint none -nstreams 1 -nthreads {args.threads} -nireq 1 -api sync "
                                            "-infer_precision P", "measure_settings": asdict(settings),
                     "int8": "NNCF ModelType.TRANSFORMER, nas.quantization keep-float rules, 64 train images"},
        "models": {name: {"latency": latency[name], "ratios_ours": ratios(latency[name], precisions, "ours"),
                          "ratios_benchmark_app": ratios(latency[name], precisions, "benchmark_app"),
                          "accuracy": accuracy[name]} for name in models},
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{machine_line(report['machine'])}, OpenVINO {report['openvino']}, {report['threads']} threads")
    precisions = report["precisions"]
    if "models" in report:
        header = "model".ljust(28) + "".join(f"{p + ' ms':>16}" for p in precisions) + "  fastest   accuracy"
        print(header)
        for name, entry in report["models"].items():
            lat = entry["latency"]
            cells = "".join(f"{lat[p]['ours_best_ms']:7.2f}/{lat[p]['benchmark_app_best_median_ms']:<7.2f} "
                            for p in precisions)
            acc = entry["accuracy"]
            key = "top1" if acc["trained"] else "top1_agreement"
            accs = " ".join(f"{p}:{100 * acc[p][key]:.1f}" for p in precisions)
            print(f"{name[:28]:28s}{cells} {entry['ratios_ours']['fastest']:8s} {key} {accs}")
        print("(ms: ours / benchmark_app median, best of the interleaved rounds)")
    worst = {p: max(r[p]["max_abs_diff_over_scale"] for r in report["numerics"] if p in r)
             for p in precisions if p != "int8"}
    print("numerics, worst max|diff|/scale vs PyTorch fp32: " + ", ".join(f"{p} {v:.1e}" for p, v in worst.items()))


if __name__ == "__main__":
    sys.exit(run_cli(main))
