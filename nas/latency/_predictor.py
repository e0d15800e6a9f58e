"""Latency predictor: an architecture's latency from its `Arch` alone, without building or converting it.

An architecture is cut into units (the stem, each stage's downsampling, each stage's body of
`depth` blocks, the head) at their exact input shapes. Units timed alone run differently from
inside a network (other layouts, reorders and kernels), so calibration (`calibrate`) times them IN
CONTEXT: whole sampled networks are compiled with OpenVINO's per-node profiling and each node's
time is attributed to its unit (nas.latency._incontext). From those in-context unit times it fits
per-group regressions (group: the unit kind and its mixer, downsampling or stem/head kind), non-
negative least squares on analytic counts per unit (`Unit.features`: the unit itself, its blocks,
dense MACs with channels padded to the CPU's 16-float blocks, depthwise MACs, activation elements,
attention MACs, weights: a 1x1 conv on a 7x7 map does 49 MACs per weight it reads, and without
the weight term the large units of wide late stages were predicted 5-17% fast). Every unit is predicted
by its group's regression, seen in calibration or not (one profile of a unit scatters by ~5%; the
regression averages over all of them). The networks are also timed as the search times them, in six
short rounds a batch of networks apart, the fastest kept (a shared host has slow spells), and
profiled in the first two. The profile only divides a network's time among its units: each
network's unit times are rescaled to sum to its measured latency before the regressions are fitted
(`_shares`; profiling overhead drifts with the host's state), and a two-number correction takes up
what the relative regressions miss as a whole:

    latency = scale * sum over units (regressed unit ms) + c

Prediction is a few small dot products: no torch, well under a millisecond.

The calibration is saved as JSON under the cache directory, one file per (backend, threads,
precision, resolution), and carries the runtime version and machine fingerprint it was measured
with: `load_predictor` refuses a file from another runtime or machine (UserError, one line).
The in-context samples are kept in the file, so the fit can be redone (`refit`, `python -m
nas.latency --refit`) without timing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nas.arch import STEM_STRIDES, Arch, StageSpec
from nas.errors import UserError
from nas.latency import _backends as backends
from nas.latency._cache import LatencyCache, default_cache_path
from nas.latency._machine import machine_id
from nas.latency._precision import DEFAULT_PRECISION, check_precision
from nas.latency._timing import MeasureSettings
from nas.mixers import mixer_info

PREDICTOR_SCHEMA = 4  # 4: regressions on profiles rescaled to the timing, scale * sum + c (3: per-group scales)
CALIBRATION_SECONDS = 540.0  # the whole command stays under 10 minutes with start-up and saving
CALIBRATION_ARCHS = 200  # at most; as many as fit in the time (~13 s each fp32 on a 2-core VM, ~17 s int8)
# Whole networks are timed in many short rounds (ROUNDS), the fastest kept: on a shared host's slow
# spells (bench/host_phases.py: on one AMD EPYC VM 48-62% of the time, at 1.5x and up to 2.3x, for
# seconds to over a minute) waiting with the pace probe costs seconds per network and still misses,
# while a round that lands in a spell only loses the min; but with 6 rounds ~6% of networks (0.62^6)
# met no fast moment at all, and read up to 2x slow. So rounds are many and cheap: one attempt of 2
# short passes after a short warm-up and a 0.2 s look at /proc/stat, no probe, no re-attempts (about
# half a second for a 2 ms network; ten of them cost what six rounds of 3 passes did). A round during
# which other processes used more than 0.1 core per timing thread counts as loaded (on a 2-core
# machine with SMT siblings even niced neighbours slowed networks by a third), and a network with no
# quiet round is recorded but not fitted.
ARCH_SETTINGS = MeasureSettings(passes=2, warmup_seconds=0.1, quiet_window_seconds=0.2, max_retries=0,
                                max_wait_seconds=20.0, max_others_cpu=0.1, pace_factor=0.0, max_loaded_retries=0)
MIN_GROUP_SAMPLES = 4  # a group with fewer in-context samples uses its kind's regression
OUTLIER_BAND = 0.25  # a calibration network whose measured/profiled ratio is off the median by more is not fitted
MIN_MARGIN = 0.10  # rejection margin floor (relative over-prediction tolerated before rejecting)
CHANNEL_BLOCK = 16  # OpenVINO's CPU plugin lays fp32 channels out in blocks of 16 (AVX-512): dense MACs count padded
MIN_ANCHORS = 4  # fresh timings needed to re-anchor a calibration's scale (Predictor.anchored)
ANCHOR_BOUNDS = (0.8, 1.25)  # the anchor factor's range: a fit timed in a slow spell must not reject half the space
MIN_CORRECTION_SAMPLES = 8  # networks needed to fit the correction's scale and constant (fewer: the median ratio)
# Each calibration network is timed in ROUNDS rounds over a BATCH of networks, so its rounds lie
# ~20 s apart and its fastest comes from the fastest phase of a ~3-minute window: on the AMD EPYC VM a
# slow phase (1.5-2x) lasted over a minute at a time, and with batches of 12 (~2 minutes) whole batches
# missed the fast level (leave-one-out errors clustered by batch, medians +5% / -12% / +1%). Its
# per-node profile (which only divides the network's time among its units, see `_shares`) is taken in
# the first PROFILE_ROUNDS of them, each node's fastest kept.
ROUNDS = 10
PROFILE_ROUNDS = 2
BATCH = 24
MIN_BATCH = 6  # a later batch that the time left cannot fill to this is not started


class PredictorError(UserError):
    """No usable calibration: missing, damaged, or made with another runtime, machine or settings."""


# ---- units -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One separately timed piece of a network at its exact input shape.

    kind: "stem", "downsample", "body" (one stage body of `depth` blocks) or "head"; `params`
    (sorted name/value pairs) say everything its latency depends on, the input side included.
    """

    kind: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, unit_kind: str, /, **params: Any) -> Unit:
        return cls(unit_kind, tuple(sorted(params.items())))

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def family(self) -> str:
        """The fallback regression group when `group` has too few samples."""
        return self.kind

    @property
    def group(self) -> str:
        """The regression group: units of one group share a latency model."""
        p = self.p
        if self.kind == "body":
            return f"body:{p['mixer']}"
        if self.kind == "downsample":
            return f"downsample:{p['downsample']}"
        return f"{self.kind}:{p['kind']}"

    @property
    def key(self) -> str:
        text = json.dumps([self.kind, self.params], separators=(",", ":"))
        return "unit:" + hashlib.sha1(text.encode()).hexdigest()[:12]

    def features(self) -> tuple[float, ...]:
        """(1, blocks, dense MMACs, depthwise MMACs, M activation elements, attention MMACs, M weights):
        analytic counts for the per-group regression. Dense convs/linears count channels padded to
        CHANNEL_BLOCK (a 24-channel conv runs as a 32-channel one); activation elements are the tensors
        elementwise ops, norms and depthwise convs read and write (memory traffic); attention MACs are
        the token-by-token products (LiteMLA's per-head d x d, GLSRA's token-by-context); weights are
        what every inference reads once (memory traffic that does not shrink with the feature map)."""
        p = self.p
        side = p["side"]
        n = side * side
        dense = dw = elems = attn = 0.0
        if self.kind == "stem":
            w, out = p["width"], (side + 1) // 2
            if p["kind"] == "patch":
                tokens = (side // 16) ** 2
                dense, elems = 768 * _pad(w) * tokens, 3 * n + w * tokens
            elif p["kind"] == "conv2":
                half, quarter = w // 2, ((out + 1) // 2) ** 2
                dense = 27 * _pad(half) * out ** 2 + 9 * _pad(half) * _pad(w) * quarter
                elems = 3 * n + half * out ** 2 + w * quarter
            else:
                depth = p["depth"]
                dense = (27 * _pad(w) + depth * _pad(w) ** 2) * out ** 2
                dw, elems = depth * 9 * w * out ** 2, 3 * n + (1 + 3 * depth) * w * out ** 2
        elif self.kind == "head":
            c, classes = p["cin"], p["classes"]
            if p["kind"] == "evit":
                h1, h2 = p["widths"] or [c, c]
                dense, elems = _pad(c) * _pad(h1) * n + h1 * h2 + h2 * classes, c * n + 2 * h1 * n
            else:
                dense, elems = c * classes, 2 * c * n
        elif self.kind == "downsample":
            cin, cout, out = p["cin"], p["width"], (side + 1) // 2
            if p["downsample"] == "conv":
                dense, elems = 9 * _pad(cin) * _pad(cout) * out ** 2, cin * n + cout * out ** 2
            elif p["downsample"] == "mbconv":
                mid = round(cin * p["expand"])
                dense = _pad(cin) * _pad(mid) * n + _pad(mid) * _pad(cout) * out ** 2
                dw, elems = 9 * mid * out ** 2, cin * n + 2 * mid * n + mid * out ** 2 + cout * out ** 2
            else:
                dense, elems = _pad(cin) * _pad(cout) * n, (cin + cout) * n
        else:
            dense, dw, elems, attn = _body_features(p, n)
        blocks = p.get("depth", 0) if self.kind == "body" else 0
        return 1.0, float(blocks), dense / 1e6, dw / 1e6, elems / 1e6, attn / 1e6, _weights(self.kind, p) / 1e6


def _weights(kind: str, p: dict[str, Any]) -> float:
    """Weights of a unit (convs and linears; norms folded, biases left out)."""
    if kind == "stem":
        w = p["width"]
        return {"patch": 768 * w, "conv2": 27 * (w // 2) + 9 * (w // 2) * w}.get(
            p["kind"], 27 * w + p["depth"] * (9 * w + w * w))
    if kind == "head":
        c, classes = p["cin"], p["classes"]
        if p["kind"] == "evit":
            h1, h2 = p["widths"] or [c, c]
            return c * h1 + h1 * h2 + h2 * classes
        return c * classes
    if kind == "downsample":
        cin, cout = p["cin"], p["width"]
        if p["downsample"] == "conv":
            return 9 * cin * cout
        if p["downsample"] == "mbconv":
            mid = round(cin * p["expand"])
            return cin * mid + 9 * mid + mid * cout
        return cin * cout
    w, depth, mixer = p["width"], p["depth"], p["mixer"]
    mid = round(w * p["expand"])
    per_block = {"mbconv": 2 * w * mid + 9 * mid, "catm": 5 * w * w + 2 * w * mid + 45 * w,
                 "litemla": 5 * w * w + 2 * w * mid + 75 * w + 9 * mid + 3 * w * p.get("head_dim", 1),
                 "glsra": 6 * w * w + 2 * w * mid}.get(mixer, 2 * w * mid)
    return depth * per_block + (25 * w if mixer == "glsra" else 0)  # glsra: CPE and guide, once a stage


def _pad(channels: int) -> int:
    return -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK


def _body_features(p: dict[str, Any], n: int) -> tuple[float, float, float, float]:
    """(dense MACs, depthwise MACs, activation elements, attention MACs) of a stage body (see the
    block layouts in nas/models: cas.py, efficientvit.py, cage.py, mbconv.py)."""
    w, depth, mixer = p["width"], p["depth"], p["mixer"]
    mid = round(w * p["expand"])
    pw, pm = _pad(w), _pad(mid)
    if mixer == "mbconv":  # 1x1 expand, DW 3x3, 1x1 project, residual
        return depth * n * 2 * pw * pm, depth * n * 9 * mid, depth * n * (3 * mid + 2 * w), 0.0
    if mixer == "catm":  # local 1x1-DW-1x1, qkv, two spatial+channel gates, 2 DW 3x3, MLP
        return depth * n * (5 * pw * pw + 2 * pw * pm), depth * n * 45 * w, depth * n * (27 * w + 2 * mid), 0.0
    if mixer == "litemla":  # qkv, DW 5x5 + grouped 1x1 aggregation, linear attention, proj, MBConv FFN
        d = p["head_dim"]
        return (depth * n * (5 * pw * pw + 2 * pw * pm), depth * n * (75 * w + 9 * mid),
                depth * n * (25 * w + 3 * mid), depth * n * 7 * w * d)
    if mixer == "glsra":  # stage: CPE, guide, token selection and fusion; blocks on the kept tokens
        keep = min(n - 1, max(1, round(p["keep_ratio"] * n)))
        side = int(math.isqrt(n))
        grid = max(g for g in range(1, min(side, p["pool_size"]) + 1) if side % g == 0) ** 2
        fusion = p["fusion_tokens"]
        tokens, context = keep + fusion, grid + fusion
        dense = 16 * pw * n + depth * (tokens * (3 * pw * pw + 2 * pw * pm) + (2 * context + grid) * pw * pw)
        attn = depth * 2 * tokens * context * w + 2 * fusion * (n - keep) * w
        return dense, 9 * w * n, 10 * n * w + depth * tokens * (12 * w + 2 * mid), attn
    # a mixer added later: conv-like guess, refined by its own timings
    return depth * n * 2 * pw * pm, 0.0, depth * n * 4 * w, 0.0


def _out_side(side: int, stride: int) -> int:
    for _ in range(int(math.log2(stride))):
        side = (side + 1) // 2
    return side


def stem_side(kind: str, resolution: int) -> int:
    """Feature-map side after the stem (3x3 stride-2 convs with padding 1; a patch stem is /16 exactly)."""
    return resolution // 16 if kind == "patch" else _out_side(resolution, STEM_STRIDES[kind])


def _body_params(spec: StageSpec) -> dict[str, Any]:
    params: dict[str, Any] = {"mixer": spec.mixer, "width": spec.width, "expand": spec.expand}
    for knob in mixer_info(spec.mixer).knobs:
        params[knob] = getattr(spec, knob)
    return params


def _downsample_unit(spec: StageSpec, cin: int, side: int) -> Unit | None:
    if spec.downsample == "none" and cin == spec.width:
        return None  # an Identity
    params: dict[str, Any] = {"downsample": spec.downsample, "width": spec.width, "cin": cin, "side": side}
    if spec.downsample == "mbconv":  # the mixer decides the norm variant; expand sizes its hidden layer
        params["expand"] = spec.expand
        params["full_norm"] = mixer_info(spec.mixer).full_norm_downsample
    return Unit.of("downsample", **params)


def _body_unit(spec: StageSpec, side: int) -> Unit | None:
    """A stage body (its `depth` blocks, and a glsra stage's token selection and fusion) as one unit."""
    if spec.depth == 0:
        return None
    return Unit.of("body", **_body_params(spec), depth=spec.depth, side=side)


def labelled_units(arch: Arch, resolution: int) -> list[tuple[str, Unit]]:
    """The units of `arch` at `resolution`, each with its label in a network's profile
    (`stem`, `down<i>`, `body<i>`, `head`: see nas.latency._incontext.unit_label)."""
    out: list[tuple[str, Unit]] = [
        ("stem", Unit.of("stem", kind=arch.stem_kind, width=arch.stem_width,
                         depth=arch.stem_depth if arch.stem_kind == "dsconv" else 0, side=resolution))]
    side, width = stem_side(arch.stem_kind, resolution), arch.stem_width
    for i, spec in enumerate(arch.stages):
        down = _downsample_unit(spec, width, side)
        if down is not None:
            out.append((f"down{i}", down))
        if spec.downsample != "none":
            side = (side + 1) // 2
        body = _body_unit(spec, side)
        if body is not None:
            out.append((f"body{i}", body))
        width = spec.width
    out.append(("head", Unit.of("head", kind=arch.head_kind, cin=width, side=side, classes=arch.num_classes,
                                widths=list(arch.head_widths) if arch.head_kind == "evit" else [])))
    return out


def decompose(arch: Arch, resolution: int) -> list[Unit]:
    """The units of `arch` at `resolution`."""
    return [unit for _, unit in labelled_units(arch, resolution)]


def space_units(space: Any, resolution: int, num_classes: int = 1000) -> list[Unit]:
    """Every unit an architecture of `space` (a nas.space.SearchSpace) can contain, at `resolution`."""
    from nas.space import choices

    units: dict[str, Unit] = {}

    def add(unit: Unit | None) -> None:
        if unit is not None:
            units.setdefault(unit.key, unit)

    states: set[tuple[int, int]] = set()  # (width, side) entering the next stage
    for kind, width, depth in itertools.product(choices(space.stem.kind), choices(space.stem.width),
                                                choices(space.stem.depth)):
        add(Unit.of("stem", kind=kind, width=width, depth=depth if kind == "dsconv" else 0, side=resolution))
        states.add((width, stem_side(kind, resolution)))
    for stage in space.stages:
        following: set[tuple[int, int]] = set()
        for mixer in choices(stage.mixer):
            knobs = mixer_info(mixer).knobs
            extra = [choices(getattr(stage, k)) for k in knobs]
            depths = [d for d in choices(stage.depth) if d > 0]
            for width, expand, down, *values in itertools.product(choices(stage.width), choices(stage.expand),
                                                                  choices(stage.downsample), *extra):
                spec = StageSpec(mixer, 1, width, expand, down, **dict(zip(knobs, values, strict=True)))
                for cin, side in states:
                    add(_downsample_unit(spec, cin, side))
                    out = side if down == "none" else (side + 1) // 2
                    following.add((width, out))
                    for depth in depths:
                        add(_body_unit(replace(spec, depth=depth), out))
        states = following
    for kind in choices(space.head.kind):
        for (cin, side), widths in itertools.product(states, space.head.widths if kind == "evit" else [[]]):
            add(Unit.of("head", kind=kind, cin=cin, side=side, classes=num_classes,
                        widths=list(widths) if kind == "evit" else []))
    return list(units.values())


# ---- the predictor ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    ms: float
    unit_sum_ms: float
    units: int
    regressed: int  # units never seen in calibration (their group's regression extrapolates to them)

    def to_dict(self) -> dict[str, Any]:
        return {"predicted_ms": self.ms, "unit_sum_ms": self.unit_sum_ms, "units": self.units,
                "regressed_units": self.regressed}


@dataclass
class Sample:
    """One calibration network: its in-context unit times and its measured latency."""

    arch: str  # hash
    units: dict[str, float]  # unit key -> in-context ms
    measured_ms: float
    others_cpu: float = 0.0  # cores other processes used: the larger of the profile's and the timing's
    loaded: bool = False  # either ran with others above the timing limit: not fitted
    rounds_ms: list[float] = field(default_factory=list)  # every round's timing (measured_ms: the quiet fastest)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "units": self.units, "measured_ms": self.measured_ms, "others_cpu": self.others_cpu,
                "loaded": self.loaded, "rounds_ms": self.rounds_ms}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        return cls(str(data["arch"]), {str(k): float(v) for k, v in data["units"].items()},
                   float(data["measured_ms"]), float(data.get("others_cpu") or 0.0), bool(data.get("loaded", False)),
                   [float(v) for v in data.get("rounds_ms", [])])


@dataclass
class Predictor:
    """A calibration: in-context unit times, per-group regressions, the network-level correction."""

    backend: str
    device: str
    threads: int
    resolution: int
    precision: str
    runtime_version: str
    machine: str
    unit_ms: dict[str, float]  # unit key -> mean in-context ms over the calibration networks (seen units)
    groups: dict[str, list[float]]  # group (or kind, or "all") -> ms per feature (Unit.features)
    correction: dict[str, float]  # "*": scale on the regressions' sum, "const": ms (see _corrected)
    error: dict[str, Any] = field(default_factory=dict)  # leave-one-out errors on the calibration archs
    created_at: float = 0.0
    spaces: list[str] = field(default_factory=list)
    archs: list[str] = field(default_factory=list)  # hashes of the calibration networks
    samples: list[Sample] = field(default_factory=list)
    unit_specs: dict[str, list[Any]] = field(default_factory=dict)  # unit key -> [kind, params] (for refit)

    @property
    def margin(self) -> float:
        """Relative over-prediction tolerated before a candidate is rejected unmeasured: the largest
        leave-one-out over-prediction of the calibration, at least MIN_MARGIN."""
        return max(MIN_MARGIN, float(self.error.get("max_over", 0.0)))

    def regressed_ms(self, unit: Unit) -> float:
        """One unit's in-context ms from its group's regression (its kind's, or all units', when the
        group had too few samples)."""
        return _regressed(self.groups, unit)

    def predict(self, arch: Arch) -> Prediction:
        units = decompose(arch, self.resolution)
        total = sum(self.regressed_ms(unit) for unit in units)
        unseen = sum(unit.key not in self.unit_ms for unit in units)
        return Prediction(max(0.0, _corrected(self.correction, total)), total, len(units), unseen)

    def anchored(self, timed: Sequence[tuple[Arch, float]]) -> Predictor:
        """A copy rescaled to latencies measured now: a shared host's quiet speed drifts by ~10% over
        minutes (the AMD EPYC VM's calibration over-predicted the next ten minutes' held-out timings
        by a median 8-9%), so a few fresh timings of any architectures (the search's space fit) set
        the scale: the median measured / predicted ratio, within ANCHOR_BOUNDS, from at least
        MIN_ANCHORS of them; fewer: unchanged. The factor is recorded in `error["anchor"]`."""
        ratios = [ms / p for arch, ms in timed if ms > 0 and (p := self.predict(arch).ms) > 0]
        if len(ratios) < MIN_ANCHORS:
            return self
        median = float(np.median(ratios))
        factor = min(max(median, ANCHOR_BOUNDS[0]), ANCHOR_BOUNDS[1])
        correction = {"*": self.correction["*"] * factor, "const": self.correction["const"] * factor}
        return replace(self, correction=correction,
                       error={**self.error, "anchor": {"factor": factor, "archs": len(ratios), "median_ratio": median}})

    # ---- persistence ----
    def to_dict(self) -> dict[str, Any]:
        return {"schema": PREDICTOR_SCHEMA, "backend": self.backend, "device": self.device, "threads": self.threads,
                "resolution": self.resolution, "precision": self.precision,
                "runtime_version": self.runtime_version, "machine": self.machine, "created_at": self.created_at,
                "spaces": self.spaces, "archs": self.archs, "correction": self.correction, "error": self.error,
                "groups": self.groups, "unit_ms": self.unit_ms, "samples": [s.to_dict() for s in self.samples],
                "unit_specs": self.unit_specs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Predictor:
        if data.get("schema") != PREDICTOR_SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {PREDICTOR_SCHEMA}")
        predictor = cls(
            backend=str(data["backend"]), device=str(data["device"]), threads=int(data["threads"]),
            resolution=int(data["resolution"]), precision=str(data["precision"]),
            runtime_version=str(data["runtime_version"]), machine=str(data["machine"]),
            unit_ms={str(k): float(v) for k, v in data["unit_ms"].items()},
            groups={str(k): [float(x) for x in v] for k, v in data["groups"].items()},
            correction={str(k): float(v) for k, v in data["correction"].items()}, error=dict(data.get("error", {})),
            created_at=float(data.get("created_at", 0.0)), spaces=list(data.get("spaces", [])),
            archs=[str(h) for h in data.get("archs", [])],
            samples=[Sample.from_dict(s) for s in data.get("samples", [])],
            unit_specs={str(k): [str(v[0]), v[1]] for k, v in data.get("unit_specs", {}).items()})
        if not {"*", "const"} <= set(predictor.correction) or "all" not in predictor.groups \
                or any(len(v) != N_DESIGN for v in predictor.groups.values()):
            raise ValueError("malformed coefficients")
        numbers = [*predictor.correction.values(), *predictor.unit_ms.values(),
                   *itertools.chain.from_iterable(predictor.groups.values())]
        if not all(map(math.isfinite, numbers)):
            raise ValueError("non-finite numbers")
        return predictor

    def save(self, path: str | Path) -> Path:
        from nas.atomic import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))  # a reader never sees half a file
        return path


