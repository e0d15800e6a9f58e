"""Slow spells of a shared host: one compiled network timed in short bursts for a while.

On a VM that shares its physical cores, a whole network can run ~1.6x slower for seconds to tens
of seconds at a time, while /proc/stat shows no other process and no steal (the neighbour is on the
SMT siblings or the shared caches). A single timing of 1-3 s (nas.latency.measure) lands in such a
spell now and then, and two measurements of one model minutes apart then disagree by that much.
This bench records the trace: burst medians over time, the fast level (10th percentile), the slow
bursts (> SLOW_FACTOR x fast), the spells they form, the cores /proc/stat saw busy besides ours,
how far a window as long as one measurement lies from the fast level, and what the pace probe
(nas.latency._pace, read before each burst) reads in fast bursts and in slow ones: the evidence
for MeasureSettings.pace_factor.

    python -m bench.host_phases                      # 90 s, the CAS-ViT-style baseline at 224 px
Run it alone on the machine. JSON: bench/results/host_phases_<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python bench/host_phases.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.atomic import atomic_write
from nas.baselines import FAMILIES
from nas.cli import Parser
from nas.errors import run_cli
from nas.latency import default_threads, describe_machine
from nas.latency._pace import Probe
from nas.latency._timing import cpu_clock, others_cores

RESULTS = Path(__file__).resolve().parent / "results"
SLOW_FACTOR = 1.25  # a burst this much slower than the fast level is in a slow spell
WINDOW_S = 2.0  # about one nas.latency.measure timing (5 passes)


def trace(family: str, seconds: float, threads: int, resolution: int, burst: int) -> list[dict[str, float]]:
    """Burst medians of one compiled network over `seconds`: [{t, ms, probe_ms, others_cpu}]."""
    import torch

    from nas.export import convert_openvino, example_input
    from nas.latency._backends import _ov_step
    from nas.models import build_model

    torch.manual_seed(0)
    step = _ov_step(convert_openvino(build_model(FAMILIES[family](1.0, 1000)), resolution), threads,
                    example_input(resolution).numpy(), "fp32")
    for _ in range(20):
        step()
    gauge = Probe(threads, None)  # its own quiet pace: the trace's fastest reading
    rows = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        probe_ms = gauge.read()
        before = cpu_clock()
        times = [step() for _ in range(burst)]
        rows.append({"t": round(time.perf_counter() - started, 3), "ms": round(float(np.median(times)), 4),
                     "probe_ms": round(probe_ms, 5), "others_cpu": others_cores(before, cpu_clock())})
    return rows


def spells(rows: list[dict[str, float]], slow: np.ndarray) -> list[float]:
    """Durations (s) of runs of consecutive slow bursts."""
    out, start = [], None
    for row, is_slow in zip(rows, slow, strict=True):
        if is_slow and start is None:
            start = row["t"]
        elif not is_slow and start is not None:
            out.append(row["t"] - start)
            start = None
    if start is not None:
        out.append(rows[-1]["t"] - start)
    return out


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    ms = np.array([r["ms"] for r in rows])
    t = np.array([r["t"] for r in rows])
    fast = float(np.percentile(ms, 10))
    slow = ms > SLOW_FACTOR * fast
    durations = spells(rows, slow)
    windows = [float(np.median(ms[(t >= start) & (t < start + WINDOW_S)])) / fast - 1.0
               for start in np.arange(0.0, t[-1] - WINDOW_S, WINDOW_S / 2)]
    others = [r["others_cpu"] for r in rows if r["others_cpu"] is not None]
    probe = np.array([r["probe_ms"] for r in rows]) / min(r["probe_ms"] for r in rows)

    def spread(values: np.ndarray) -> list[float] | None:
        return [round(float(v), 3) for v in np.percentile(values, [5, 50, 95])] if len(values) else None

    return {"bursts": len(rows), "fast_ms": fast, "median_ms": float(np.median(ms)),
            "slow_share": float(slow.mean()),
            "slow_median_over_fast": float(np.median(ms[slow]) / fast) if slow.any() else None,
            "slow_spells": len(durations), "slow_spell_s_median": float(np.median(durations)) if durations else None,
            "slow_spell_s_max": float(max(durations)) if durations else None,
            "window_s": WINDOW_S, "window_over_fast_median": float(np.median(windows)),
            "window_over_fast_p90": float(np.percentile(windows, 90)), "window_over_fast_max": float(max(windows)),
            "windows_over_10pct": float(np.mean(np.array(windows) > 0.10)),
            "others_cpu_max": max(others) if others else None,
            "probe_over_quiet_fast_bursts_p5_p50_p95": spread(probe[~slow]),
            "probe_over_quiet_slow_bursts_p5_p50_p95": spread(probe[slow]),
            "others_cpu_during_slow_max": max((r["others_cpu"] or 0.0 for r, s in zip(rows, slow, strict=True) if s),
                                              default=None)}


def main(argv: list[str] | None = None) -> int:
    from bench.precision_bench import cpu_slug

    p = Parser(prog="python -m bench.host_phases", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--family", choices=sorted(FAMILIES), default="casvit", help="baseline network timed (x1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--burst", type=int, default=30, help="inferences per burst (its median is one point)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    machine = describe_machine()
    threads = args.threads or default_threads()
    load_before = os.getloadavg()
    rows = trace(args.family, args.seconds, threads, args.resolution, args.burst)
    summary = summarize(rows)
    result = {"machine": machine, "settings": {"family": args.family, "threads": threads,
                                               "resolution": args.resolution, "burst": args.burst,
                                               "seconds": args.seconds, "slow_factor": SLOW_FACTOR},
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "summary": summary, "trace": rows}
    out = args.out or RESULTS / f"host_phases_{cpu_slug(machine)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
