"""Latency predictor accuracy on held-out architectures (none used in its calibration).

For architectures sampled from the default space and from search_spaces/wide.yaml (which reaches
past 3x the 5 ms budget; all-attention architectures added on purpose), compare the predictor
(nas.latency.load_predictor, calibrated by `python -m nas.latency --calibrate --space ...`) with
the measured quiet-machine estimate (converted as nas.latency.measure converts, timed as the
calibration times, in --rounds short round-robin rounds over all the archs, the fastest quiet round
kept: a shared host has slow spells that slow networks ~1.5x): share within
+-5% and +-10%, RMSE, Spearman, 99th percentile of the relative error. Each precision is a section
of bench/results/predictor_<cpu>.json (a run of one precision keeps the other's section), with the
machine description and the load while measuring.

A shared host's quiet speed also drifts by several percent over minutes, so a calibration made in
one window is off by a common factor in another: four more architectures per space (not scored) are
timed in the same rounds, and the summary's `anchored` section reports the predictions rescaled to
them (Predictor.anchored, as the search rescales to its space fit's timings) beside the raw ones.

The reference itself is noisy: a slow phase of the host can outlast a whole sweep's rounds of an
architecture (on the AMD EPYC VM one sweep read 2.11 ms for an arch another read at 1.70 ms, every
round of it slow). `--again` measures the section's architectures once more (run it in another
window), the reference becomes the fastest of the runs (the same rule as within a sweep; a run's
fastest round was the most repeatable of the estimators tried, see README), and the summary's
`repeatability` says how far two runs of one architecture lie apart. Architectures the calibration
has since timed are left out of the metrics (no longer held out); `--rescore` recomputes the
predictions and metrics of the saved rows against the current calibration without timing.

    python -m bench.predictor_bench                  # 20 + 20 + 8 archs + 8 anchors, 10 rounds: ~13 min
    python -m bench.predictor_bench --again          # the same archs again (repeatability)
    python -m nas.latency --calibrate --space search_spaces/default.yaml --space search_spaces/wide.yaml
    python -m bench.predictor_bench --rescore        # predictions of the new calibration
    python -m nas.latency --calibrate --precision int8 --space ... --space ...
    python -m bench.predictor_bench --precision int8 --per-space 8 --attention 4
Run the timing commands inside a quiet window (nothing else busy on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python bench/predictor_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.arch import Arch
from nas.atomic import atomic_write
from nas.cli import Parser
from nas.errors import run_cli
from nas.latency import Predictor, default_threads, describe_machine, load_predictor
from nas.latency._predictor import ARCH_SETTINGS, ROUNDS, sample_archs
from nas.mixers import mixer_info
from nas.space import DEFAULT_SPACE, SearchSpace, choices, load_space

RESULTS = Path(__file__).resolve().parent / "results"
WIDE_SPACE = DEFAULT_SPACE.parent / "wide.yaml"
SEED = 20261122  # held-out draws: another seed than the calibration's
ANCHORS = 4  # per space: timed with the held-out archs, not scored (see held_out_sets)
# Timed as the calibration times (short rounds, no waiting for slow spells: the rounds step over them)
REFERENCE_SETTINGS = ARCH_SETTINGS


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


def metrics(rows: list[dict[str, Any]], reference: str = "measured_ms") -> dict[str, Any]:
    from scipy.stats import spearmanr

    if not rows:
        return {"archs": 0}
    measured = np.array([r[reference] for r in rows])
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
        "max_others_cpu": max(max(run["others_cpu"] or 0.0 for run in r["runs"] if not run["loaded"]) for r in rows),
    }


def repeatability(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How far the first two quiet runs of one architecture lie apart (second / first - 1), and the
    spread of all its quiet runs (slowest / fastest - 1)."""
    quiet = [[run["ms"] for run in r["runs"] if not run["loaded"]] for r in rows]
    diff = np.array([q[1] / q[0] - 1.0 for q in quiet if len(q) >= 2])
    if not len(diff):
        return {"archs": 0}
    spread = np.array([max(q) / min(q) - 1.0 for q in quiet if len(q) >= 2])
    return {"archs": len(diff), "median_relative": float(np.median(diff)),
            "median_abs_relative": float(np.median(np.abs(diff))), "max_abs_relative": float(np.abs(diff).max()),
            "over_5": float(np.mean(np.abs(diff) > 0.05)), "over_10": float(np.mean(np.abs(diff) > 0.10)),
            "rms_relative": float(np.sqrt(np.mean(diff ** 2))),
            "runs": max(len(q) for q in quiet), "spread_median": float(np.median(spread)),
            "spread_max": float(spread.max()), "spread_over_10": float(np.mean(spread > 0.10))}


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


