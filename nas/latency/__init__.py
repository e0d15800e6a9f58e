"""Measured latency: time a model (or an exported IR/ONNX file) on its deployment runtime.

    from nas.latency import measure, LatencyCache
    stats = measure(model, 224, backend="openvino", cache=LatencyCache(path), key=arch.hash)
    stats.ms        # quiet-machine estimate (min of pass medians), in ms

Backends: openvino (default, CPU, sync single stream), onnxruntime, torch (eager), cuda.
Method, cache and CLI: see design.md "Latency" and `python -m nas.latency --help`.
"""

from nas.latency._backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    IR_BACKENDS,
    check_backend,
    default_threads,
    device_name,
    openvino_config,
    runtime_version,
)
from nas.latency._cache import LatencyCache, default_cache_path
from nas.latency._measure import file_key, lookup, measure, measure_ir
from nas.latency._stats import CacheKey, LatencyStats, summarize
from nas.latency._timing import MeasureSettings

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "IR_BACKENDS",
    "CacheKey",
    "LatencyCache",
    "LatencyStats",
    "MeasureSettings",
    "check_backend",
    "default_cache_path",
    "default_threads",
    "device_name",
    "file_key",
    "lookup",
    "measure",
    "measure_ir",
    "openvino_config",
    "runtime_version",
    "summarize",
]
