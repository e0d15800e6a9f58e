"""Choose each family's INT8 rules by measured latency AND accuracy; record the losers.

Every rule variant (one NNCF/OpenVINO option changed from the rules file, applied to every family)
quantizes, per model:
  accuracy  the model's search-proxy weights (the run's checkpoints: the winner and the three family
            baselines, trained at the proxy resolution, where their accuracy means something),
            calibrated on 300 train images, top-1 on the run's val and test splits against the
            same OpenVINO model in fp32;
  latency   the same rules on the model at the target resolution (synthetic calibration: the
            graph, not the scales, sets the speed), timed by `benchmark_app` (sync, 1 stream,
            the threads; bench.latency_bench.run_benchmark_app) beside the FP32 IR at f32 and
            bf16, natively and (--avx2) with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA, emulated
            on an AVX-512 CPU, not an AVX2-only one); CAS-ViT-XS / EfficientViT-B0 latency only.
A family's choice: the fastest variant by benchmark_app on its model (AMX: INT8 vs bf16) whose val
drop is at most --max-drop points. Writes bench/results/int8_rules_<cpu>.json; the choices are
copied into nas/quant_rules.yaml by hand (the data file stays reviewed).

    nice -n 19 python -m bench.int8_rules --run DIR --prepare-only   # quantize + accuracy (CPU heavy)
    python -m bench.int8_rules --run DIR --avx2                      # time (under the quiet lock)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.int8_profile import model_archs, run_baselines, run_winner
from nas.cli import Parser
from nas.errors import run_cli

RESULTS = Path(__file__).resolve().parent / "results"
# variant -> changes to every family's rules (None: keep_float off, every op quantized)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "file": {},
    "cnn": {"model_type": "cnn"},
    "transformer_performance": {"preset": "performance"},
    "smoothquant_off": {"smooth_quant_alpha": -1},
    "residual_adds_float": {"quantize_residual_adds": False},
    "cnn_residual_adds_float": {"model_type": "cnn", "quantize_residual_adds": False},
    "bias_correction_full": {"fast_bias_correction": False},
    "no_float_islands": None,
    "stem_float": {"+stem": {"float_patterns": [".*"]}},  # every stem op float (high-res, few channels)
    "depthwise_float": {"float_types+": ["GroupConvolution"], "+stem": {"float_types": ["GroupConvolution"]}},
}
FAMILY_MODEL = {"catm": "casvit_baseline", "litemla": "efficientvit_baseline", "glsra": "cagevit_baseline",
                "mbconv": "efficientvit_baseline"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def variant_rules(name: str) -> tuple[Any, bool]:
    from nas.quant_rules import load_rules, parse_rules

    base = load_rules()
    change = VARIANTS[name]
    if change is None:
        return base, False
    added = {k[1:]: v for k, v in change.items() if k.startswith("+")}  # "+stem": a new entry
    update = {k: v for k, v in change.items() if not k.startswith("+") and not k.endswith("+")}
    extra = change.get("float_types+", [])  # appended to every family's float op types
    families = {k: {**v.model_dump(), **update, "float_types": [*v.float_types, *extra]}
                for k, v in base.families.items()} | added
    return parse_rules({"families": families}, f"variant {name}"), True


def trained_models(run: Path, trial: int | None) -> dict[str, tuple[Any, Path]]:
    """(arch, proxy weights) of the winner and of each baseline the run trained."""
    name, found = run_winner(run, trial)
    out = {name: (found.arch, found.directory / "weights.pt")}
    for base, barch in run_baselines(run).items():
        found = sorted((run / "checkpoints").glob(f"*-{barch.hash}.pt"))
        if found:
            out[base] = (barch, found[0])
    return out


def accuracy_part(run: Path, trial: int | None, calibration: int, workdir: Path,
                  variants: list[str] | None = None) -> dict[str, Any]:
    """Val/test top-1 of the FP32 and every variant's INT8 OpenVINO model at the proxy resolution."""
    import nncf
    import torch

    from compress._runtime import openvino_logits, top1, validation_batch
    from compress._target import load_splits
    from nas.atomic import atomic_write
    from nas.data import calibration_subset
    from nas.export import convert_openvino
    from nas.latency import supported_precisions
    from nas.models import build_model
    from nas.quantization import quantize_options
    from nas.runs import read_config

    hints = [p for p in ("fp32", "bf16") if p in supported_precisions("openvino")]
    resolution = int(read_config(run)["space"]["resolution"]["proxy"])
    splits = load_splits(run.resolve(), resolution)
    calib = [image[None].numpy() for image in calibration_subset(splits, calibration)]
    val, test = validation_batch(splits.val), validation_batch(splits.test)
    out: dict[str, Any] = {"resolution": resolution, "val_images": len(val[1]), "test_images": len(test[1]),
                           "calibration_images": len(calib), "models": {}}
    cache_path = workdir / "accuracy_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    for name, (arch, weights) in trained_models(run, trial).items():
        model = build_model(arch)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        fp32 = convert_openvino(model.eval(), resolution)
        row: dict[str, Any] = {"weights": str(weights), "fp32": {
            "val": top1(openvino_logits(fp32, val[0], 2), val[1]),
            "test": top1(openvino_logits(fp32, test[0], 2), test[1])}}
        for variant in variants or VARIANTS:
            rules, keep_float = variant_rules(variant)
            cache_key = f"{name}|{weights}|{rules.digest()}|{keep_float}|{len(calib)}"
            if cache_key in cache:
                row.update(cache[cache_key])
                continue
            start = time.perf_counter()
            options, ignored = quantize_options(fp32, len(calib), keep_float, [s.mixer for s in arch.stages], rules)
            int8 = nncf.quantize(fp32, nncf.Dataset(calib), **options)
            seconds = time.perf_counter() - start
            for hint in hints:  # the float islands at f32 or bf16 (the project's int8 where the CPU has bf16)
                key = variant if hint == "fp32" else f"{variant}@{hint}"
                acc = {"val": top1(openvino_logits(int8, val[0], 2, hint), val[1]),
                       "test": top1(openvino_logits(int8, test[0], 2, hint), test[1])}
                row[key] = {**acc, "val_drop_points": 100 * (row["fp32"]["val"] - acc["val"]),
                            "test_drop_points": 100 * (row["fp32"]["test"] - acc["test"]),
                            "float_ops": len(ignored), "quantize_s": seconds}
                log(f"{name} {key}: val {100 * acc['val']:.2f}% (fp32 {100 * row['fp32']['val']:.2f}%), "
                    f"test {100 * acc['test']:.2f}%")
            cache[cache_key] = {k: row[k] for k in (variant, f"{variant}@bf16") if k in row}
            atomic_write(cache_path, json.dumps(cache))
        out["models"][name] = row
    return out