def held_out_sets(per_space: int, attention: int, anchors: int = ANCHORS) -> dict[str, list[Arch]]:
    """The held-out draws (fixed seeds): `per_space` per space, plus `attention` all-attention wide ones;
    and `anchors` more per space (set "anchor"), timed in the same rounds but not scored: they re-anchor
    the predictor to the sweep's time (Predictor.anchored), as the search's space fit does."""
    sets: dict[str, list[Arch]] = {"anchor": []}
    for i, (name, path) in enumerate((("default", DEFAULT_SPACE), ("wide", WIDE_SPACE))):
        space = load_space(path)
        sets[name] = sample_archs(space, per_space, SEED + i)
        if name == "wide" and attention:
            sets[name] += [a for a in attention_archs(space, attention, SEED + 7)
                           if a.hash not in {b.hash for b in sets[name]}]
        held = {a.hash for a in sets[name]}
        extra = sample_archs(space, anchors + per_space, SEED + 50 + i)
        sets["anchor"] += [a for a in extra if a.hash not in held][:anchors]
    return sets


def prepared_timing(arch: Arch, precision: str, threads: int, resolution: int) -> Callable[[], Any]:
    """`arch` converted as nas.latency.measure converts it and compiled once; each call of the result
    times it once as the calibration times (REFERENCE_SETTINGS) and returns its LatencyStats."""
    from nas.latency._incontext import convert, timing_step
    from nas.latency._measure import _model_key, _time

    step = timing_step(convert(arch, resolution, precision), threads, precision)
    key = _model_key(arch.hash, resolution, "openvino", threads, precision)
    return lambda: _time(step, REFERENCE_SETTINGS, key)


def measure_sweep(archs: list[Arch], precision: str, threads: int, resolution: int,
                  rounds: int) -> list[dict[str, Any]]:
    """One run per arch: each built and converted as the search converts it, compiled once, then timed
    (nas.latency's timing, REFERENCE_SETTINGS) in `rounds` round-robin rounds over all of them; a run's
    ms is its fastest round. A shared host runs whole networks up to ~1.6x slower for seconds to tens of
    seconds; rounds a sweep apart meet different spells, so the fastest estimates the quiet machine."""
    from nas.latency import best_of_rounds

    steps, prepared_s = {}, {}
    for index, arch in enumerate(archs):
        started = time.perf_counter()
        steps[index] = prepared_timing(arch, precision, threads, resolution)
        prepared_s[index] = round(time.perf_counter() - started, 2)
    every: dict[int, list[Any]] = {i: [] for i in steps}

    def each(round_number: int, index: int, stats: Any) -> None:
        every[index].append(stats)
        _say(f"{precision} round {round_number}/{rounds} {index + 1}/{len(archs)} {archs[index].hash}: "
             f"{stats.ms:.2f} ms{' (loaded)' if stats.loaded else ''}")

    best_of_rounds(steps, rounds, ms=lambda stats: stats.ms, each=each)
    runs = []
    for index in steps:
        quiet = [st for st in every[index] if not st.loaded] or every[index]
        best = min(quiet, key=lambda st: st.ms)
        runs.append({"ms": best.ms, "others_cpu": best.others_cpu, "loaded": bool(best.loaded),
                     "unsteady": best.unsteady, "at": time.time(), "prepare_seconds": prepared_s[index],
                     "rounds_ms": [round(st.ms, 4) for st in every[index]]})
    return runs


def _reference(row: dict[str, Any], rule: str) -> None:
    """The row's reference by `rule`: "fastest", the fastest of its quiet runs (a run is already its
    fastest round: the quiet-machine estimate over every round of every sweep), or "mean", the mean of
    its quiet runs (files made before 2026-12-06). All runs' fastest when every run was loaded."""
    quiet = [run["ms"] for run in row["runs"] if not run["loaded"]]
    row["loaded"] = not quiet
    if not quiet:
        row["measured_ms"] = min(run["ms"] for run in row["runs"])
    else:
        row["measured_ms"] = float(min(quiet) if rule == "fastest" else np.mean(quiet))