def predictor_path(backend: str = backends.DEFAULT_BACKEND, threads: int | None = None, resolution: int = 224,
                   precision: str = DEFAULT_PRECISION, directory: str | Path | None = None) -> Path:
    """Where the calibration for these settings lives: beside the latency cache (its directory
    follows $VITNAS_LATENCY_CACHE). Runtime version and machine are checked inside the file."""
    folder = Path(directory) if directory is not None else default_cache_path().parent
    return folder / f"predictor-{backend}-{backends.check_threads(threads)}t-{precision}-{resolution}px.json"


def load_predictor(path: str | Path | None = None, *, backend: str = backends.DEFAULT_BACKEND,
                   threads: int | None = None, resolution: int = 224,
                   precision: str = DEFAULT_PRECISION) -> Predictor:
    """The calibration for these settings on this machine and runtime; PredictorError (one line) when
    it is missing, damaged, or was made with another runtime version, machine, backend, threads,
    precision or resolution."""
    threads = backends.check_threads(threads)
    path = Path(path) if path is not None else predictor_path(backend, threads, resolution, precision)
    if not path.is_file():
        raise PredictorError(f"no latency predictor calibrated for {backend} {precision} {threads} threads "
                             f"{resolution}px on this machine ({path} missing); run "
                             f"`python -m nas.latency --calibrate --threads {threads} --precision {precision}` first")
    try:
        predictor = Predictor.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as exc:
        hint = ("`python -m nas.latency --refit` (no timing) or --calibrate" if "schema" in str(exc)
                else "`python -m nas.latency --calibrate` again")
        raise PredictorError(f"{path}: not a usable predictor file ({str(exc)[:120]}); run {hint}") from None
    wanted = {"backend": backend, "threads": threads, "resolution": resolution, "precision": precision,
              "runtime_version": backends.runtime_version(backend), "device": backends.device_name(backend),
              "machine": machine_id()}
    for name, value in wanted.items():
        if getattr(predictor, name) != value:
            raise PredictorError(f"{path}: calibrated for {name} {getattr(predictor, name)!r}, this is {value!r}; "
                                 "recalibrate with `python -m nas.latency --calibrate`")
    return predictor