def prepare_irs(run: Path, trial: int | None, workdir: Path, resolution: int,
                variants: list[str] | None = None) -> dict[str, Any]:
    """FP32 IR and one INT8 IR per variant of every model at the target resolution."""
    from nas.export import convert_openvino, save_openvino
    from nas.latency._backends import _synthetic_calibration
    from nas.models import build_model
    from nas.quantization import quantize_openvino

    manifest: dict[str, Any] = {}
    calib = _synthetic_calibration(resolution, 16)
    for name, arch in model_archs(run, trial, ("casvit_xs", "efficientvit_b0")).items():
        mixers = [s.mixer for s in arch.stages]
        fp32_path = workdir / f"{name}-{arch.hash}.fp32.xml"
        ov_model = None
        if not fp32_path.exists():
            ov_model = convert_openvino(build_model(arch).eval(), resolution)
            save_openvino(ov_model, fp32_path)
        entry = {"fp32": str(fp32_path), "mixers": mixers, "int8": {}}
        for variant in variants or VARIANTS:
            rules, keep_float = variant_rules(variant)
            path = workdir / f"{name}-{arch.hash}.int8-{variant}-{rules.digest()}.xml"
            if not path.exists():
                if ov_model is None:
                    from nas.latency import ov_read

                    ov_model = ov_read(fp32_path)
                save_openvino(quantize_openvino(ov_model, calib, keep_float, mixers, rules), path)
                log(f"{name} {variant}: INT8 IR")
            entry["int8"][variant] = str(path)
        manifest[name] = entry
    return manifest


def time_all(manifest: dict[str, Any], threads: int, seconds: int, precisions: list[str],
             int8_hints: list[str]) -> dict[str, Any]:
    """benchmark_app medians: the FP32 IR at each float precision, every INT8 variant at each hint."""
    from bench.latency_bench import run_benchmark_app
    from nas.latency._precision import openvino_precision_config

    out: dict[str, Any] = {}
    for name, entry in manifest.items():
        row: dict[str, Any] = {}
        for precision in precisions:
            row[precision] = run_benchmark_app(Path(entry["fp32"]), threads, seconds,
                                               openvino_precision_config(precision)["INFERENCE_PRECISION_HINT"])
        for variant, path in entry["int8"].items():
            for hint in int8_hints:
                key = f"int8:{variant}" + ("" if hint == "f32" else f"@{hint}")
                row[key] = run_benchmark_app(Path(path), threads, seconds, hint)
        out[name] = row
        log(f"{name}: " + ", ".join(f"{k} {v['median_ms']:.3f}" for k, v in row.items()))
    return out


