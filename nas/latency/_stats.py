"""The latency record and the statistics computed from timed passes.

The estimate is the *minimum of the pass medians*: on these shared machines slow periods of
seconds make whole passes 1.3-1.9x slower, so the fastest pass median estimates the quiet machine
while a median over everything drifts with the load. The overall median,
p90, IQR and CVs are kept so a reader can see how much to trust the estimate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CacheKey:
    """What a latency depends on. The runtime version is part of it, so upgrading invalidates; so are
    the precision (fp32 and bf16 runs never share an entry) and the machine fingerprint (CPU model,
    ISA features, OpenVINO capabilities), so a cache copied to another CPU type misses."""

    key: str
    backend: str
    device: str
    resolution: int
    threads: int
    runtime_version: str
    precision: str = "fp32"
    machine: str = ""

    def as_str(self) -> str:
        return json.dumps([self.key, self.backend, self.device, self.resolution, self.threads,
                           self.runtime_version, self.precision, self.machine])


@dataclass(frozen=True)
class PassSummary:
    """Statistics of a set of passes (lists of per-inference times in ms)."""

    estimate_ms: float  # min of pass medians
    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    iqr_ms: float
    cv: float  # of all samples
    pass_medians_ms: tuple[float, ...]
    pass_cv: float  # of the pass medians: the steadiness criterion
    samples: int
    unsteady: bool


def _cv(values: np.ndarray) -> float:
    if values.size < 2 or values.mean() <= 0:
        return 0.0
    return float(values.std(ddof=1) / values.mean())


def pass_cv(passes: Sequence[Sequence[float]]) -> float:
    """Coefficient of variation of the pass medians (0 for a single pass)."""
    return _cv(np.array([np.median(p) for p in passes], dtype=float))


def summarize(passes: Sequence[Sequence[float]], unsteady_cv: float) -> PassSummary:
    """Summarise timed passes; `unsteady` when the pass medians' CV exceeds `unsteady_cv`."""
    passes = [p for p in passes if len(p)]
    if not passes:
        raise ValueError("no timings to summarise")
    medians = np.array([np.median(p) for p in passes], dtype=float)
    values = np.concatenate([np.asarray(p, dtype=float) for p in passes])
    q1, q3 = np.percentile(values, [25, 75])
    spread = _cv(medians)
    return PassSummary(
        estimate_ms=float(medians.min()),
        median_ms=float(np.median(values)),
        mean_ms=float(values.mean()),
        min_ms=float(values.min()),
        p90_ms=float(np.percentile(values, 90)),
        iqr_ms=float(q3 - q1),
        cv=_cv(values),
        pass_medians_ms=tuple(float(m) for m in medians),
        pass_cv=spread,
        samples=int(values.size),
        unsteady=bool(spread > unsteady_cv),
    )


@dataclass(frozen=True)
class LatencyStats:
    """One measurement: what was timed, where, how, and the statistics (all times in ms)."""

    backend: str
    runtime_version: str
    device: str
    threads: int
    resolution: int
    estimate_ms: float
    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    iqr_ms: float
    cv: float
    pass_medians_ms: tuple[float, ...]
    pass_cv: float
    samples: int
    unsteady: bool
    attempts: int = 1
    others_cpu: float | None = None  # mean cores other processes used while we timed (~0 = quiet)
    key: str = ""
    measured_at: float = 0.0  # unix time
    precision: str = "fp32"  # fp32 | bf16 | fp16 | int8: how the runtime computed (nas.latency._precision)
    machine: str = ""  # fingerprint of the machine description (nas.latency._machine)
    # Interference (nas.latency._timing): no attempt ran with other processes under the limit, so
    # `estimate_ms` may overstate the quiet figure; how long timing waited for a quiet CPU; how often
    # a loaded cache entry was re-measured on a later visit (nas.latency._measure.LOADED_REMEASURES).
    loaded: bool = False
    waited_s: float = 0.0
    loaded_remeasures: int = 0
    pace: float | None = None  # host pace probe after the kept attempt / its quiet pace (nas.latency._pace)

    @classmethod
    def from_summary(cls, summary: PassSummary, *, backend: str, runtime_version: str, device: str,
                     threads: int, resolution: int, attempts: int = 1, others_cpu: float | None = None,
                     key: str = "", precision: str = "fp32", machine: str = "", loaded: bool = False,
                     waited_s: float = 0.0, pace: float | None = None) -> LatencyStats:
        return cls(backend=backend, runtime_version=runtime_version, device=device, threads=threads,
                   resolution=resolution, attempts=attempts, others_cpu=others_cpu, key=key,
                   measured_at=time.time(), precision=precision, machine=machine, loaded=loaded,
                   waited_s=waited_s, pace=pace, **asdict(summary))

    @property
    def ms(self) -> float:
        """The number to optimise against: the quiet-machine estimate."""
        return self.estimate_ms

    def cache_key(self) -> CacheKey:
        return CacheKey(self.key, self.backend, self.device, self.resolution, self.threads,
                        self.runtime_version, self.precision, self.machine)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass_medians_ms"] = list(self.pass_medians_ms)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        """Inverse of `to_dict`; unknown keys (from a newer writer) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["pass_medians_ms"] = tuple(float(v) for v in values.get("pass_medians_ms", ()))
        stats = cls(**values)
        if not math.isfinite(stats.estimate_ms):
            raise ValueError(f"non-finite latency in record: {data}")
        return stats

    def summary(self) -> str:
        """One human-readable line."""
        flag = "  [UNSTEADY]" if self.unsteady else ""
        if self.loaded:
            flag += "  [LOADED: other processes kept the CPU busy or the host was in a slow spell; may overstate]"
        others = "" if self.others_cpu is None else f", other processes used {self.others_cpu:.1f} cores"
        if self.waited_s >= 1:
            others += f", waited {self.waited_s:.0f} s for a quiet CPU"
        return (f"{self.estimate_ms:.3f} ms {self.precision}  (median {self.median_ms:.3f}, p90 {self.p90_ms:.3f}, "
                f"IQR {self.iqr_ms:.3f}, CV {100 * self.cv:.1f}%, pass CV {100 * self.pass_cv:.1f}%, "
                f"{self.samples} samples in {len(self.pass_medians_ms)} passes, "
                f"{self.attempts} attempt(s){others}){flag}")