# ---- fitting -------------------------------------------------------------------------------------

N_DESIGN = 7


def _design(unit: Unit) -> np.ndarray:
    return np.array(unit.features())


def _regressed(groups: dict[str, list[float]], unit: Unit) -> float:
    coef = groups.get(unit.group) or groups.get(unit.family) or groups["all"]
    return max(1e-4, float(np.dot(coef, _design(unit))))


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Non-negative least squares of relative errors (rows divided by y): small units count as much."""
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(y, 1e-6)
    xw = x * w[:, None]
    scale = np.maximum(np.abs(xw).max(0), 1e-12)
    coef, _ = nnls(xw / scale, y * w)
    return [float(v) for v in coef / scale]


def _fit_units(samples: list[Sample], specs: dict[str, Unit]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(mean in-context ms per unit key, regression coefficients per group, per kind and overall)."""
    seen: dict[str, list[float]] = {}
    for sample in samples:
        for key, ms in sample.units.items():
            seen.setdefault(key, []).append(ms)
    unit_ms = {key: float(np.mean(v)) for key, v in seen.items()}
    rows: dict[str, list[tuple[np.ndarray, float]]] = {}
    for sample in samples:  # every occurrence is a row: a unit seen often weighs more
        for key, ms in sample.units.items():
            unit = specs[key]
            for name in (unit.group, unit.family, "all"):
                rows.setdefault(name, []).append((_design(unit), ms))
    groups = {name: _nnls_relative(np.array([r[0] for r in members]), np.array([r[1] for r in members]))
              for name, members in rows.items() if len(members) >= MIN_GROUP_SAMPLES or name == "all"}
    return unit_ms, groups


