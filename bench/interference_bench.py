"""Interference benchmark: does a CPU hog started during timing corrupt the recorded latency?

The reference model (preset efficientvit_b0, 224x224, OpenVINO FP32, batch 1, 2 threads) is timed
with the sampling loop of `nas.latency` under the machine lock, side by side in one run:
  quiet       nothing else running;
  transient   a busy-loop process per core started 0.2 s into the measurement, for `--transient` s;
  persistent  the same hog for the whole measurement (waits included);
each with the interference logic on (`MeasureSettings()` defaults: wait for a quiet CPU, discard
loaded attempts, flag a measurement that stays loaded) and off (`max_others_cpu=0`, the old
behaviour). Target: every recorded latency within 10% of quiet, or flagged `loaded`.
Prints a table; writes bench/results/interference_bench_<cpu>.json (`_quick` with --quick).

    python -m bench.interference_bench --quick   # ~1 min: 10 s wait cap, one round
    python -m bench.interference_bench           # ~4-5 min: default 60 s wait cap, two rounds
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/interference_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.atomic import atomic_write
from nas.cli import Parser
from nas.errors import run_cli
from nas.latency import MeasureSettings, _timing, add_wait_hook, describe_machine, remove_wait_hook, runtime_version
from nas.machine_lock import measuring

RESULTS = Path(__file__).resolve().parent / "results"
PRESET, RESOLUTION, THREADS, BACKEND, PRECISION = "efficientvit_b0", 224, 2, "openvino", "fp32"
TOLERANCE = 0.10
_BUSY = "while True: pass"


@contextmanager
def cpu_hog(processes: int | None = None) -> Iterator[list[subprocess.Popen]]:
    """A Python busy-loop process per core (or `processes`), killed on exit."""
    hogs = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(processes or os.cpu_count() or 1)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


class DelayedHog:
    """Starts `cpu_hog()` after `delay` s in a background thread; it runs `duration` s (None: until stop)."""

    def __init__(self, delay: float, duration: float | None) -> None:
        self.delay, self.duration = delay, duration
        self._stop = threading.Event()
        self.ran_s = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        started = time.perf_counter()
        with cpu_hog():
            self._stop.wait(self.duration)
        self.ran_s = time.perf_counter() - started

    def __enter__(self) -> DelayedHog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_once(step: Any, settings: MeasureSettings, hog: DelayedHog | None) -> dict[str, Any]:
    """One measurement as nas.latency records it (machine lock, sampling loop), with the load around it."""
    _timing._loaded_streak[0] = 0  # each scenario stands alone: no wait shortened by an earlier loaded one
    waits: list[tuple[float, float]] = []

    def on_wait(others: float, waited: float) -> None:
        waits.append((round(others, 2), round(waited, 1)))
        print(f"    {_timing.wait_line(others, waited)}", file=sys.stderr)

    add_wait_hook(on_wait)
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        with measuring():
            if hog is None:
                result = _timing.sample(step, settings, threads=THREADS)
            else:
                with hog:
                    result = _timing.sample(step, settings, threads=THREADS)
    finally:
        remove_wait_hook(on_wait)
    return {"estimate_ms": result.summary.estimate_ms, "median_ms": result.summary.median_ms,
            "pass_cv": result.summary.pass_cv, "loaded": result.loaded, "others_cpu": result.others_cpu,
            "waited_s": round(result.waited_s, 2), "attempts": result.attempts,
            "seconds": round(time.perf_counter() - started, 2), "hog_ran_s": round(hog.ran_s, 2) if hog else 0.0,
            "wait_reports": waits, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def run(rounds: int, settings: MeasureSettings, transient_s: float) -> dict[str, Any]:
    from nas.latency._backends import model_runner
    from nas.models import build_model
    from nas.presets import load_preset

    modes = {"new": settings, "old": replace(settings, max_others_cpu=0.0)}
    scenarios = {"quiet": lambda: None, "transient": lambda: DelayedHog(0.2, transient_s),
                 "persistent": lambda: DelayedHog(0.2, None)}
    records: list[dict[str, Any]] = []
    with model_runner(BACKEND, build_model(load_preset(PRESET)), RESOLUTION, THREADS, PRECISION) as step:
        for r in range(1, rounds + 1):
            for scenario, make_hog in scenarios.items():
                for mode, mode_settings in modes.items():
                    print(f"round {r}: {scenario}, {mode} ...", file=sys.stderr)
                    record = {"round": r, "scenario": scenario, "mode": mode,
                              **measure_once(step, mode_settings, make_hog())}
                    records.append(record)
                    time.sleep(1.0)  # let the killed hogs go before the next scenario
    quiet = statistics.median(x["estimate_ms"] for x in records if x["scenario"] == "quiet")
    for x in records:
        x["ratio_to_quiet"] = x["estimate_ms"] / quiet
        x["ok"] = bool(x["loaded"] or abs(x["ratio_to_quiet"] - 1) <= TOLERANCE)
    return {"quiet_ms": quiet, "records": records}


def print_table(report: dict[str, Any]) -> None:
    print(f"{PRESET} {RESOLUTION}px {BACKEND} {PRECISION} {THREADS} threads; quiet {report['quiet_ms']:.3f} ms "
          f"(median of the quiet measurements); target: within {TOLERANCE:.0%} of quiet or flagged")
    print(f"{'round':>5} {'scenario':<10} {'mode':<4} {'ms':>8} {'ratio':>6} {'loaded':>6} {'others':>6} "
          f"{'waited':>7} {'tries':>5} {'ok':>3}")
    for x in report["records"]:
        others = "-" if x["others_cpu"] is None else f"{x['others_cpu']:.2f}"
        print(f"{x['round']:>5} {x['scenario']:<10} {x['mode']:<4} {x['estimate_ms']:>8.3f} "
              f"{x['ratio_to_quiet']:>6.2f} {str(x['loaded']):>6} {others:>6} {x['waited_s']:>6.1f}s "
              f"{x['attempts']:>5} {'yes' if x['ok'] else 'NO':>3}")
    for mode in ("new", "old"):
        mine = [x for x in report["records"] if x["mode"] == mode]
        print(f"{mode}: {sum(x['ok'] for x in mine)}/{len(mine)} within {TOLERANCE:.0%} of quiet or flagged")


def main(argv: list[str] | None = None) -> int:
    from bench.precision_bench import cpu_slug

    p = Parser(prog="python -m bench.interference_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one round, 10 s wait cap (development)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of all scenarios (default 2, --quick 1)")
    p.add_argument("--transient", type=float, default=8.0, help="seconds the transient hog runs (default 8)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default under bench/results/)")
    args = p.parse_args(argv)
    settings = replace(MeasureSettings(), max_wait_seconds=10.0) if args.quick else MeasureSettings()
    rounds = args.rounds or (1 if args.quick else 2)
    machine = describe_machine()
    started = time.time()
    report = {"model": {"preset": PRESET, "resolution": RESOLUTION, "backend": BACKEND, "precision": PRECISION,
                        "threads": THREADS, "runtime_version": runtime_version(BACKEND)},
              "machine": machine, "cpu_count": os.cpu_count(), "settings": asdict(settings),
              "others_limit_cores": settings.others_limit(THREADS), "hog": f"{os.cpu_count()} x python -c '{_BUSY}'",
              "transient_hog_s": args.transient, "tolerance": TOLERANCE, "started_at": started,
              **run(rounds, settings, args.transient)}
    report["seconds"] = round(time.time() - started, 1)
    print_table(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = args.out or RESULTS / f"interference_bench_{cpu_slug(machine)}{'_quick' if args.quick else ''}.json"
    atomic_write(path, json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
