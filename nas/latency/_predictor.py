"""Latency predictor: an architecture's latency from its `Arch` alone, without building or converting it.

An architecture is cut into units (the stem, each stage's downsampling, each stage body block, the
head) at their exact input shapes. Calibration (`calibrate`) times every unit a search space can
produce as its own small OpenVINO network (cached in the latency cache under `unit:<digest>` keys),
fits a per-kind regression on analytic features (MACs, activation elements) for units it has not
timed, then measures a few whole sampled architectures and fits a whole-network correction

    latency = a * sum(unit ms) + b * units + c

(an isolated unit pays its own per-inference overhead and input/output reorders; a network pays
them once). Prediction is a few dictionary lookups: no torch, well under a millisecond.

The calibration is saved as JSON under the cache directory, one file per (backend, threads,
precision, resolution), and carries the runtime version and machine fingerprint it was measured
with: `load_predictor` refuses a file from another runtime or machine (UserError, one line).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
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
from nas.latency._stats import CacheKey
from nas.latency._timing import MeasureSettings
from nas.mixers import mixer_info

PREDICTOR_SCHEMA = 1
CALIBRATION_SECONDS = 540.0  # the whole command stays under 10 minutes with start-up and saving
CALIBRATION_ARCHS = 20  # whole architectures for the network-level correction
# Units are small (0.02-1 ms): short passes are enough, and hundreds of them must fit the budget, so
# they do not wait for a quiet CPU (calibrate in a quiet window); a unit timed while other processes
# used more than UNIT_OTHERS_LIMIT cores is timed once more and the faster figure kept.
UNIT_SETTINGS = MeasureSettings(warmup_iters=5, warmup_seconds=0.05, passes=3, min_samples=20,
                                min_seconds_per_pass=0.05, max_seconds_per_pass=0.3, max_retries=1,
                                max_others_cpu=0.0)
UNIT_OTHERS_LIMIT = 0.3
MIN_MARGIN = 0.10  # rejection margin floor (relative over-prediction tolerated before rejecting)


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

    def input_shape(self) -> tuple[int, int, int, int]:
        p = self.p
        channels = 3 if self.kind == "stem" else p["cin"] if self.kind in ("downsample", "head") else p["width"]
        return (1, channels, p["side"], p["side"])

    def build(self) -> Any:
        """The torch module this unit times (imports torch and nas.models)."""
        from nas.models.backbone import build_downsample, build_head
        from nas.models.blocks import build_stem
        from nas.models.registry import mixer_builder

        p = self.p
        if self.kind == "stem":
            return build_stem(p["kind"], p["width"], p["depth"])
        if self.kind == "head":
            arch = Arch(stages=(), head_kind=p["kind"], head_widths=tuple(p["widths"]), num_classes=p["classes"])
            return build_head(arch, p["cin"])
        if self.kind == "downsample":  # a built-in mixer with the same downsampling norm variant
            spec = StageSpec("mbconv" if p.get("full_norm") else "catm", 0, p["width"], p.get("expand", 4.0),
                             p["downsample"])
            return build_downsample(spec, p["cin"])
        spec = StageSpec(**{k: v for k, v in p.items() if k != "side"})
        return mixer_builder(spec.mixer)(spec)

    def features(self) -> tuple[float, float]:
        """(MMACs, M activation elements): rough analytic counts for the per-group regression."""
        p = self.p
        side = p["side"]
        n = side * side
        if self.kind == "stem":
            w, out = p["width"], (side + 1) // 2
            if p["kind"] == "patch":
                m, a = 768 * w * (side // 16) ** 2, 3 * n + w * (side // 16) ** 2
            elif p["kind"] == "conv2":
                m, a = 27 * w // 2 * out ** 2 + 9 * w // 2 * w * ((out + 1) // 2) ** 2, 3 * n + w * out ** 2
            else:
                m, a = (27 * w + p["depth"] * (9 * w + w * w)) * out ** 2, 3 * n + (1 + 4 * p["depth"]) * w * out ** 2
        elif self.kind == "head":
            c, classes = p["cin"], p["classes"]
            widths = p["widths"] or [c, c]
            m = c * widths[0] * n + widths[0] * widths[1] + widths[1] * classes if p["kind"] == "evit" \
                else c * n + c * classes
            a = c * n * 2
        elif self.kind == "downsample":
            cin, cout, out = p["cin"], p["width"], (side + 1) // 2
            if p["downsample"] == "conv":
                m, a = 9 * cin * cout * out ** 2, cin * n + cout * out ** 2
            elif p["downsample"] == "mbconv":
                mid = round(cin * p["expand"])
                m = cin * mid * n + 9 * mid * out ** 2 + mid * cout * out ** 2
                a = cin * n + mid * n + mid * out ** 2 + cout * out ** 2
            else:
                m, a = cin * cout * n, (cin + cout) * n
        else:
            m, a = _body_features(p, n)
        return m / 1e6, a / 1e6


def _body_features(p: dict[str, Any], n: int) -> tuple[float, float]:
    w, depth, mixer = p["width"], p["depth"], p["mixer"]
    mid = round(w * p["expand"])
    ffn = n * (2 * w * mid + 9 * mid)
    if mixer == "mbconv":
        return depth * ffn, depth * n * (2 * w + 3 * mid)
    if mixer == "catm":
        return depth * n * (5 * w * w + 67 * w + 2 * w * mid), depth * n * (14 * w + mid)
    if mixer == "litemla":
        d = p["head_dim"]
        return depth * (n * (5 * w * w + 75 * w + 7 * w * d) + ffn), depth * n * (10 * w + 3 * mid)
    if mixer == "glsra":
        keep = min(n - 1, max(1, round(p["keep_ratio"] * n)))
        side = int(math.isqrt(n))
        grid = max(g for g in range(1, min(side, p["pool_size"]) + 1) if side % g == 0) ** 2
        tokens, context = keep + p["fusion_tokens"], grid + p["fusion_tokens"]
        block = tokens * (3 * w * w + 2 * w * mid) + context * 2 * w * w + grid * w * w + 2 * tokens * context * w
        stage = n * 25 * w + 4 * p["fusion_tokens"] * (n - keep) * w
        return stage + depth * block, n * w * 8 + depth * tokens * (6 * w + mid)
    return depth * ffn, depth * n * 4 * w  # a mixer added later: conv-like guess, refined by its own timings


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


def _body_terms(spec: StageSpec, side: int) -> list[tuple[Unit, float]]:
    """A stage body as units: plain stages are `depth` times a one-block body; a glsra stage (token
    selection and fusion around its blocks) is interpolated from its one- and two-block bodies."""
    if spec.depth == 0:
        return []
    base = _body_params(spec)
    one = Unit.of("body", **base, depth=1, side=side)
    if spec.mixer != "glsra":
        return [(one, float(spec.depth))]
    if spec.depth == 1:
        return [(one, 1.0)]
    two = Unit.of("body", **base, depth=2, side=side)
    return [(one, 2.0 - spec.depth), (two, spec.depth - 1.0)]


def decompose(arch: Arch, resolution: int) -> list[tuple[Unit, float]]:
    """The units of `arch` at `resolution`, each with its multiplicity (see `_body_terms`)."""
    terms: list[tuple[Unit, float]] = [
        (Unit.of("stem", kind=arch.stem_kind, width=arch.stem_width,
                 depth=arch.stem_depth if arch.stem_kind == "dsconv" else 0, side=resolution), 1.0)]
    side, width = stem_side(arch.stem_kind, resolution), arch.stem_width
    for spec in arch.stages:
        down = _downsample_unit(spec, width, side)
        if down is not None:
            terms.append((down, 1.0))
        if spec.downsample != "none":
            side = (side + 1) // 2
        terms += _body_terms(spec, side)
        width = spec.width
    terms.append((Unit.of("head", kind=arch.head_kind, cin=width, side=side, classes=arch.num_classes,
                          widths=list(arch.head_widths) if arch.head_kind == "evit" else []), 1.0))
    return terms


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
                    for depth in depths or [0]:
                        for unit, _ in _body_terms(replace(spec, depth=depth), out):
                            add(unit)
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
    regressed: int  # units predicted by their group's regression (never timed)

    def to_dict(self) -> dict[str, Any]:
        return {"predicted_ms": self.ms, "unit_sum_ms": self.unit_sum_ms, "units": self.units,
                "regressed_units": self.regressed}


@dataclass
class Predictor:
    """A calibration: unit timings, per-group regressions, the network-level correction."""

    backend: str
    device: str
    threads: int
    resolution: int
    precision: str
    runtime_version: str
    machine: str
    unit_ms: dict[str, float]
    groups: dict[str, list[float]]  # group -> [c0, c_macs, c_elems] (ms)
    correction: list[float]  # [a, b, c]: a * unit sum + b * units + c
    error: dict[str, Any] = field(default_factory=dict)  # leave-one-out errors on the calibration archs
    created_at: float = 0.0
    spaces: list[str] = field(default_factory=list)
    archs: list[str] = field(default_factory=list)  # hashes of the whole archs the correction was fitted on

    @property
    def margin(self) -> float:
        """Relative over-prediction tolerated before a candidate is rejected unmeasured: the largest
        leave-one-out over-prediction of the calibration (its p99 with so few archs), at least MIN_MARGIN."""
        return max(MIN_MARGIN, float(self.error.get("p99_over", 0.0)))

    def regressed_ms(self, unit: Unit) -> float:
        coef = self.groups.get(unit.group) or self.groups.get("all", [0.0, 0.0, 0.0])
        macs, elems = unit.features()
        return max(1e-4, coef[0] + coef[1] * macs + coef[2] * elems)

    def unit_ms_of(self, unit: Unit) -> tuple[float, bool]:
        """(ms, regressed) of one unit: its timing, else its one-block sibling's timing scaled by the
        regression (a two-block glsra body left untimed), else the regression."""
        hit = self.unit_ms.get(unit.key)
        if hit is not None:
            return hit, False
        if unit.kind == "body" and unit.p["depth"] > 1:
            sibling = Unit.of("body", **{**unit.p, "depth": 1})
            timed = self.unit_ms.get(sibling.key)
            if timed is not None:
                return timed * self.regressed_ms(unit) / self.regressed_ms(sibling), True
        return self.regressed_ms(unit), True

    def terms(self, arch: Arch) -> tuple[float, float, int]:
        total, count, regressed = 0.0, 0.0, 0
        for unit, times in decompose(arch, self.resolution):
            ms, guessed = self.unit_ms_of(unit)
            total += times * ms
            count += times  # isolated runs each paid one inference's overhead (glsra's interpolation: once)
            regressed += guessed
        return total, count, regressed

    def predict(self, arch: Arch) -> Prediction:
        total, count, regressed = self.terms(arch)
        a, b, c = self.correction
        return Prediction(max(0.0, a * total + b * count + c), total, round(count), regressed)

    # ---- persistence ----
    def to_dict(self) -> dict[str, Any]:
        return {"schema": PREDICTOR_SCHEMA, "backend": self.backend, "device": self.device, "threads": self.threads,
                "resolution": self.resolution, "precision": self.precision,
                "runtime_version": self.runtime_version, "machine": self.machine, "created_at": self.created_at,
                "spaces": self.spaces, "archs": self.archs, "correction": self.correction, "error": self.error,
                "groups": self.groups, "unit_ms": self.unit_ms}

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
            correction=[float(x) for x in data["correction"]], error=dict(data.get("error", {})),
            created_at=float(data.get("created_at", 0.0)), spaces=list(data.get("spaces", [])),
            archs=[str(h) for h in data.get("archs", [])])
        if len(predictor.correction) != 3 or any(len(v) != 3 for v in predictor.groups.values()):
            raise ValueError("malformed coefficients")
        if not all(map(math.isfinite, [*predictor.correction, *predictor.unit_ms.values()])):
            raise ValueError("non-finite numbers")
        return predictor

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
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
                             f"`python -m nas.latency --calibrate --threads {threads}` first")
    try:
        predictor = Predictor.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise PredictorError(f"{path}: not a usable predictor file ({str(exc)[:120]}); delete it and run "
                             "`python -m nas.latency --calibrate` again") from None
    wanted = {"backend": backend, "threads": threads, "resolution": resolution, "precision": precision,
              "runtime_version": backends.runtime_version(backend), "device": backends.device_name(backend),
              "machine": machine_id()}
    for name, value in wanted.items():
        if getattr(predictor, name) != value:
            raise PredictorError(f"{path}: calibrated for {name} {getattr(predictor, name)!r}, this is {value!r}; "
                                 "recalibrate with `python -m nas.latency --calibrate`")
    return predictor


# ---- calibration --------------------------------------------------------------------------------

def _wrappers(unit: Unit) -> tuple[Any, Any]:
    """(unit between 1x1 convs, the 1x1 convs alone). Timed alone a unit would read and write plain
    NCHW tensors, and OpenVINO then picks other layouts and kernels than inside a network (an
    isolated CAS-ViT block at 56x56 ran 2x slower); between convs it sees the blocked layouts of a
    network, and the difference of the two timings is the unit's share of a network's latency."""
    from torch import nn

    p = unit.p
    cin, side = unit.input_shape()[1], p["side"]
    if unit.kind == "head":
        return nn.Sequential(nn.Conv2d(cin, cin, 1), unit.build()), nn.Conv2d(cin, cin, 1)
    out_side = stem_side(p["kind"], side) if unit.kind == "stem" else \
        side if p.get("downsample") == "none" else (side + 1) // 2 if unit.kind == "downsample" else side
    cout, stride = p["width"], max(1, side // out_side)
    pre = [] if unit.kind == "stem" else [nn.Conv2d(cin, cin, 1)]
    wrapped = nn.Sequential(*pre, unit.build(), nn.Conv2d(cout, cout, 1))
    return wrapped, nn.Sequential(*pre, nn.Conv2d(cin, cout, 1, stride=stride))


def _time_module(module: Any, shape: tuple[int, ...], key: CacheKey, threads: int, precision: str,
                 cache: LatencyCache | None, settings: MeasureSettings, refresh: bool) -> float:
    import warnings

    import openvino as ov
    import torch

    from nas.latency._measure import _time
    from nas.machine_lock import training

    if cache is not None and not refresh:
        hit = cache.get(key)
        if hit is not None and (hit.others_cpu or 0.0) <= UNIT_OTHERS_LIMIT:  # a loaded timing is redone
            return hit.ms
    data = torch.randn(*shape)
    with training(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(module.eval(), example_input=data, input=[shape])
        step = backends._ov_step(ov_model, threads, data.numpy(), precision)
    stats = _time(step, settings, key)
    if (stats.others_cpu or 0.0) > UNIT_OTHERS_LIMIT:
        stats = min(stats, _time(step, settings, key), key=lambda s: s.ms)
    if cache is not None:
        cache.put(stats)
    return stats.ms


def measure_unit(unit: Unit, backend: str, threads: int, resolution: int, precision: str,
                 cache: LatencyCache | None, settings: MeasureSettings = UNIT_SETTINGS,
                 refresh: bool = False) -> float:
    """A unit's share of a network's latency: its OpenVINO timing between two 1x1 convs minus the
    convs' own (see `_wrappers`), at its exact input shape; both timings cached."""
    import torch

    torch.manual_seed(0)
    wrapped, wrapper = _wrappers(unit)
    shape = unit.input_shape()

    def key(name: str) -> CacheKey:
        return CacheKey(name, backend, backends.device_name(backend), resolution, threads,
                        backends.runtime_version(backend), precision, machine_id())

    # The wrapper depends only on the boundary shapes: many units share one timing.
    boundary = "wrap:" + hashlib.sha1(f"{shape}{wrapper!r}".encode()).hexdigest()[:12]
    outer = _time_module(wrapped, shape, key(unit.key.replace("unit:", "wrapped:")), threads, precision, cache,
                         settings, refresh)
    inner = _time_module(wrapper, shape, key(boundary), threads, precision, cache, settings, refresh)
    return max(outer - inner, 0.001)