def choose(report: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """Per family: the fastest variant (native benchmark_app median) within max_drop val points, with
    the float islands at f32 and, separately, at bf16 (the project's int8 on CPUs with bf16)."""
    timing, acc = report["latency"].get("native", {}), report.get("accuracy", {}).get("models", {})
    choice = {}
    for family, model in FAMILY_MODEL.items():
        if model not in timing or model not in acc:
            continue
        rows = []
        for variant in VARIANTS:
            for island in ("", "@bf16"):
                ms = timing[model].get(f"int8:{variant}{island}", {}).get("median_ms")
                a = acc[model].get(f"{variant}{island}", {})
                if ms is None and not a:
                    continue
                rows.append({"variant": variant + island, "median_ms": ms,
                             "vs_fp32": ms and ms / timing[model]["fp32"]["median_ms"],
                             "vs_bf16": ms and "bf16" in timing[model] and ms / timing[model]["bf16"]["median_ms"],
                             "val_drop_points": a.get("val_drop_points"), "test_drop_points": a.get("test_drop_points"),
                             "within": a.get("val_drop_points") is not None and a["val_drop_points"] <= max_drop})
        out = {"model": model, "candidates": rows}
        for key, island in (("chosen", False), ("chosen_bf16_islands", True)):
            ok = [r for r in rows if r["within"] and r["median_ms"] and r["variant"].endswith("@bf16") == island]
            out[key] = min(ok, key=lambda r: r["median_ms"])["variant"] if ok else None
        choice[family] = out
    return choice


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.int8_rules", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--winner", type=int, default=None)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-seconds", type=int, default=5)
    p.add_argument("--calibration", type=int, default=300)
    p.add_argument("--max-drop", type=float, default=0.5)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/vitnas-int8-rules"))
    p.add_argument("--prepare-only", action="store_true", help="quantize and measure accuracy, no timing")
    p.add_argument("--avx2", action="store_true", help="also time with ONEDNN_MAX_CPU_ISA=AVX2 (fp32 + INT8)")
    p.add_argument("--only-avx2", action="store_true", help="time only with the AVX2 cap")
    p.add_argument("--report-only", action="store_true", help="only rebuild the JSON from the workdir's parts")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                   help="quantize, time and score these variants only (default all)")
    p.add_argument("--skip-irs", action="store_true", help="with --prepare-only: accuracy only")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="", help="timing conditions to record (e.g. other work running niced)")
    p.add_argument("--time-worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--precisions", nargs="+", default=["fp32"], help=argparse.SUPPRESS)
    p.add_argument("--int8-hints", nargs="+", default=None, choices=["f32", "bf16"],
                   help="INT8 float-island precisions to time (default: f32, and bf16 where the CPU has it)")
    args = p.parse_args(argv)

    from nas.atomic import atomic_write

    if args.time_worker:  # child: the ISA cap must be in the environment before OpenVINO loads
        manifest = json.loads(args.time_worker.read_text())
        result = time_all(manifest, args.threads, args.bench_seconds, args.precisions, args.int8_hints)
        atomic_write(args.time_worker.with_suffix(".out.json"), json.dumps(result, indent=1))
        return 0

    from bench.precision_bench import cpu_slug
    from nas.latency import describe_machine, runtime_version, supported_precisions
    from nas.quantization import rules_digest

    machine = describe_machine()
    out_path = args.out or RESULTS / f"int8_rules_{cpu_slug(machine)}.json"
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"latency": {}, "load": {}}  # rebuilt from the workdir's parts on every call
    if (args.workdir / "accuracy.json").exists():
        report["accuracy"] = json.loads((args.workdir / "accuracy.json").read_text())
    if (args.workdir / "accuracy_first_pass.json").exists():
        report["accuracy_first_pass"] = json.loads((args.workdir / "accuracy_first_pass.json").read_text())
    if "accuracy" not in report and out_path.exists() and "accuracy" in json.loads(out_path.read_text()):
        report["accuracy"] = json.loads(out_path.read_text())["accuracy"]
    if "accuracy" not in report and (args.workdir / "accuracy_cache.json").exists():  # a pass cut short
        partial: dict[str, Any] = {}
        for key, rows in json.loads((args.workdir / "accuracy_cache.json").read_text()).items():
            if "|" in key:
                partial.setdefault(key.split("|", 1)[0], {}).update(rows)
        report["accuracy_partial"] = {"source": "per-variant cache of an accuracy pass not yet finished",
                                      "models": partial}
    manifest_path = args.workdir / "manifest.json"
    if args.prepare_only:
        if not args.skip_irs:
            atomic_write(manifest_path, json.dumps(prepare_irs(args.run, args.winner, args.workdir, args.resolution,
                                                                     args.variants)))
        report["accuracy"] = accuracy_part(args.run, args.winner, args.calibration, args.workdir, args.variants)
        atomic_write(args.workdir / "accuracy.json", json.dumps(report["accuracy"]))
    elif not args.report_only:
        native = [p for p in ("fp32", "bf16") if p in supported_precisions("openvino")]
        hints = args.int8_hints or ["f32"] + (["bf16"] if "bf16" in native else [])
        for label, isa, precisions, int8_hints in [("native", None, native, hints)] + (
                [("avx2_emulated", "AVX2", ["fp32"], ["f32"])] if args.avx2 else []):
            if args.only_avx2 and isa is None:
                continue
            env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
            if isa:
                env["ONEDNN_MAX_CPU_ISA"] = isa
            load = os.getloadavg()
            subprocess.run([sys.executable, "-m", "bench.int8_rules", "--run", str(args.run), "--time-worker",
                            str(manifest_path), "--threads", str(args.threads), "--bench-seconds",
                            str(args.bench_seconds), "--precisions", *precisions, "--int8-hints", *int8_hints],
                           env=env, check=True,
                           cwd=Path(__file__).resolve().parent.parent)
            result = json.loads(manifest_path.with_suffix(".out.json").read_text())
            tag = f"{label}_{'-'.join(int8_hints)}"  # timing runs in several holds of the quiet lock
            atomic_write(args.workdir / f"latency_{tag}.json", json.dumps(
                {"label": label, "rows": result, "load": {"loadavg_before": load, "loadavg_after": os.getloadavg()},
                 "note": args.note}))
    for path in sorted(args.workdir.glob("latency_*.json")):  # every hold so far, whatever ran last
        part = json.loads(path.read_text())
        for model, row in part["rows"].items():
            report["latency"].setdefault(part["label"], {}).setdefault(model, {}).update(row)
        report["load"][path.stem.removeprefix("latency_")] = {**part["load"], "note": part.get("note", "")}
        report.setdefault("holds", {})[path.stem.removeprefix("latency_")] = part["rows"]  # fp32/bf16 of each hold
    report["conditions"] = {"note": args.note, "machine_lock": os.environ.get("VITNAS_LOCK", "project default")}
    report.update(machine=machine, runtime=runtime_version("openvino"), resolution=args.resolution,
                  threads=args.threads, base_rules_digest=rules_digest(), max_drop_points=args.max_drop,
                  variants={k: ("keep_float off: every op quantized" if v is None else v) for k, v in VARIANTS.items()},
                  benchmark_app=f"-hint none -nstreams 1 -nthreads {args.threads} -nireq 1 -api sync "
                                f"-t {args.bench_seconds} -infer_precision f32|bf16 (INT8 IRs: f32)",
                  avx2_label=f"AVX2 emulated on this {machine['cpu']} (ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN's "
                             "kernels), not an AVX2-only CPU")
    report["choice"] = choose(report, args.max_drop)
    atomic_write(out_path, json.dumps(report, indent=1))
    print_summary(report)
    print(f"wrote {out_path}")
    return 0