def score(section: dict[str, Any], predictor: Predictor) -> None:
    """Predict every row with `predictor` and summarise, in place. Rows of archs the calibration timed
    and rows without a quiet run are kept (flagged) but left out of the metrics; so are the anchors:
    the "anchor" set's rows, and with `settings.anchor_rows` = K the first K rows of each space (for
    sweeps made without an anchor set; the raw and anchored metrics then cover the same rows)."""
    calibration = set(predictor.archs)
    taken, anchor_rows = {"default": 0, "wide": 0}, section["settings"].get("anchor_rows", 0)
    for row in section["rows"]:
        row["anchor"] = row["space"] == "anchor" or taken.get(row["space"], 0) < anchor_rows
        if row["space"] in taken:
            taken[row["space"]] += 1
    rule = section["settings"].setdefault("reference", "mean")  # files without the key were scored by the mean
    for row in section["rows"]:
        _reference(row, rule)
        started = time.perf_counter()
        prediction = predictor.predict(Arch.from_dict(row["arch"]))
        row.update(predicted_ms=prediction.ms, relative_error=prediction.ms / row["measured_ms"] - 1.0,
                   regressed_units=prediction.regressed, predict_seconds=time.perf_counter() - started,
                   in_calibration=row["arch_hash"] in calibration)
    used = [r for r in section["rows"] if not r["loaded"] and not r["in_calibration"] and not r["anchor"]]
    spaces = sorted({r["space"] for r in used}, key=["default", "wide"].index)
    summary: dict[str, Any] = {name: metrics([r for r in used if r["space"] == name]) for name in spaces}
    summary["all_attention"] = metrics([r for r in used if r["all_attention"]])
    summary["all"] = metrics(used)
    anchors = [(Arch.from_dict(r["arch"]), r["measured_ms"])
               for r in section["rows"] if r["anchor"] and not r["loaded"]]
    anchored = predictor.anchored(anchors)
    if anchored is not predictor:  # the same predictions, rescaled to the sweep's time by the anchor rows
        for row in section["rows"]:
            row["predicted_anchored_ms"] = anchored.predict(Arch.from_dict(row["arch"])).ms
        moved = [{**r, "predicted_ms": r["predicted_anchored_ms"]} for r in used]
        summary["anchored"] = {"anchor": anchored.error["anchor"],
                               **{name: metrics([r for r in moved if r["space"] == name]) for name in spaces},
                               "all_attention": metrics([r for r in moved if r["all_attention"]])}
    for run in (0, 1):  # against one run alone (rows with that run quiet)
        alone = [{**r, "run_ms": r["runs"][run]["ms"]} for r in used
                 if len(r["runs"]) > run and not r["runs"][run]["loaded"]]
        if alone and any(len(r["runs"]) > 1 for r in used):
            summary[f"against_run_{run + 1}"] = {name: metrics([r for r in alone if r["space"] == name], "run_ms")
                                                 for name in spaces}
    summary["repeatability"] = {name: repeatability([r for r in used if r["space"] == name]) for name in spaces}
    section["summary"] = summary
    section["predictor"] = {"runtime_version": predictor.runtime_version, "machine": predictor.machine,
                            "spaces": predictor.spaces, "units": len(predictor.unit_ms),
                            "model": getattr(predictor, "model", None), "correction": predictor.correction,
                            "margin": predictor.margin,
                            "created_at": predictor.created_at,
                            "calibration": {k: v for k, v in predictor.error.items() if k != "relative_errors"},
                            "calibration_archs": len(calibration)}


def _table(summary: dict[str, Any]) -> None:
    print(f"{'set':<14}{'archs':>6}{'+-5%':>8}{'+-10%':>8}{'RMSE ms':>9}{'Spearman':>10}{'p99 |e|':>9}{'range ms':>14}")
    for name, m in summary.items():
        if isinstance(m, dict) and m.get("archs") and "within_10" in m:
            lo, hi = m["measured_ms_range"]
            print(f"{name:<14}{m['archs']:>6}{100 * m['within_5']:>7.0f}%{100 * m['within_10']:>7.0f}%"
                  f"{m['rmse_ms']:>9.3f}{m['spearman'] or 0:>10.3f}{100 * m['p99_abs_relative']:>8.1f}%"
                  f"{lo:>7.2f}-{hi:<6.2f}")
    if "anchored" in summary:
        anchor = summary["anchored"]["anchor"]
        print(f"anchored to {anchor['archs']} archs timed in the same sweeps (predictions x{anchor['factor']:.3f}):")
        _table({name: m for name, m in summary["anchored"].items() if name != "anchor"})
    for name, r in summary.get("repeatability", {}).items():
        if r.get("archs"):
            print(f"repeatability {name}: {r['archs']} archs, run 2 / run 1 median {100 * r['median_relative']:+.1f}%, "
                  f"|.| median {100 * r['median_abs_relative']:.1f}% max {100 * r['max_abs_relative']:.1f}%, "
                  f"{100 * r['over_5']:.0f}% over 5%; slowest / fastest of {r['runs']} runs: median "
                  f"{100 * r['spread_median']:.1f}%, max {100 * r['spread_max']:.1f}%")