def _fit_groups(units: list[Unit], unit_ms: dict[str, float]) -> dict[str, list[float]]:
    """Per group, non-negative least squares of ms on [1, MMACs, M elements] (and one over all units)."""
    from scipy.optimize import nnls

    def fit(members: list[Unit]) -> list[float]:
        x = np.array([[1.0, *u.features()] for u in members])
        y = np.array([unit_ms[u.key] for u in members])
        scale = np.maximum(x.max(0), 1e-9)
        coef, _ = nnls(x / scale, y)
        return [float(v) for v in coef / scale]

    measured = [u for u in units if u.key in unit_ms]
    groups: dict[str, list[Unit]] = {}
    for unit in measured:
        groups.setdefault(unit.group, []).append(unit)
    out = {name: fit(members) for name, members in groups.items() if len(members) >= 2}
    if measured:
        out["all"] = fit(measured)
    return out


def _fit_correction(rows: list[tuple[float, float, float]]) -> list[float]:
    """Least squares of measured ms on [unit sum, units, 1]; a plain scale when too few rows."""
    x = np.array([[s, n, 1.0] for s, n, _ in rows])
    y = np.array([m for _, _, m in rows])
    if len(rows) < 6:
        return [float(np.sum(y * x[:, 0]) / max(np.sum(x[:, 0] ** 2), 1e-12)), 0.0, 0.0]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return [float(v) for v in coef]