def _fit_correction(samples: list[Sample], specs: dict[str, Unit], groups: dict[str, list[float]]) -> dict[str, float]:
    """measured ~ scale * (the regressions' sum over the network's units) + const, least squares on
    relative errors: what the per-unit regressions miss as a whole (their relative fit weighs small
    units as much as large ones). With fewer than MIN_CORRECTION_SAMPLES networks: the median ratio, no constant."""
    measured = np.array([s.measured_ms for s in samples])
    regressed = np.array([sum(_regressed(groups, specs[key]) for key in s.units) for s in samples])
    median = float(np.median(measured / np.maximum(regressed, 1e-9)))
    if len(samples) < MIN_CORRECTION_SAMPLES:
        return {"*": median, "const": 0.0}
    x = np.stack([regressed, np.ones_like(regressed)], axis=1) / measured[:, None]
    (scale, const), *_ = np.linalg.lstsq(x, np.ones_like(measured), rcond=None)
    if not (0.5 <= scale <= 1.5):  # a degenerate fit (networks all alike): the median ratio
        return {"*": median, "const": 0.0}
    return {"*": float(scale), "const": float(const)}


def _corrected(correction: dict[str, float], regressed_sum: float) -> float:
    """A network's latency from the sum of its units' regressed times: scale * sum + const."""
    return correction["*"] * regressed_sum + correction["const"]


