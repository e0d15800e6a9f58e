"""measure() and measure_ir(): cache lookup, prepare on the backend, time under the machine lock.

A cached measurement flagged `loaded` (other processes kept the CPU busy throughout) is not served
as if quiet: a later visit (lookup, measure) re-measures it, at most LOADED_REMEASURES times; while
still loaded, the faster of the old and new figures is kept (load only slows a model down) with the
count raised. A quiet re-measurement replaces it. After that the flagged entry is served, flag kept.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nas.errors import UserError
from nas.latency import _backends as backends
from nas.latency._cache import LatencyCache
from nas.latency._machine import machine_id
from nas.latency._precision import DEFAULT_PRECISION, cache_tag, check_precision
from nas.latency._stats import CacheKey, LatencyStats
from nas.latency._timing import MeasureSettings, Step, sample
from nas.machine_lock import measuring, training

if TYPE_CHECKING:
    from torch import nn

CacheArg = LatencyCache | str | Path | None
LOADED_REMEASURES = 2  # later visits that re-measure a loaded cache entry before it is served as it is


def _as_cache(cache: CacheArg) -> LatencyCache | None:
    if cache is None or isinstance(cache, LatencyCache):
        return cache
    return LatencyCache(cache)


def _check_resolution(resolution: int) -> int:
    if int(resolution) < 8:
        raise UserError(f"resolution must be >= 8 pixels, got {resolution}")
    return int(resolution)


def _time(step: Step, settings: MeasureSettings | None, key: CacheKey) -> LatencyStats:
    settings = settings or MeasureSettings()
    if key.backend == "cuda":  # the host CPU's slow spells are not the GPU's
        settings = replace(settings, pace_factor=0.0)
    with measuring():  # exclusive: our own training is off these cores; other processes are watched
        result = sample(step, settings, threads=key.threads)
    return LatencyStats.from_summary(result.summary, backend=key.backend, runtime_version=key.runtime_version,
                                     device=key.device, threads=key.threads, resolution=key.resolution,
                                     attempts=result.attempts, others_cpu=result.others_cpu, key=key.key,
                                     precision=key.precision, machine=key.machine, loaded=result.loaded,
                                     waited_s=result.waited_s, pace=result.pace)


def servable(hit: LatencyStats | None) -> LatencyStats | None:
    """A cache hit to serve, or None when it is a loaded entry still due for re-measuring."""
    if hit is not None and hit.loaded and hit.loaded_remeasures < LOADED_REMEASURES:
        return None
    return hit


def _after_loaded(previous: LatencyStats | None, new: LatencyStats) -> LatencyStats:
    """What to store after re-measuring the loaded entry `previous` (see the module doc)."""
    if previous is None or not new.loaded:
        return new
    kept = new if new.ms <= previous.ms else previous
    return replace(kept, loaded_remeasures=previous.loaded_remeasures + 1)


def _model_key(key: str, resolution: int, backend: str, threads: int, precision: str) -> CacheKey:
    if precision == "int8":  # INT8 of a torch model is what the INT8 rules make of it: other rules, another model
        from nas.quant_rules import load_rules

        key = f"{key}+rules-{load_rules().digest()}{cache_tag(precision)}"
    return CacheKey(key, backend, backends.device_name(backend), resolution, threads,
                    backends.runtime_version(backend), precision, machine_id())


def lookup(cache: LatencyCache | str | Path, key: str, resolution: int = 224,
           backend: str = backends.DEFAULT_BACKEND, threads: int | None = None,
           precision: str = DEFAULT_PRECISION) -> LatencyStats | None:
    """The cached measurement `measure(..., cache=cache, key=key)` would return, else None.

    Lets a caller skip building the model on a hit.
    """
    backends.check_backend(backend)
    check_precision(precision, backend)
    store = _as_cache(cache)
    assert store is not None
    return servable(store.get(_model_key(key, _check_resolution(resolution), backend,
                                         backends.check_threads(threads), precision)))


def measure(model: nn.Module, resolution: int = 224, backend: str = backends.DEFAULT_BACKEND,
            threads: int | None = None, *, precision: str = DEFAULT_PRECISION, cache: CacheArg = None,
            key: str | None = None, settings: MeasureSettings | None = None, refresh: bool = False) -> LatencyStats:
    """Batch-1 latency of `model` at `resolution` x `resolution` on `backend` at `precision`.

    `threads` defaults to all cores. `precision` (fp32, bf16, fp16, int8) is pinned in the runtime;
    one the backend cannot run here raises BackendUnavailable. With a `cache` (a LatencyCache or a
    path), `key` names the model (use `arch.hash`): a hit returns without exporting anything;
    `refresh` re-measures; so does a visit to a `loaded` entry (module doc). The model is exported/compiled
    first, holding the machine lock shared (like training: other processes don't time meanwhile); then
    only the timing holds `measuring()`, and waits for other processes to leave the CPU (nas.latency._timing).
    """
    backends.check_backend(backend)
    check_precision(precision, backend)
    threads = backends.check_threads(threads)
    resolution = _check_resolution(resolution)
    store = _as_cache(cache)
    if store is not None and not key:
        raise ValueError("measure(cache=...) needs key= (e.g. arch.hash) to name the model")
    cache_key = _model_key(key or "", resolution, backend, threads, precision)
    previous = None
    if store is not None and not refresh:
        previous = store.get(cache_key)
        if servable(previous) is not None:
            return previous
    with ExitStack() as stack:
        with training():  # export/compile load the cores too: other processes' timing waits
            step = stack.enter_context(backends.model_runner(backend, model, resolution, threads, precision))
        stats = _after_loaded(previous, _time(step, settings, cache_key))
    if store is not None:
        store.put(stats)
    return stats


def file_key(path: str | Path) -> str:
    """Content hash of an exported model (an IR's .xml and its .bin), for caching by content."""
    path = Path(path)
    digest = hashlib.sha1()
    for part in (path, path.with_suffix(".bin") if path.suffix.lower() == ".xml" else None):
        if part is not None and part.is_file():
            with open(part, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return "file:" + digest.hexdigest()[:12]


def measure_ir(path: str | Path, backend: str = backends.DEFAULT_BACKEND, threads: int | None = None,
               *, precision: str = DEFAULT_PRECISION, resolution: int | None = None, cache: CacheArg = None,
               key: str | None = None, settings: MeasureSettings | None = None,
               refresh: bool = False) -> LatencyStats:
    """Latency of an exported model file: OpenVINO IR (.xml) or ONNX (.onnx), at `precision`.

    .xml runs on openvino, .onnx on onnxruntime or openvino. An INT8 IR (FakeQuantize ops) needs
    precision "int8"; a float one fp32, bf16 or fp16 (see `ir_precision`). The input shape is the
    file's own; `resolution` is needed only for a dynamic-shape file. With a cache, `key` defaults
    to a hash of the file contents, so re-exported identical files hit.
    """
    backends.check_backend(backend)
    check_precision(precision, backend)
    path = backends.check_model_file(path, backend)
    threads = backends.check_threads(threads)
    if resolution is not None:
        resolution = _check_resolution(resolution)
    store = _as_cache(cache)
    device, version, machine = backends.device_name(backend), backends.runtime_version(backend), machine_id()
    previous = None
    if store is not None and not refresh:
        key = key or file_key(path) + cache_tag(precision)
        cache_key = CacheKey(key, backend, device, backends.model_file_resolution(path, resolution),
                             threads, version, precision, machine)
        previous = store.get(cache_key)
        if servable(previous) is not None:
            return previous
    with ExitStack() as stack:
        with training():
            step, res = stack.enter_context(backends.ir_runner(backend, path, threads, resolution, precision))
        if store is not None:
            key = key or file_key(path) + cache_tag(precision)
        stats = _after_loaded(previous, _time(step, settings, CacheKey(key or "", backend, device, res, threads,
                                                                       version, precision, machine)))
    if store is not None:
        store.put(stats)
    return stats
