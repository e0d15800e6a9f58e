"""Latency predictor accuracy on held-out architectures (none used in its calibration).

For architectures sampled from the default space and from search_spaces/wide.yaml (which reaches
about 3x the 5 ms budget; all-attention architectures added on purpose), compare the predictor
(nas.latency.load_predictor, calibrated by `python -m nas.latency --calibrate --space ...`) with
the measured quiet-machine estimate (nas.latency.measure, default settings, no cache): share within
+-5% and +-10%, RMSE, Spearman, 99th percentile of the relative error. Writes
bench/results/predictor_<cpu>.json with the machine description and the load while measuring.

    python -m nas.latency --calibrate --space search_spaces/default.yaml --space search_spaces/wide.yaml
    python -m bench.predictor_bench                  # ~8 min: 40 + 40 archs
    python -m bench.predictor_bench --per-space 5    # a smoke run
Run both inside a quiet window (nothing else busy on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python bench/predictor_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.arch import Arch
from nas.latency import default_threads, describe_machine, load_predictor, measure
from nas.latency._predictor import sample_archs
from nas.mixers import mixer_info
from nas.space import DEFAULT_SPACE, SearchSpace, choices, load_space

RESULTS = Path(__file__).resolve().parent / "results"
WIDE_SPACE = DEFAULT_SPACE.parent / "wide.yaml"
SEED = 20261122  # held-out draws: another seed than the calibration's


def all_attention(arch: Arch) -> bool:
    return all(mixer_info(s.mixer).attention for s in arch.stages)


def attention_archs(space: SearchSpace, count: int, seed: int) -> list[Arch]:
    """Draws of `space` with every stage's mixer replaced by one of its attention mixers."""
    attention = [[m for m in choices(stage.mixer) if mixer_info(m).attention] for stage in space.stages]
    if not all(attention):
        return []

    def attention_only(params: dict[str, Any], rng: random.Random) -> None:
        for i, mixers in enumerate(attention):
            params[f"s{i}.mixer"] = rng.choice(mixers)

    return sample_archs(space, count, seed, adjust=attention_only)


def metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import spearmanr

    if not rows:
        return {"archs": 0}
    measured = np.array([r["measured_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    rel = predicted / measured - 1.0
    return {
        "archs": len(rows),
        "within_5": float(np.mean(np.abs(rel) <= 0.05)),
        "within_10": float(np.mean(np.abs(rel) <= 0.10)),
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "rmse_relative": float(np.sqrt(np.mean(rel ** 2))),
        "spearman": float(spearmanr(predicted, measured).statistic) if len(rows) > 2 else None,
        "p99_abs_relative": float(np.percentile(np.abs(rel), 99)),
        "p99_over_relative": float(np.percentile(np.maximum(rel, 0.0), 99)),
        "max_abs_relative": float(np.abs(rel).max()),
        "measured_ms_range": [float(measured.min()), float(measured.max())],
        "max_others_cpu": max((r["others_cpu"] or 0.0) for r in rows),
    }


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from bench.precision_bench import cpu_slug
    from nas.models import build_model

    p = argparse.ArgumentParser(prog="python -m bench.predictor_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-space", type=int, default=40, help="held-out archs drawn per space (default 40)")
    p.add_argument("--attention", type=int, default=8, help="extra all-attention archs from the wide space")
    p.add_argument("--threads", type=int, default=None, help=f"timing threads (default all cores, here "
                                                            f"{default_threads()})")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/predictor_<cpu>.json)")
    args = p.parse_args(argv)
    threads = args.threads or default_threads()
    predictor = load_predictor(threads=threads, resolution=args.resolution)
    calibration = set(predictor.archs)
    sets: dict[str, list[Arch]] = {}
    for i, (name, path) in enumerate((("default", DEFAULT_SPACE), ("wide", WIDE_SPACE))):
        space = load_space(path)
        drawn = [a for a in sample_archs(space, args.per_space * 2, SEED + i) if a.hash not in calibration]
        sets[name] = drawn[:args.per_space]
        if name == "wide" and args.attention:
            extra = [a for a in attention_archs(space, args.attention, SEED + 7) if a.hash not in calibration
                     and a.hash not in {b.hash for b in sets[name]}]
            sets[name] += extra
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    started = time.time()
    for name, archs in sets.items():
        for index, arch in enumerate(archs):
            t0 = time.perf_counter()
            prediction = predictor.predict(arch)
            predict_s = time.perf_counter() - t0
            stats = measure(build_model(arch), args.resolution, "openvino", threads)
            row = {"space": name, "arch_hash": arch.hash, "all_attention": all_attention(arch),
                   "mixers": [s.mixer for s in arch.stages], "predicted_ms": prediction.ms,
                   "measured_ms": stats.ms, "relative_error": prediction.ms / stats.ms - 1.0,
                   "regressed_units": prediction.regressed, "predict_seconds": predict_s,
                   "others_cpu": stats.others_cpu, "loaded": bool(getattr(stats, "loaded", False)),
                   "unsteady": stats.unsteady, "arch": arch.to_dict()}
            rows.append(row)
            _say(f"{name} {index + 1}/{len(archs)} {arch.hash}: predicted {prediction.ms:.2f} ms, measured "
                 f"{stats.ms:.2f} ms ({100 * row['relative_error']:+.1f}%)")
    load_after = os.getloadavg()
    summary = {name: metrics([r for r in rows if r["space"] == name]) for name in sets}
    summary["all_attention"] = metrics([r for r in rows if r["all_attention"]])
    summary["all"] = metrics(rows)
    result = {
        "machine": describe_machine(),
        "settings": {"backend": "openvino", "precision": "fp32", "threads": threads, "resolution": args.resolution,
                     "per_space": args.per_space, "attention_extra": args.attention, "seed": SEED,
                     "measure": "nas.latency.measure, default MeasureSettings, no cache (quiet-machine estimate)"},
        "load": {"loadavg_before": load_before, "loadavg_after": load_after,
                 "max_others_cpu": summary["all"].get("max_others_cpu"),
                 "loaded_measurements": sum(r["loaded"] for r in rows)},
        "seconds": round(time.time() - started, 1),
        "predictor": {"runtime_version": predictor.runtime_version, "machine": predictor.machine,
                      "spaces": predictor.spaces, "units": len(predictor.unit_ms),
                      "correction": predictor.correction, "margin": predictor.margin,
                      "calibration": {k: v for k, v in predictor.error.items() if k != "relative_errors"},
                      "calibration_archs": len(calibration)},
        "summary": summary,
        "rows": rows,
    }
    out = args.out or RESULTS / f"predictor_{cpu_slug(result['machine'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{'set':<14}{'archs':>6}{'+-5%':>8}{'+-10%':>8}{'RMSE ms':>9}{'Spearman':>10}{'p99 |e|':>9}")
    for name, m in summary.items():
        if m["archs"]:
            print(f"{name:<14}{m['archs']:>6}{100 * m['within_5']:>7.0f}%{100 * m['within_10']:>7.0f}%"
                  f"{m['rmse_ms']:>9.3f}{m['spearman'] or 0:>10.3f}{100 * m['p99_abs_relative']:>8.1f}%")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