def _shares(sample: Sample) -> Sample:
    """The sample with its profiled unit times rescaled to sum to its measured latency: the profile
    says how a network's time divides among its units, the timing how long it is. Profiling overhead
    is not a constant of the machine: on the AMD EPYC VM measured / profiled drifted from ~1.0 to
    ~0.7 within one calibration (a host's slow spells touch profiled runs differently), and unscaled
    profiles taught the regressions that drift."""
    total = sum(sample.units.values())
    if total <= 0:
        return sample
    return replace(sample, units={key: ms * sample.measured_ms / total for key, ms in sample.units.items()})


def consistent(samples: list[Sample]) -> list[Sample]:
    """The quiet samples (not `loaded`) whose profile agrees with their timing: measured / unit sum
    within OUTLIER_BAND of the median ratio (a network disturbed during one of the two reads apart)."""
    samples = [s for s in samples if not s.loaded] or list(samples)
    if len(samples) < 5:
        return samples
    ratios = np.array([s.measured_ms / max(sum(s.units.values()), 1e-9) for s in samples])
    middle = float(np.median(ratios))
    return [s for s, r in zip(samples, ratios, strict=True) if abs(r / middle - 1.0) <= OUTLIER_BAND]


def fit(predictor: Predictor) -> Predictor:
    """Fit unit times, regressions and correction from the predictor's consistent samples (see
    `consistent`), in place; with the leave-one-out errors (each calibration network predicted by a
    fit without it, all samples) in `error`."""
    specs = {key: Unit(kind, tuple(sorted((k, v) for k, v in params.items())))
             for key, (kind, params) in predictor.unit_specs.items()}
    used = consistent(predictor.samples)
    samples = [_shares(s) for s in used]
    predictor.unit_ms, predictor.groups = _fit_units(samples, specs)
    predictor.correction = _fit_correction(samples, specs, predictor.groups)
    predictor.archs = [s.arch for s in predictor.samples]
    errors = []
    if len(samples) >= 5:
        for held in predictor.samples:
            rest = [shares for s, shares in zip(used, samples, strict=True) if s is not held]
            unit_ms, groups = _fit_units(rest, specs)
            correction = _fit_correction(rest, specs, groups)
            total = sum(_regressed(groups, specs[key]) for key in held.units)
            errors.append(_corrected(correction, total) / held.measured_ms - 1.0)
    kept = {k: v for k, v in predictor.error.items() if k in ("calibration_seconds", "units_in_spaces", "rounds")}
    kept["samples_used"] = len(samples)
    if errors:
        e = np.array(errors)
        kept.update({"archs": len(errors), "within_5": float(np.mean(np.abs(e) <= 0.05)),
                     "within_10": float(np.mean(np.abs(e) <= 0.10)), "max_abs": float(np.abs(e).max()),
                     "max_over": float(max(e.max(), 0.0)), "rmse_relative": float(np.sqrt(np.mean(e ** 2))),
                     "relative_errors": [round(float(v), 5) for v in e]})
    predictor.error = kept
    return predictor


