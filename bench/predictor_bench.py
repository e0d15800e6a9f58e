"""Latency predictor accuracy on held-out architectures (none used in its calibration).

For architectures sampled from the default space and from search_spaces/wide.yaml (which reaches
about 3x the 5 ms budget; all-attention architectures added on purpose), compare the predictor
(nas.latency.load_predictor, calibrated by `python -m nas.latency --calibrate --space ...`) with
the measured quiet-machine estimate (nas.latency.measure, default settings, no cache): share within
+-5% and +-10%, RMSE, Spearman, 99th percentile of the relative error. Each precision is a section
of bench/results/predictor_<cpu>.json (a run of one precision keeps the other's section), with the
machine description and the load while measuring.

    python -m nas.latency --calibrate --space search_spaces/default.yaml --space search_spaces/wide.yaml
    python -m bench.predictor_bench                  # ~6 min: 20 + 20 + 8 archs
    python -m nas.latency --calibrate --precision int8 --space ... --space ...
    python -m bench.predictor_bench --precision int8 --per-space 8 --attention 4
Run them inside a quiet window (nothing else busy on the machine).
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
from nas.atomic import atomic_write
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


def search_check(run_dir: Path, wall_s: float) -> dict[str, Any]:
    """Where a finished search's wall time went (its trials.csv): trials over budget (measured, or
    rejected by prediction unbuilt) against the whole wall time `wall_s` of the search command."""
    import csv

    with open(run_dir / "trials.csv", newline="", encoding="utf-8") as handle:
        trials = [t for t in csv.DictReader(handle) if t["state"] == "COMPLETE"]
    rejected = [t for t in trials if t["stop_reason"].startswith("rejected by prediction")]
    measured_over = [t for t in trials if t["feasible"].lower() in ("false", "0", "no")
                     and not t["stop_reason"].startswith("rejected by prediction")]
    over_s = sum(float(t["seconds"] or 0) for t in rejected + measured_over)
    summary = (run_dir / "summary.md").read_text(encoding="utf-8") if (run_dir / "summary.md").is_file() else ""
    return {"run": str(run_dir), "wall_seconds": wall_s, "trials": len(trials),
            "rejected_by_prediction": len(rejected), "measured_over_budget": len(measured_over),
            "seconds_on_over_budget": round(over_s, 2), "share_of_wall_time": over_s / wall_s,
            "rejected_seconds_max": max((float(t["seconds"] or 0) for t in rejected), default=None),
            "rejected_seconds_mean": (sum(float(t["seconds"] or 0) for t in rejected) / len(rejected)
                                      if rejected else None),
            "summary_lines": [line for line in summary.splitlines() if "rejected" in line or "budget" in line]}


def rescore(args: argparse.Namespace) -> int:
    """The saved measurements of held-out archs against the current calibration's predictions (rows
    of archs the calibration has since timed are dropped: they are no longer held out)."""
    from bench.precision_bench import cpu_slug

    threads = args.threads or default_threads()
    predictor = load_predictor(threads=threads, resolution=args.resolution, precision=args.precision)
    old = json.loads(args.rescore.read_text())["precisions"][args.precision]
    calibration = set(predictor.archs)
    rows = []
    for row in old["rows"]:
        if row["arch_hash"] in calibration:
            continue
        predicted = predictor.predict(Arch.from_dict(row["arch"])).ms
        rows.append({**row, "predicted_ms": predicted, "relative_error": predicted / row["measured_ms"] - 1.0})
    quiet = [r for r in rows if not r["loaded"]]
    summary = {name: metrics([r for r in quiet if r["space"] == name]) for name in ("default", "wide")}
    summary["all_attention"] = metrics([r for r in quiet if r["all_attention"]])
    summary["all"] = metrics(quiet)
    machine = describe_machine()
    out = args.out or RESULTS / f"predictor_{cpu_slug(machine)}.json"
    result = json.loads(out.read_text()) if out.is_file() else {"machine": machine}
    result.setdefault("precisions", {})[f"{args.precision}_rescored"] = {
        "measured_in": str(args.rescore), "measured_settings": old["settings"], "measured_load": old["load"],
        "predictor": {"spaces": predictor.spaces, "units": len(predictor.unit_ms), "correction": predictor.correction,
                      "margin": predictor.margin,
                      "calibration": {k: v for k, v in predictor.error.items() if k != "relative_errors"},
                      "calibration_archs": len(calibration)},
        "summary": summary, "rows": rows}
    atomic_write(out, json.dumps(result, indent=1))
    for name, m in summary.items():
        if m["archs"]:
            print(f"{name:<14}{m['archs']:>6}{100 * m['within_5']:>7.0f}%{100 * m['within_10']:>7.0f}%"
                  f"{m['rmse_ms']:>9.3f}{m['spearman'] or 0:>10.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from bench.precision_bench import cpu_slug
    from nas.models import build_model

    p = argparse.ArgumentParser(prog="python -m bench.predictor_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-space", type=int, default=20, help="held-out archs drawn per space (default 20)")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or int8 (NNCF-quantized IR)")
    p.add_argument("--attention", type=int, default=8, help="extra all-attention archs from the wide space")
    p.add_argument("--threads", type=int, default=None, help=f"timing threads (default all cores, here "
                                                            f"{default_threads()})")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/predictor_<cpu>.json)")
    p.add_argument("--search-run", type=Path, default=None,
                   help="instead: record where a finished search's wall time went (its run folder)")
    p.add_argument("--search-wall-s", type=float, default=None, help="with --search-run: the search's wall seconds")
    p.add_argument("--search-note", default="", help="with --search-run: how the search was run")
    p.add_argument("--rescore", type=Path, default=None,
                   help="instead: predict the measured rows of an earlier result JSON (its --precision section) "
                        "with the current calibration, without timing; written as section '<precision>_rescored'")
    args = p.parse_args(argv)
    if args.rescore is not None:
        return rescore(args)
    if args.search_run is not None:
        machine = describe_machine()
        out = args.out or RESULTS / f"predictor_{cpu_slug(machine)}.json"
        result = json.loads(out.read_text()) if out.is_file() else {"machine": machine}
        result["search"] = {**search_check(args.search_run, args.search_wall_s), "note": args.search_note}
        atomic_write(out, json.dumps(result, indent=1))
        print(json.dumps(result["search"], indent=1))
        return 0
    threads = args.threads or default_threads()
    predictor = load_predictor(threads=threads, resolution=args.resolution, precision=args.precision)
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
            stats = measure(build_model(arch), args.resolution, "openvino", threads, precision=args.precision)
            row = {"space": name, "arch_hash": arch.hash, "all_attention": all_attention(arch),
                   "mixers": [s.mixer for s in arch.stages], "predicted_ms": prediction.ms,
                   "measured_ms": stats.ms, "relative_error": prediction.ms / stats.ms - 1.0,
                   "regressed_units": prediction.regressed, "predict_seconds": predict_s,
                   "others_cpu": stats.others_cpu, "loaded": bool(getattr(stats, "loaded", False)),
                   "unsteady": stats.unsteady, "arch": arch.to_dict()}
            rows.append(row)
            _say(f"{args.precision} {name} {index + 1}/{len(archs)} {arch.hash}: predicted {prediction.ms:.2f} ms, "
                 f"measured {stats.ms:.2f} ms ({100 * row['relative_error']:+.1f}%)")
    load_after = os.getloadavg()
    # A measurement other processes kept loaded throughout is no quiet-machine estimate: kept in the
    # rows (flagged), left out of the metrics.
    quiet = [r for r in rows if not r["loaded"]]
    summary = {name: metrics([r for r in quiet if r["space"] == name]) for name in sets}
    summary["all_attention"] = metrics([r for r in quiet if r["all_attention"]])
    summary["all"] = metrics(quiet)
    section = {
        "settings": {"backend": "openvino", "precision": args.precision, "threads": threads,
                     "resolution": args.resolution,
                     "per_space": args.per_space, "attention_extra": args.attention, "seed": SEED,
                     "measure": "nas.latency.measure, default MeasureSettings, no cache (quiet-machine estimate)"},
        "load": {"loadavg_before": load_before, "loadavg_after": load_after,
                 "max_others_cpu_in_metrics": summary["all"].get("max_others_cpu"),
                 "max_others_cpu": max((r["others_cpu"] or 0.0) for r in rows),
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
    machine = describe_machine()
    out = args.out or RESULTS / f"predictor_{cpu_slug(machine)}.json"
    result = json.loads(out.read_text()) if out.is_file() else {}
    if "precisions" not in result:  # a file of the one-precision layout: start afresh
        result = {key: value for key, value in result.items() if key == "search"}
    result.setdefault("precisions", {})[args.precision] = section
    result["machine"] = machine
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(result, indent=1))
    print(f"{'set':<14}{'archs':>6}{'+-5%':>8}{'+-10%':>8}{'RMSE ms':>9}{'Spearman':>10}{'p99 |e|':>9}")
    for name, m in summary.items():
        if m["archs"]:
            print(f"{name:<14}{m['archs']:>6}{100 * m['within_5']:>7.0f}%{100 * m['within_10']:>7.0f}%"
                  f"{m['rmse_ms']:>9.3f}{m['spearman'] or 0:>10.3f}{100 * m['p99_abs_relative']:>8.1f}%")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
