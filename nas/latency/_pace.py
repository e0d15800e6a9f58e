"""The host's pace: is this machine in one of its slow spells right now?

A VM that shares physical cores with other tenants can run every network ~1.4-1.6x slower for
seconds to tens of seconds at a time (bench/host_phases.py), with no trace in /proc/stat: no other
process, no steal. A timing of 1-3 s that falls in such a spell overstates the model by that much,
and two measurements of one model minutes apart disagree by it.

A tiny fixed OpenVINO network (three 3x3 convolutions, 0.25 ms on the 2-core AMD EPYC VM, built
from OpenVINO ops: no torch, no export) reads the pace: the median of a few inferences. The
fastest reading this machine has given (with this runtime and thread count; kept in the latency
cache's folder, so a new process starts knowing it) is its quiet pace; a reading slower than
`factor` x that is a slow spell.
Timing (nas.latency._timing) waits for the spell to pass, and an attempt that ends in one counts
as not quiet (`loaded`): measured again, and never trusted alone.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

PROBE_RUNS = 8  # inferences per reading (their median)
PROBE_WARMUP = 2
PROBE_CHANNELS = 32
PROBE_SIDE = 48


def _probe_model() -> Any:
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    data = ops.parameter([1, PROBE_CHANNELS, PROBE_SIDE, PROBE_SIDE], np.float32, name="x")
    x = data
    for _ in range(3):
        weights = ops.constant(rng.standard_normal((PROBE_CHANNELS, PROBE_CHANNELS, 3, 3)).astype(np.float32) * 0.05)
        x = ops.relu(ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1]))
    return ov.Model([x], [data], "pace-probe")


class Probe:
    """The probe network compiled for `threads` (fp32 pinned), and its quiet pace on this machine."""

    def __init__(self, threads: int, path: Path | None) -> None:
        import openvino as ov

        from nas.latency import _backends as backends

        compiled = backends.ov_core().compile_model(_probe_model(), "CPU", backends.openvino_config(threads, "fp32"))
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._request.set_input_tensor(ov.Tensor(np.zeros((1, PROBE_CHANNELS, PROBE_SIDE, PROBE_SIDE), np.float32)))
        self.path = path
        self.identity = {"machine": _machine(), "runtime_version": backends.runtime_version("openvino"),
                         "threads": threads}
        self.quiet_ms = self._load()

    def read(self) -> float:
        """One reading (ms); lowers the known quiet pace when it is faster."""
        request = self._request
        for _ in range(PROBE_WARMUP):
            request.infer()
        times = []
        for _ in range(PROBE_RUNS):
            request.infer()
            times.append(request.latency)
        reading = float(np.median(times))
        if self.quiet_ms is None or reading < self.quiet_ms:
            self.quiet_ms = reading
            self._save()
        return reading

    def ratio(self) -> float:
        """A reading over the quiet pace (1.0 at the machine's fastest)."""
        reading = self.read()
        assert self.quiet_ms is not None
        return reading / self.quiet_ms

    def _load(self) -> float | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if {k: data[k] for k in self.identity} != self.identity:
                return None  # another machine, runtime or thread count: learn afresh
            value = float(data["quiet_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged file only costs relearning the pace
        return value if value > 0 else None

    def _save(self) -> None:
        if self.path is None:
            return
        from nas.atomic import atomic_write

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps({**self.identity, "quiet_ms": self.quiet_ms,
                                                "updated_at": time.time()}, indent=1))
        except OSError:
            pass  # a read-only cache folder: the pace is kept in this process only


def _machine() -> str:
    from nas.latency._machine import machine_id

    return machine_id()


def pace_path(threads: int) -> Path:
    from nas.latency._cache import default_cache_path

    return default_cache_path().parent / f"pace-openvino-{threads}t.json"


def probe(threads: int, path: Path | None = None) -> Probe:
    """The process's probe for `threads` (compiled once per pace file); `path` defaults to beside the
    latency cache."""
    return _probe(threads, path if path is not None else pace_path(threads))


@functools.cache
def _probe(threads: int, path: Path) -> Probe:
    return Probe(threads, path)


def wait_for_pace(threads: int, factor: float, budget_s: float) -> tuple[float, float]:
    """Read the pace until it is within `factor` of the quiet pace or `budget_s` is spent (pauses
    0.5 s doubling to 4 s). Returns (the last ratio, seconds spent)."""
    started = time.perf_counter()
    pause = 0.5
    gauge = probe(threads)
    while True:
        ratio = gauge.ratio()
        waited = time.perf_counter() - started
        if ratio <= factor or waited >= budget_s:
            return ratio, waited
        time.sleep(min(pause, max(0.0, budget_s - waited)))
        pause = min(2 * pause, 4.0)