# ---- calibration --------------------------------------------------------------------------------

def sample_archs(space: Any, count: int, seed: int, num_classes: int = 1000,
                 adjust: Callable[[dict[str, Any], random.Random], None] | None = None) -> list[Arch]:
    """`count` distinct architectures drawn uniformly from `space` (seeded); `adjust(params, rng)`, if
    given, changes each draw's parameters in place before it is decoded (e.g. to restrict mixers)."""
    rng = random.Random(seed)
    knobs = space.knobs()
    out: dict[str, Arch] = {}
    for _ in range(count * 20):
        if len(out) >= count:
            break
        params = {name: rng.choice(values) for name, values in knobs.items()}
        if adjust is not None:
            adjust(params, rng)
        arch = space.decode(params, num_classes)
        out.setdefault(arch.hash, arch)
    return list(out.values())


@dataclass
class _Network:
    """A calibration network made ready once (converted, compiled for profiling and for timing), then
    measured in several rounds."""

    arch: Arch
    labelled: list[tuple[str, Unit]]
    profiled: Any  # nas.latency._incontext.Profiled
    step: Any  # the timing step, compiled as nas.latency.measure compiles it
    key: Any  # CacheKey
    profiles: list[tuple[dict[str, float], float | None]] = field(default_factory=list)  # (ms per label, others)
    timings: list[Any] = field(default_factory=list)  # LatencyStats, one per round