def _loo_errors(rows: list[tuple[float, float, float]]) -> dict[str, Any]:
    """Leave-one-out relative errors (predicted / measured - 1) of the correction on the calibration archs."""
    if len(rows) < 7:
        return {}
    errors = []
    for i in range(len(rows)):
        a, b, c = _fit_correction(rows[:i] + rows[i + 1:])
        s, n, m = rows[i]
        errors.append((a * s + b * n + c) / m - 1.0)
    e = np.array(errors)
    return {"archs": len(rows), "rows_sum_units_measured": [[round(v, 4) for v in row] for row in rows],
            "within_5": float(np.mean(np.abs(e) <= 0.05)),
            "within_10": float(np.mean(np.abs(e) <= 0.10)), "max_abs": float(np.abs(e).max()),
            "p99_over": float(np.percentile(np.maximum(e, 0.0), 99)), "relative_errors": [float(v) for v in e]}


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


def calibrate(spaces: Iterable[Any], *, backend: str = backends.DEFAULT_BACKEND, threads: int | None = None,
              resolution: int = 224, precision: str = DEFAULT_PRECISION, cache: LatencyCache | None = None,
              archs: int = CALIBRATION_ARCHS, seconds: float = CALIBRATION_SECONDS,
              unit_settings: MeasureSettings = UNIT_SETTINGS, arch_settings: MeasureSettings | None = None,
              seed: int = 0, refresh: bool = False, progress: bool = True,
              exclude: Callable[[Arch], bool] | None = None) -> tuple[Predictor, list[Arch]]:
    """Time the units of `spaces`, fit the regressions, time `archs` whole architectures for the
    correction, all within about `seconds`. Returns the predictor and the calibration archs.

    Units go first (the correction needs their sums); if time runs short, the rest of the units
    are left to the regressions and fewer whole archs are timed. `exclude` keeps archs out of
    calibration (a benchmark's held-out set).
    """
    from tqdm import tqdm

    from nas.latency._measure import measure

    if backend != "openvino":
        raise UserError(f"the latency predictor calibrates on openvino only, not {backend!r}")
    check_precision(precision, backend)
    if precision == "int8":
        raise UserError("the latency predictor does not calibrate int8 yet; use fp32, bf16 or fp16")
    threads = backends.check_threads(threads)
    spaces = list(spaces)
    started = time.monotonic()
    units: dict[str, Unit] = {}
    for space in spaces:
        for unit in space_units(space, resolution):
            units.setdefault(unit.key, unit)
    rng = random.Random(seed)
    calibration: list[Arch] = []
    per_space = math.ceil(archs / max(len(spaces), 1))
    for i, space in enumerate(spaces):
        drawn = sample_archs(space, per_space * 3, seed + 1000 + i)
        calibration += [a for a in drawn if not (exclude and exclude(a))][:per_space]
    rng.shuffle(calibration)
    calibration = calibration[:archs]
    arch_reserve = 7.5 * len(calibration)  # seconds a whole arch takes (convert + timing), kept for the correction
    bar = tqdm(total=len(units) + len(calibration), desc="calibrate", unit="net", disable=not progress,
               file=sys.stderr)
    unit_ms: dict[str, float] = {}
    order = list(units.values())
    rng.shuffle(order)  # if time runs out, the timed units are a fair sample for the regressions ...
    order.sort(key=lambda u: u.kind == "body" and u.p["depth"] > 1)  # ... two-block bodies (scalable) last
    try:
        for unit in order:
            if time.monotonic() - started > seconds - arch_reserve:
                break
            unit_ms[unit.key] = measure_unit(unit, backend, threads, resolution, precision, cache, unit_settings,
                                             refresh)
            bar.update(1)
        bar.total = len(unit_ms) + len(calibration)
        predictor = Predictor(backend, backends.device_name(backend), threads, resolution, precision,
                              backends.runtime_version(backend), machine_id(), unit_ms,
                              _fit_groups(list(units.values()), unit_ms), [1.0, 0.0, 0.0], created_at=time.time(),
                              spaces=[getattr(s, "name", "") for s in spaces])
        rows: list[tuple[float, float, float]] = []
        timed: list[Arch] = []
        from nas.models import build_model

        for arch in calibration:
            if time.monotonic() - started > seconds and len(rows) >= 8:
                break
            stats = measure(build_model(arch), resolution, backend, threads, precision=precision,
                            settings=arch_settings)
            total, count, _ = predictor.terms(arch)
            rows.append((total, count, stats.ms))
            timed.append(arch)
            bar.update(1)
    finally:
        bar.close()
    predictor.correction = _fit_correction(rows)
    predictor.archs = [a.hash for a in timed]
    predictor.error = _loo_errors(rows)
    predictor.error["calibration_seconds"] = round(time.monotonic() - started, 1)
    predictor.error["units_timed"] = len(unit_ms)
    predictor.error["units_in_spaces"] = len(units)
    return predictor, timed