def main(argv: list[str] | None = None) -> int:
    from bench.precision_bench import cpu_slug

    p = Parser(prog="python -m bench.predictor_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-space", type=int, default=20, help="held-out archs drawn per space (default 20)")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or int8 (NNCF-quantized IR)")
    p.add_argument("--attention", type=int, default=8, help="extra all-attention archs from the wide space")
    p.add_argument("--threads", type=int, default=None, help=f"timing threads (default all cores, here "
                                                            f"{default_threads()})")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help=f"timing rounds over all archs per sweep; a run is an arch's fastest round (default {ROUNDS})")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/predictor_<cpu>.json)")
    p.add_argument("--again", action="store_true",
                   help="measure the archs of the --out file's section once more (repeatability; reference = mean)")
    p.add_argument("--rescore", action="store_true",
                   help="no timing: predict the section's rows with the current calibration and summarise again")
    p.add_argument("--anchor-rows", type=int, default=None,
                   help="with --rescore: the first N rows of each space anchor the predictor instead of being "
                        "scored (sweeps made without anchor archs; kept in the file's settings)")
    p.add_argument("--reference", choices=("fastest", "mean"), default=None,
                   help="an arch's reference over its sweeps: the fastest run (new sections) or their mean (the rule "
                        "of sections made before it was an option); kept in the file's settings")
    p.add_argument("--search-run", type=Path, default=None,
                   help="instead: record where a finished search's wall time went (its run folder)")
    p.add_argument("--search-wall-s", type=float, default=None, help="with --search-run: the search's wall seconds")
    p.add_argument("--search-note", default="", help="with --search-run: how the search was run")
    args = p.parse_args(argv)
    machine = describe_machine()
    out = args.out or RESULTS / f"predictor_{cpu_slug(machine)}.json"
    result = json.loads(out.read_text()) if out.is_file() else {}
    if args.search_run is not None:
        result["search"] = {**search_check(args.search_run, args.search_wall_s), "note": args.search_note}
        atomic_write(out, json.dumps(result, indent=1))
        print(json.dumps(result["search"], indent=1))
        return 0
    threads = args.threads or default_threads()
    predictor = load_predictor(threads=threads, resolution=args.resolution, precision=args.precision)
    section = result.get("precisions", {}).get(args.precision)
    if (args.again or args.rescore) and not (section and section.get("rows") and "runs" in section["rows"][0]):
        print(f"error: {out} has no {args.precision} section with runs to re-measure or rescore", file=sys.stderr)
        return 2
    if not args.rescore:
        if args.again:
            todo = [(row, Arch.from_dict(row["arch"])) for row in section["rows"]]
        else:
            rows = [{"space": name, "arch_hash": arch.hash, "all_attention": all_attention(arch),
                     "mixers": [s.mixer for s in arch.stages], "runs": [], "arch": arch.to_dict()}
                    for name, archs in held_out_sets(args.per_space, args.attention).items() for arch in archs]
            section = {"settings": {"backend": "openvino", "precision": args.precision, "threads": threads,
                                    "resolution": args.resolution, "per_space": args.per_space,
                                    "attention_extra": args.attention, "seed": SEED,
                                    "reference": args.reference or "fastest",
                                    "spaces": {
                                        "default": str(DEFAULT_SPACE.relative_to(DEFAULT_SPACE.parents[1])),
                                        "wide": str(WIDE_SPACE.relative_to(WIDE_SPACE.parents[1]))},
                                    "measure": "converted as nas.latency.measure converts, compiled once per sweep, "
                                               "nas.latency timing as the calibration times (one short attempt, "
                                               "no pace probe) in --rounds "
                                               "round-robin rounds, a run = the fastest quiet round "
                                               "(quiet-machine estimate); reference = the fastest run"},
                       "sweeps": [], "rows": rows}
            todo = [(row, Arch.from_dict(row["arch"])) for row in rows]
        load_before, started = os.getloadavg(), time.time()
        runs = measure_sweep([arch for _, arch in todo], args.precision, threads, args.resolution, args.rounds)
        for (row, arch), run in zip(todo, runs, strict=True):
            row["runs"].append(run)
            _say(f"{args.precision} {row['space']} {arch.hash}: {run['ms']:.2f} ms (best of {args.rounds})"
                 f"{' (loaded)' if run['loaded'] else ''}; predicted {predictor.predict(arch).ms:.2f} ms")
        section["sweeps"].append({"started_at": started, "seconds": round(time.time() - started, 1),
                                  "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                                  "max_others_cpu": max((r["runs"][-1]["others_cpu"] or 0.0) for r, _ in todo),
                                  "loaded_measurements": sum(r["runs"][-1]["loaded"] for r, _ in todo),
                                  "rounds": args.rounds, "note": os.environ.get("PREDICTOR_BENCH_NOTE", "")})
    if args.anchor_rows is not None:
        section["settings"]["anchor_rows"] = args.anchor_rows
    if args.reference is not None:
        section["settings"]["reference"] = args.reference
    score(section, predictor)
    if "precisions" not in result:  # a file of the one-precision layout: start afresh
        result = {key: value for key, value in result.items() if key == "search"}
    result.setdefault("precisions", {})[args.precision] = section
    result["machine"] = machine
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(result, indent=1))
    _table(section["summary"])
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