def _prepare(arch: Arch, *, backend: str, threads: int, resolution: int, precision: str) -> _Network:
    from nas.latency._incontext import Profiled, convert, timing_step
    from nas.latency._measure import _model_key
    from nas.machine_lock import training

    ov_model = convert(arch, resolution, precision)
    with training():  # compiling loads the cores: no one times meanwhile
        profiled = Profiled(ov_model, threads, precision)
    return _Network(arch, labelled_units(arch, resolution), profiled, timing_step(ov_model, threads, precision),
                    _model_key(arch.hash, resolution, backend, threads, precision))


def _measure_round(network: _Network, settings: MeasureSettings, profile: bool) -> None:
    """Time the network as the search times it (one short attempt, see ARCH_SETTINGS) once more, and
    profile it per node first when `profile`."""
    from nas.latency._measure import _time

    if profile:
        network.profiles.append(network.profiled.run(settings))
    network.timings.append(_time(network.step, settings, network.key))


def _sample(network: _Network, settings: MeasureSettings) -> tuple[Sample, Any]:
    """The network's sample from its rounds, and the timing to cache. A slow spell of a shared host
    slows whole networks alike for seconds to tens of seconds, and only slows: the fastest quiet
    timing estimates the quiet machine, and each node's fastest quiet profile its share."""
    limit = settings.others_limit(network.profiled.threads)
    quiet_timings = [t for t in network.timings if not t.loaded]
    stats = min(quiet_timings or network.timings, key=lambda st: st.ms)
    profiles = [p for p in network.profiles if limit is None or (p[1] or 0.0) <= limit] or network.profiles
    labels = {label for per_label, _ in profiles for label in per_label}
    per_label = {label: min(p.get(label, 0.0) for p, _ in profiles) for label in labels}
    units = {unit.key: per_label.get(label, 0.0) for label, unit in network.labelled}
    stray = sum(ms for label, ms in per_label.items() if label not in dict(network.labelled))
    units[network.labelled[0][1].key] += stray  # nodes of no known unit (none expected): counted to the stem
    others = max(max((p[1] or 0.0) for p in profiles), stats.others_cpu or 0.0)
    sample = Sample(network.arch.hash, units, stats.ms, others, not quiet_timings,
                    [round(t.ms, 4) for t in network.timings])
    return sample, stats


