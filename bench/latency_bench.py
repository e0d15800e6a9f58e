"""Latency benchmark: is nas.latency right, repeatable, and how close do models get to the CPU peak?

In one run, for several presets and a few sampled architectures (FP32, batch 1, fixed threads):
  (a) agreement: our estimate on an exported IR vs OpenVINO's own `benchmark_app` on the same IR and
      the same settings (-hint none -nstreams 1 -nthreads T -nireq 1 -api sync), interleaved
      (target: within 5%);
  (b) repeatability: CV of our estimate over repeated measurements, round-robin over the models so
      the repeats are spread in time (target: < 5%);
  (c) eager PyTorch and ONNX Runtime vs OpenVINO;
  (d) roofline: measured FP32 GEMM peak and copy bandwidth, achieved GFLOP/s per model.
Prints a table; writes bench/results/latency_bench.json and latency_bench.png.

    python -m bench.latency_bench --quick     # ~2-3 min: 2 presets + 1 sampled, shorter runs
    python -m bench.latency_bench             # ~10-11 min: 5 presets + 2 sampled
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python bench/latency_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.atomic import atomic_write
from nas.cli import Parser, installed_command
from nas.errors import UserError, run_cli
from nas.latency import (
    LatencyStats,
    MeasureSettings,
    achieved_gflops,
    arithmetic_intensity,
    best_of_rounds,
    copy_bandwidth_gbs,
    count_flops,
    cpu_clock,
    cpu_name,
    default_threads,
    describe_machine,
    gemm_peak_gflops,
    measure,
    measure_ir,
    min_traffic_bytes,
    others_cores,
    runtime_version,
)
from nas.machine_lock import measuring, training

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ["efficientvit_b0", "efficientvit_b1", "casvit_xs", "casvit_s", "cagevit"]
QUICK_PRESETS = ["efficientvit_b0", "casvit_xs"]
AGREEMENT_TARGET = 0.05  # |ours / benchmark_app - 1|
REPEATABILITY_TARGET = 0.05  # CV of our estimate
QUIET_OTHERS_CPU = 0.25  # a measurement is "quiet" when other processes used at most this many cores


@dataclass
class Candidate:
    name: str
    kind: str  # preset | sampled | handmade
    build: Callable[[], Any]
    arch_hash: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- candidates --------------------------------------------------------------------------------

def _handmade(width: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 1000),
    )


def candidates(presets: list[str], sampled: int, seed: int) -> list[Candidate]:
    """Presets and sampled archs when nas.presets / nas.space exist, hand-made nets otherwise."""
    out: list[Candidate] = []
    try:
        from nas.models import build_model
        from nas.presets import list_presets, load_preset
    except ImportError as exc:
        log(f"nas.presets/nas.models unavailable ({exc}); using hand-made models")
        return [Candidate(f"handmade_w{w}", "handmade", lambda w=w: _handmade(w)) for w in (16, 32, 64)]
    for name in presets:
        if name not in list_presets():
            raise UserError(f"--presets: unknown preset {name!r}; allowed: {', '.join(list_presets())}")
        arch = load_preset(name)
        out.append(Candidate(name, "preset", lambda a=arch: build_model(a), arch.hash))
    if sampled:
        try:
            import optuna

            from nas.space import load_space

            space = load_space()
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            for i in range(sampled):
                arch = space.sample(study.ask(), num_classes=1000)
                out.append(Candidate(f"sampled_{i}_{arch.hash[:6]}", "sampled",
                                     lambda a=arch: build_model(a), arch.hash))
        except Exception as exc:  # the space is someone else's module: degrade, don't die
            log(f"sampling from the search space failed ({type(exc).__name__}: {exc}); skipping")
    return out


# --- benchmark_app -----------------------------------------------------------------------------

_LINE = re.compile(r"(Median|Average|Min|Max):\s+([\d.]+)\s+(ms|us)")


def run_benchmark_app(ir: Path, threads: int, seconds: int, infer_precision: str = "f32") -> dict[str, float]:
    """OpenVINO's benchmark_app with the settings our measurement uses; its statistics in ms.

    `-infer_precision` is always given (f32 by default, like nas.latency's fp32): without it the CPU
    plugin runs FP32 IRs in bf16 on CPUs with AVX-512 BF16 / AMX."""
    cmd = [installed_command("benchmark_app") or "benchmark_app", "-m", str(ir), "-d", "CPU", "-hint", "none",
           "-nstreams", "1", "-nthreads", str(threads), "-nireq", "1", "-api", "sync", "-t", str(seconds),
           "-infer_precision", infer_precision]
    with measuring():
        before, children = cpu_clock(), _children_cpu()
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
        after, children = cpu_clock(), _children_cpu() - children
    others = others_cores(before, after)
    if others is not None and after is not None and before is not None:  # benchmark_app is a child
        others = max(0.0, others - children / (after[2] - before[2]))
    if result.returncode != 0:
        raise RuntimeError(f"benchmark_app failed ({result.returncode}): {result.stdout[-2000:]}"
                           f"{result.stderr}")
    stats = {kind.lower(): float(value) / (1000.0 if unit == "us" else 1.0)
             for kind, value, unit in _LINE.findall(result.stdout)}
    count = re.search(r"Count:\s+(\d+)", result.stdout)
    if "median" not in stats:
        raise RuntimeError(f"could not parse benchmark_app output:\n{result.stdout[-2000:]}")
    return {"median_ms": stats["median"], "average_ms": stats.get("average", float("nan")),
            "min_ms": stats.get("min", float("nan")), "count": int(count[1]) if count else 0,
            "others_cpu": others}


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


# --- helpers -----------------------------------------------------------------------------------

def cv(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(arr.std(ddof=1) / arr.mean()) if arr.size > 1 else 0.0


def brief(stats: LatencyStats) -> dict[str, Any]:
    return {"estimate_ms": stats.estimate_ms, "median_ms": stats.median_ms, "p90_ms": stats.p90_ms,
            "pass_cv": stats.pass_cv, "samples": stats.samples, "unsteady": stats.unsteady,
            "attempts": stats.attempts, "others_cpu": stats.others_cpu}


def export(cand: Candidate, resolution: int, workdir: Path) -> None:
    model = cand.build().eval()
    start = time.perf_counter()
    with training():  # heavy CPU work: cooperating processes don't time meanwhile
        _export_files(cand, model, resolution, workdir)
    log(f"exported {cand.name} (FP32 IR + ONNX) in {time.perf_counter() - start:.1f} s")


def _export_files(cand: Candidate, model: Any, resolution: int, workdir: Path) -> None:
    from nas.export import convert_openvino, export_onnx, save_openvino

    cand.files["xml"] = save_openvino(convert_openvino(model, resolution), workdir / f"{cand.name}.xml")
    cand.files["onnx"] = export_onnx(model, workdir / f"{cand.name}.onnx", resolution)


# --- the four parts ----------------------------------------------------------------------------

def agreement_and_repeatability(cands: list[Candidate], threads: int, rounds: int, bench_rounds: int,
                                seconds: int, settings: MeasureSettings) -> dict[str, dict]:
    """(a)+(b): round-robin over models; in each round ours, then (in the first `bench_rounds`
    rounds) ours again over a benchmark_app-length window and benchmark_app right after it on the
    same IR. Every measurement records how many cores other processes used meanwhile, so quiet
    rounds can be told from loaded ones.

    Two comparisons: our estimate (min of short pass medians, the number the search uses) against
    benchmark_app's median, which tests the method; and our median over a window as long as
    benchmark_app's against its median, the same statistic over the same duration, which tests
    the timer itself (on a machine whose speed changes every few seconds the estimate is lower by
    design)."""
    matched = MeasureSettings(warmup_iters=1, warmup_seconds=0.0, passes=seconds, min_samples=1,
                              min_seconds_per_pass=1.0, max_seconds_per_pass=1.0, max_retries=0)
    out: dict[str, dict] = {c.name: {"ours": [], "benchmark_app": [], "paired_ratio": [], "matched": []}
                            for c in cands}
    for r in range(rounds):
        for cand in cands:
            ours = measure_ir(cand.files["xml"], "openvino", threads, settings=settings)
            entry = out[cand.name]
            entry["ours"].append(brief(ours))
            line = f"round {r + 1}/{rounds} {cand.name}: ours {ours.estimate_ms:.3f} ms ({_others(ours.others_cpu)})"
            if r < bench_rounds:
                long = measure_ir(cand.files["xml"], "openvino", threads, settings=matched)
                ref = run_benchmark_app(cand.files["xml"], threads, seconds)
                entry["benchmark_app"].append(ref)
                entry["matched"].append({**brief(long), "ratio": long.median_ms / ref["median_ms"]})
                entry["paired_ratio"].append({"ratio": ours.estimate_ms / ref["median_ms"],
                                              "quiet": _quiet(ours.others_cpu) and _quiet(ref["others_cpu"])})
                line += (f"; {seconds} s median: ours {long.median_ms:.3f} ms, benchmark_app "
                         f"{ref['median_ms']:.3f} ms ({_others(ref['others_cpu'])})")
            log(line)
    for entry in out.values():
        estimates = [o["estimate_ms"] for o in entry["ours"]]
        quiet = [o["estimate_ms"] for o in entry["ours"] if _quiet(o["others_cpu"])]
        refs = [b["median_ms"] for b in entry["benchmark_app"]]
        pairs = entry["paired_ratio"]
        quiet_pairs = [p["ratio"] for p in pairs if p["quiet"]]
        paired_estimates = estimates[: len(refs)]  # same number of chances at a fast period
        entry["ours_best_ms"] = min(paired_estimates)
        entry["benchmark_app_best_ms"] = min(refs)
        entry["ratio_matched"] = float(np.median([m["ratio"] for m in entry["matched"]]))
        # Both sides' quiet-machine estimates (best of the interleaved rounds); the median of the
        # per-round pairs (measurements seconds apart); the same over pairs where neither side
        # shared the cores with other processes (None when no round was quiet).
        entry["ratio"] = min(paired_estimates) / min(refs)
        entry["ratio_paired_median"] = float(np.median([p["ratio"] for p in pairs]))
        entry["ratio_quiet_pairs"] = float(np.median(quiet_pairs)) if quiet_pairs else None
        entry["quiet_pairs"] = len(quiet_pairs)
        entry["repeatability_cv"] = cv(estimates)
        entry["repeatability_cv_quiet"] = cv(quiet) if len(quiet) >= 3 else None
        entry["quiet_measurements"] = len(quiet)
        entry["benchmark_app_cv"] = cv(refs)
    return out


def _quiet(others_cpu: float | None) -> bool:
    return others_cpu is not None and others_cpu <= QUIET_OTHERS_CPU


def _others(others_cpu: float | None) -> str:
    return "others: n/a" if others_cpu is None else f"others {others_cpu:.2f} cores"


def backend_ratios(cands: list[Candidate], threads: int, resolution: int, rounds: int,
                   settings: MeasureSettings) -> dict[str, dict]:
    """(c): OpenVINO, ONNX Runtime and eager PyTorch, interleaved; ratios of the best estimates."""
    backends = ("openvino", "onnxruntime", "torch")
    out: dict[str, dict] = {c.name: {b: [] for b in backends} for c in cands}
    models = {c.name: c.build().eval() for c in cands}
    timings: dict[tuple[str, str], Callable[[], LatencyStats]] = {}
    for cand in cands:
        timings[cand.name, "openvino"] = partial(measure_ir, cand.files["xml"], "openvino", threads, settings=settings)
        timings[cand.name, "onnxruntime"] = partial(measure_ir, cand.files["onnx"], "onnxruntime", threads,
                                                    settings=settings)
        timings[cand.name, "torch"] = partial(measure, models[cand.name], resolution, "torch", threads,
                                              settings=settings)

    def record(r: int, key: tuple[str, str], stats: LatencyStats) -> None:
        out[key[0]][key[1]].append(stats.estimate_ms)
        log(f"backends round {r}/{rounds} {key[0]} {key[1]}: {stats.estimate_ms:.3f} ms")

    best = best_of_rounds(timings, rounds, each=record)
    for name, row in out.items():
        row.update({f"{b}_ms": best[name, b].estimate_ms for b in backends})
        row["torch_over_openvino"] = row["torch_ms"] / row["openvino_ms"]
        row["onnxruntime_over_openvino"] = row["onnxruntime_ms"] / row["openvino_ms"]
    return out


def machine_roofline(threads: int, quick: bool) -> dict[str, float]:
    """(d) the machine: best FP32 GEMM of torch and of OpenVINO, and copy bandwidth."""
    n = 1024 if quick else 2048
    with measuring():
        peaks = {b: gemm_peak_gflops(threads, n=n, repeats=10, backend=b) for b in ("torch", "openvino")}
        bandwidth = copy_bandwidth_gbs(threads, megabytes=128 if quick else 256)
    log(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"GEMM peak (n={n}): torch {peaks['torch']:.1f}, openvino {peaks['openvino']:.1f} GFLOP/s; "
        f"copy bandwidth {bandwidth:.1f} GB/s")
    return {"gemm_n": n, "gemm_torch_gflops": peaks["torch"], "gemm_openvino_gflops": peaks["openvino"],
            "peak_gflops": max(peaks.values()), "copy_bandwidth_gbs": bandwidth,
            "load_avg_1min_at_start": os.getloadavg()[0]}


def model_roofline(cand: Candidate, resolution: int, best_ms: float, machine: dict[str, float]) -> dict:
    model = cand.build().eval()
    flops = count_flops(model, resolution)
    traffic = min_traffic_bytes(model, resolution)
    gflops = achieved_gflops(flops / 2, best_ms)
    return {"params": sum(p.numel() for p in model.parameters()), "macs": flops // 2, "flops": flops,
            "min_traffic_bytes": traffic, "intensity_flop_per_byte": arithmetic_intensity(flops, traffic),
            "latency_ms": best_ms, "achieved_gflops": gflops,
            "fraction_of_peak": gflops / machine["peak_gflops"]}


# --- report ------------------------------------------------------------------------------------

def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machine = report["machine"]
    names = list(report["models"])
    roof = [report["models"][n]["roofline"] for n in names]
    peak, bw = machine["peak_gflops"], machine["copy_bandwidth_gbs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    xs = np.logspace(-1, 3, 200)
    ax1.loglog(xs, np.minimum(peak, bw * xs), "k-", label=f"roof: {peak:.0f} GFLOP/s, {bw:.1f} GB/s")
    for name, r in zip(names, roof, strict=True):  # a legend, not labels: the points cluster
        ax1.loglog(r["intensity_flop_per_byte"], r["achieved_gflops"], "o", label=name)
    ax1.set_xlabel("arithmetic intensity (FLOP / minimum FP32 bytes moved)")
    ax1.set_ylabel("achieved GFLOP/s (OpenVINO FP32)")
    ax1.set_title(f"Roofline, {report['settings']['device']}, {report['settings']['threads']} threads")
    ax1.legend(fontsize=7, loc="lower right")
    ax2.bar(range(len(names)), [r["achieved_gflops"] for r in roof], color="tab:blue")
    ax2.axhline(peak, color="k", ls="--", label=f"FP32 GEMM peak {peak:.0f} GFLOP/s")
    for i, r in enumerate(roof):
        ax2.text(i, r["achieved_gflops"], f"{100 * r['fraction_of_peak']:.0f}%\n{r['latency_ms']:.1f} ms",
                 ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("achieved GFLOP/s")
    ax2.set_title("Achieved vs peak (batch 1, 224x224)")
    ax2.set_ylim(0, peak * 1.25)
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"\nLatency benchmark: {s['device']}, {s['threads']} threads, {s['resolution']}x{s['resolution']}, "
          f"batch 1, FP32; OpenVINO {s['openvino']}, ONNX Runtime {s['onnxruntime']}, torch {s['torch']}")
    print(f"GEMM peak {report['machine']['peak_gflops']:.1f} GFLOP/s, copy bandwidth "
          f"{report['machine']['copy_bandwidth_gbs']:.1f} GB/s; quiet = other processes used "
          f"<= {QUIET_OTHERS_CPU} cores during the measurement\n")
    head = (f"{'model':22} {'ours ms':>8} {'b_app ms':>8} {'ratio':>6} {'paired':>6} {'quiet':>9} {'window':>6} "
            f"{'rep CV':>6} {'quiet CV':>10} {'b_app CV':>8} {'ORT/OV':>6} {'PT/OV':>6} {'GMACs':>6} "
            f"{'GFLOP/s':>7} {'%peak':>5}")
    print(head)
    print("-" * len(head))
    for name, m in report["models"].items():
        a, b, r = m["agreement"], m["backends"], m["roofline"]
        quiet = f"{_fmt(a['ratio_quiet_pairs'], '.3f')} ({a['quiet_pairs']})"
        quiet_cv = f"{_fmt(a['repeatability_cv_quiet'], '.1f', 100)}% ({a['quiet_measurements']})"
        print(f"{name:22} {a['ours_best_ms']:8.3f} {a['benchmark_app_best_ms']:8.3f} {a['ratio']:6.3f} "
              f"{a['ratio_paired_median']:6.3f} {quiet:>9} {a['ratio_matched']:6.3f} "
              f"{100 * a['repeatability_cv']:5.1f}% {quiet_cv:>10} "
              f"{100 * a['benchmark_app_cv']:7.1f}% {b['onnxruntime_over_openvino']:6.2f} "
              f"{b['torch_over_openvino']:6.2f} {r['macs'] / 1e9:6.3f} {r['achieved_gflops']:7.1f} "
              f"{100 * r['fraction_of_peak']:4.0f}%")
    t = report["summary"]
    print(f"\nagreement |ours/benchmark_app - 1|: estimate max {100 * t['max_agreement_error']:.1f}% "
          f"(paired median: max {100 * t['max_agreement_error_paired']:.1f}%, "
          f"{_fmt(t['max_agreement_error_quiet'], '.1f', 100)}% over quiet pairs); same-window median "
          f"max {100 * t['max_agreement_error_matched']:.1f}%, over all {t['matched_pairs']} pairs median "
          f"{t['matched_ratio_all_pairs_median']:.3f} / geomean {t['matched_ratio_all_pairs_geomean']:.3f} "
          f"(target {100 * AGREEMENT_TARGET:.0f}%); repeatability CV: max {100 * t['max_repeatability_cv']:.1f}% "
          f"over all, {_fmt(t['max_repeatability_cv_quiet'], '.1f', 100)}% over quiet measurements "
          f"(target {100 * REPEATABILITY_TARGET:.0f}%)")
    print("columns: ratio = best ours / best benchmark_app (paired rounds); paired = median per-round ratio; "
          "quiet = the same over quiet pairs (count); window = our median over a benchmark_app-length "
          "window / its median (median over rounds); (quiet) CV = of our estimate over rounds (count)")


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.latency_bench", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 presets + 1 sampled, shorter runs")
    p.add_argument("--presets", nargs="+", default=None, help=f"default: {' '.join(PRESETS)}")
    p.add_argument("--sampled", type=int, default=None, help="sampled architectures (default 2, quick 1)")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--rounds", type=int, default=None, help="our repeated measurements (default 5, quick 3)")
    p.add_argument("--bench-rounds", type=int, default=None, help="benchmark_app runs per model (default 2)")
    p.add_argument("--bench-seconds", type=int, default=None, help="benchmark_app -t (default 10, quick 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    quick = args.quick
    presets = args.presets or (QUICK_PRESETS if quick else PRESETS)
    sampled = args.sampled if args.sampled is not None else (1 if quick else 2)
    rounds = args.rounds or (3 if quick else 5)
    bench_rounds = min(rounds, args.bench_rounds or 2)
    seconds = args.bench_seconds or (5 if quick else 10)
    settings = MeasureSettings()
    started = time.time()

    cands = candidates(presets, sampled, args.seed)
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        for cand in cands:
            export(cand, args.resolution, Path(tmp))
        machine = machine_roofline(args.threads, quick)
        agree = agreement_and_repeatability(cands, args.threads, rounds, bench_rounds, seconds, settings)
        ratios = backend_ratios(cands, args.threads, args.resolution, 1, settings)
        # Peak again at the end: a slow period at the start would understate it.
        machine = max(machine, machine_roofline(args.threads, quick), key=lambda m: m["peak_gflops"])
    models = {}
    for cand in cands:
        best = min(agree[cand.name]["ours_best_ms"], ratios[cand.name]["openvino_ms"])
        models[cand.name] = {"kind": cand.kind, "arch_hash": cand.arch_hash, "agreement": agree[cand.name],
                             "backends": ratios[cand.name],
                             "roofline": model_roofline(cand, args.resolution, best, machine)}
    errors = [abs(m["agreement"]["ratio"] - 1) for m in models.values()]
    paired_errors = [abs(m["agreement"]["ratio_paired_median"] - 1) for m in models.values()]
    matched_errors = [abs(m["agreement"]["ratio_matched"] - 1) for m in models.values()]
    # Over every same-window pair of every model: a systematic difference between the two timers
    # shows here even when single pairs scatter with the machine's speed.
    all_matched = [p["ratio"] for m in models.values() for p in m["agreement"]["matched"]]
    cvs = [m["agreement"]["repeatability_cv"] for m in models.values()]
    quiet_errors = [abs(m["agreement"]["ratio_quiet_pairs"] - 1) for m in models.values()
                    if m["agreement"]["ratio_quiet_pairs"] is not None]
    quiet_cvs = [m["agreement"]["repeatability_cv_quiet"] for m in models.values()
                 if m["agreement"]["repeatability_cv_quiet"] is not None]
    report = {
        "settings": {"quick": quick, "threads": args.threads, "resolution": args.resolution,
                     "device": cpu_name(), "machine": describe_machine(), "precision": "fp32",
                     "openvino": runtime_version("openvino"),
                     "onnxruntime": runtime_version("onnxruntime"), "torch": runtime_version("torch"),
                     "rounds": rounds, "bench_rounds": bench_rounds, "benchmark_app_seconds": seconds,
                     "benchmark_app_flags":
                         f"-hint none -nstreams 1 -nthreads {args.threads} -nireq 1 -api sync -infer_precision f32",
                     "measure_settings": asdict(settings), "seconds_total": None},
        "machine": machine,
        "models": models,
        "summary": {"max_agreement_error": max(errors), "agreement_met": max(errors) <= AGREEMENT_TARGET,
                    "max_repeatability_cv": max(cvs), "repeatability_met": max(cvs) <= REPEATABILITY_TARGET,
                    "max_agreement_error_paired": max(paired_errors),
                    "max_agreement_error_matched": max(matched_errors),
                    "matched_ratio_all_pairs_median": float(np.median(all_matched)),
                    "matched_ratio_all_pairs_geomean": float(np.exp(np.mean(np.log(all_matched)))),
                    "matched_pairs": len(all_matched),
                    "agreement_matched_met": max(matched_errors) <= AGREEMENT_TARGET,
                    "max_agreement_error_quiet": max(quiet_errors) if quiet_errors else None,
                    "models_with_quiet_pairs": len(quiet_errors),
                    "max_repeatability_cv_quiet": max(quiet_cvs) if quiet_cvs else None,
                    "models_with_quiet_repeats": len(quiet_cvs),
                    "quiet_others_cpu": QUIET_OTHERS_CPU,
                    "targets": {"agreement": AGREEMENT_TARGET, "repeatability_cv": REPEATABILITY_TARGET}},
    }
    report["settings"]["seconds_total"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "latency_bench_quick" if quick else "latency_bench"
    atomic_write(args.out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    plot(report, args.out / f"{stem}.png")
    print_table(report)
    print(f"\nwrote {args.out / f'{stem}.json'} and {stem}.png in {report['settings']['seconds_total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