def print_summary(report: dict[str, Any]) -> None:
    acc = report.get("accuracy", {}).get("models", {})
    for label, timing in report.get("latency", {}).items():
        print(f"\n== benchmark_app median ms, {label} ==")
        for model, row in timing.items():
            base = {k: row[k]["median_ms"] for k in ("fp32", "bf16") if k in row}
            print(f"{model:22s} " + "  ".join(f"{k} {v:.3f}" for k, v in base.items()))
            for key, stats in row.items():
                if key.startswith("int8:"):
                    variant = key.split(":", 1)[1]  # e.g. stem_float@bf16
                    a = acc.get(model, {}).get(variant, {})
                    ratios = " ".join(f"/{k} {stats['median_ms'] / v:.2f}" for k, v in base.items())
                    drop = (f" val drop {a['val_drop_points']:+.2f} test drop {a['test_drop_points']:+.2f}"
                            if a else "")
                    print(f"   {variant:26s} {stats['median_ms']:7.3f} ms {ratios}{drop}")
    if not report.get("latency"):
        for model, row in acc.items():
            print(model, {k: round(100 * v["val"], 2) for k, v in row.items() if isinstance(v, dict) and "val" in v})
    for family, c in report.get("choice", {}).items():
        print(f"{family}: chosen {c['chosen']} (f32 islands), {c['chosen_bf16_islands']} (bf16 islands) "
              f"on {c['model']}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