def calibrate(spaces: Iterable[Any], *, backend: str = backends.DEFAULT_BACKEND, threads: int | None = None,
              resolution: int = 224, precision: str = DEFAULT_PRECISION, cache: LatencyCache | None = None,
              archs: int = CALIBRATION_ARCHS, seconds: float = CALIBRATION_SECONDS,
              arch_settings: MeasureSettings | None = None, seed: int = 0, progress: bool = True,
              exclude: Callable[[Arch], bool] | None = None, rounds: int = ROUNDS) -> tuple[Predictor, list[Arch]]:
    """Profile and time up to `archs` whole networks drawn from `spaces` (in turn, so every space is
    covered however many fit) within about `seconds`, then fit (see `fit`). Networks are made ready
    BATCH at a time, then timed in `rounds` round-robin rounds over the batch, profiled in the first
    PROFILE_ROUNDS of them (see `_sample`). Returns the predictor and the calibration archs.
    `exclude` keeps archs out of calibration (a benchmark's held-out set).
    """
    from tqdm import tqdm

    if backend != "openvino":
        raise UserError(f"the latency predictor calibrates on openvino only, not {backend!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    check_precision(precision, backend)
    threads = backends.check_threads(threads)
    settings = arch_settings or ARCH_SETTINGS
    spaces = list(spaces)
    started = time.monotonic()
    per_space = [[a for a in sample_archs(space, archs * 2, seed + 1000 + i) if not (exclude and exclude(a))]
                 for i, space in enumerate(spaces)]
    calibration: list[Arch] = []
    for draws in itertools.zip_longest(*per_space):  # round robin over the spaces
        calibration += [a for a in draws if a is not None and a.hash not in {b.hash for b in calibration}]
    calibration = calibration[:archs]
    units_in_spaces = len({u.key for s in spaces for u in space_units(s, resolution)})
    predictor = Predictor(backend, backends.device_name(backend), threads, resolution, precision,
                          backends.runtime_version(backend), machine_id(), {}, {}, {"*": 1.0, "const": 0.0},
                          created_at=time.time(), spaces=[getattr(s, "name", "") for s in spaces])
    timed: list[Arch] = []
    bar = tqdm(total=seconds, desc=f"calibrate {precision}", unit="s", disable=not progress, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")
    specs: dict[str, Unit] = {}
    per_arch = 0.0

    def tick() -> None:
        bar.n = min(seconds, time.monotonic() - started)
        bar.set_postfix_str(f"{len(timed)} networks", refresh=True)

    try:
        while len(timed) < len(calibration):
            left = seconds - (time.monotonic() - started)
            size = BATCH if not timed else min(BATCH, int(left // per_arch) if per_arch else BATCH)
            if size < (MIN_BATCH if timed else 1):  # a few networks' rounds lie seconds apart, in one phase
                break
            batch = [_prepare(arch, backend=backend, threads=threads, resolution=resolution, precision=precision)
                     for arch in calibration[len(timed):len(timed) + size]]
            tick()
            for round_number in range(rounds):
                for network in batch:
                    _measure_round(network, settings, profile=round_number < PROFILE_ROUNDS)
                tick()
            for network in batch:
                sample, stats = _sample(network, settings)
                if cache is not None:
                    cache.put(stats)
                predictor.samples.append(sample)
                specs.update({unit.key: unit for _, unit in network.labelled})
                timed.append(network.arch)
            del batch  # the compiled networks
            per_arch = (time.monotonic() - started) / len(timed)
            tick()
    finally:
        bar.close()
    if not timed:
        raise UserError("calibration timed no network; give it more time")
    predictor.unit_specs = {key: [u.kind, u.p] for key, u in specs.items()}
    predictor.error = {"calibration_seconds": round(time.monotonic() - started, 1), "units_in_spaces": units_in_spaces,
                       "rounds": rounds}
    return fit(predictor), timed


def refit(path: str | Path) -> Predictor:
    """Redo the fit of a saved calibration from its samples (no timing) and save it again, in the
    current schema: a calibration of an earlier schema keeps its measurements and gets the new model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.update(schema=PREDICTOR_SCHEMA, groups={"all": [0.0] * N_DESIGN}, correction={"*": 1.0, "const": 0.0})
        predictor = Predictor.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise PredictorError(f"{path}: not a calibration that can be refitted ({str(exc)[:120]})") from None
    if not predictor.samples or not predictor.unit_specs:
        raise PredictorError(f"{path}: holds no calibration samples to refit; run `python -m nas.latency --calibrate`")
    fit(predictor).save(path)
    return predictor


# ---- command line (python -m nas.latency --calibrate | --predict) --------------------------------

def calibrate_command(space_files: list[Path] | None, *, backend: str, threads: int | None,
                      resolution: int | None, precision: str, cache: LatencyCache | None, quick: bool,
                      path: Path | None, quiet: bool, widths: list[float] | None = None,
                      seconds: float = CALIBRATION_SECONDS) -> int:
    """Calibrate on this machine and save; prints where and the leave-one-out error. Without --space,
    the default space at widths x1 and x1.5 (the range nas.fit scales it to for 2-5 ms budgets here)."""
    from nas.space import DEFAULT_SPACE, load_space

    loaded = [load_space(f) for f in (space_files or [DEFAULT_SPACE])]
    widths = widths or ([1.0] if space_files else [1.0, 1.5])
    spaces = [s.scaled(w) for s in loaded for w in widths]
    targets = {s.resolution.target for s in spaces}
    if resolution is None and len(targets) > 1:
        raise UserError(f"the spaces target different resolutions {sorted(targets)}; pass --resolution")
    resolution = resolution or targets.pop()
    threads = backends.check_threads(threads)
    kwargs: dict[str, Any] = {"seconds": seconds}
    if quick:
        kwargs.update(arch_settings=MeasureSettings.quick(), archs=8, rounds=1)
    predictor, _ = calibrate(spaces, backend=backend, threads=threads, resolution=resolution, precision=precision,
                             cache=cache, progress=not quiet, **kwargs)
    out = predictor.save(path or predictor_path(backend, threads, resolution, precision))
    e = predictor.error
    loo = (f"; leave-one-out: {100 * e['within_10']:.0f}% within 10%, max {100 * e['max_abs']:.1f}%"
           if "archs" in e else "")
    print(f"calibrated {precision} on {len(predictor.samples)} networks ({len(predictor.unit_ms)} units) in "
          f"{e['calibration_seconds']:.0f} s{loo}; rejection margin {100 * predictor.margin:.0f}%; saved {out}")
    return 0


def refit_command(path: Path | None, *, backend: str, threads: int | None, resolution: int, precision: str) -> int:
    path = path or predictor_path(backend, threads, resolution, precision)
    if not path.is_file():
        raise PredictorError(f"no calibration to refit: {path} missing; run `python -m nas.latency --calibrate`")
    predictor = refit(path)
    e = predictor.error
    loo = f"; leave-one-out: {100 * e['within_10']:.0f}% within 10%" if "archs" in e else ""
    print(f"refitted {path} from {len(predictor.samples)} networks{loo}; "
          f"rejection margin {100 * predictor.margin:.0f}%")
    return 0


def predict_command(arch: Arch, label: str, *, backend: str, threads: int | None, resolution: int,
                    precision: str, path: Path | None, as_json: bool) -> int:
    started = time.perf_counter()
    predictor = load_predictor(path, backend=backend, threads=threads, resolution=resolution, precision=precision)
    prediction = predictor.predict(arch)
    seconds = time.perf_counter() - started
    if as_json:
        print(json.dumps({"model": label, **prediction.to_dict(), "backend": backend, "precision": precision,
                          "threads": predictor.threads, "resolution": resolution,
                          "runtime_version": predictor.runtime_version, "machine": predictor.machine,
                          "margin": predictor.margin, "seconds": seconds}, indent=2))
        return 0
    print(f"{label}: predicted {prediction.ms:.3f} ms {precision} | {backend} {predictor.runtime_version} | "
          f"{predictor.threads} threads | {resolution}x{resolution} ({prediction.units} units, "
          f"{prediction.regressed} from the regressions; margin {100 * predictor.margin:.0f}%)")
    return 0