# ---- command line (python -m nas.latency --calibrate | --predict) --------------------------------

def calibrate_command(space_files: list[Path] | None, *, backend: str, threads: int | None,
                      resolution: int | None, precision: str, cache: LatencyCache | None, quick: bool,
                      refresh: bool, path: Path | None, quiet: bool) -> int:
    """Calibrate on this machine and save; prints where and the leave-one-out error."""
    from nas.space import DEFAULT_SPACE, load_space

    spaces = [load_space(f) for f in (space_files or [DEFAULT_SPACE])]
    targets = {s.resolution.target for s in spaces}
    if resolution is None and len(targets) > 1:
        raise UserError(f"the spaces target different resolutions {sorted(targets)}; pass --resolution")
    resolution = resolution or targets.pop()
    threads = backends.check_threads(threads)
    kwargs: dict[str, Any] = {}
    if quick:
        kwargs = {"unit_settings": MeasureSettings.quick(), "arch_settings": MeasureSettings.quick(), "archs": 8}
    predictor, _ = calibrate(spaces, backend=backend, threads=threads, resolution=resolution, precision=precision,
                             cache=cache, refresh=refresh, progress=not quiet, **kwargs)
    out = predictor.save(path or predictor_path(backend, threads, resolution, precision))
    e = predictor.error
    loo = (f"; leave-one-out on {e['archs']} archs: {100 * e['within_10']:.0f}% within 10%, max "
           f"{100 * e['max_abs']:.1f}%" if "archs" in e else "")
    print(f"calibrated {len(predictor.unit_ms)} units of {e['units_in_spaces']} in {e['calibration_seconds']:.0f} s"
          f"{loo}; rejection margin {100 * predictor.margin:.0f}%; saved {out}")
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
