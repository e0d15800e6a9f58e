"""Measured latency: time a model (or an exported IR/ONNX file) on its deployment runtime.

    from nas.latency import measure, LatencyCache
    stats = measure(model, 224, backend="openvino", precision="fp32", cache=LatencyCache(path), key=arch.hash)
    stats.ms        # quiet-machine estimate (min of pass medians), in ms

Backends: openvino (default, CPU, sync single stream), onnxruntime, torch (eager), cuda.
Precisions: fp32 (default, pinned in every runtime), bf16, fp16, int8 (NNCF on OpenVINO), each
checked against what this machine supports. Every record carries the precision and a fingerprint
of the machine (`describe_machine()`). Precision and machines: docs/precision.md; CLI:
`python -m nas.latency --help`. Comparing models: `best_of_rounds` (interleaved rounds). The roofline
helpers (`count_flops`, `gemm_peak_gflops`, ...) import torch, so they load on first use.
"""

from typing import Any

from nas.latency._backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    IR_BACKENDS,
    check_backend,
    compile_openvino,
    count_fake_quantize,
    default_threads,
    device_name,
    ir_precision,
    openvino_config,
    ov_core,
    ov_read,
    runtime_version,
)
from nas.latency._cache import LatencyCache, default_cache_path
from nas.latency._machine import (
    cpu_features,
    cpu_name,
    describe_device,
    describe_machine,
    device_line,
    machine_id,
    machine_line,
)
from nas.latency._measure import file_key, lookup, measure, measure_ir
from nas.latency._precision import (
    DEFAULT_PRECISION,
    FLOAT_PRECISIONS,
    PRECISIONS,
    check_precision,
    supported_precisions,
)
from nas.latency._predictor import (
    Prediction,
    Predictor,
    PredictorError,
    calibrate,
    load_predictor,
    predictor_path,
)
from nas.latency._rounds import best_of_rounds
from nas.latency._stats import CacheKey, LatencyStats, summarize
from nas.latency._timing import MeasureSettings, add_wait_hook, cpu_clock, others_cores, remove_wait_hook, wait_line

_ROOFLINE = ("achieved_gflops", "arithmetic_intensity", "copy_bandwidth_gbs", "count_flops", "gemm_peak_gflops",
             "min_traffic_bytes", "roofline_gflops")


def __getattr__(name: str) -> Any:  # PEP 562: `import nas.latency` stays free of torch
    if name in _ROOFLINE:
        from nas.latency import _roofline

        return getattr(_roofline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_PRECISION",
    "FLOAT_PRECISIONS",
    "IR_BACKENDS",
    "PRECISIONS",
    "CacheKey",
    "LatencyCache",
    "LatencyStats",
    "MeasureSettings",
    "Prediction",
    "Predictor",
    "PredictorError",
    "achieved_gflops",
    "add_wait_hook",
    "arithmetic_intensity",
    "best_of_rounds",
    "calibrate",
    "check_backend",
    "check_precision",
    "compile_openvino",
    "copy_bandwidth_gbs",
    "count_fake_quantize",
    "count_flops",
    "cpu_clock",
    "cpu_features",
    "cpu_name",
    "default_cache_path",
    "default_threads",
    "describe_device",
    "describe_machine",
    "device_line",
    "device_name",
    "file_key",
    "gemm_peak_gflops",
    "ir_precision",
    "load_predictor",
    "lookup",
    "machine_id",
    "machine_line",
    "measure",
    "measure_ir",
    "min_traffic_bytes",
    "openvino_config",
    "others_cores",
    "ov_core",
    "ov_read",
    "predictor_path",
    "remove_wait_hook",
    "roofline_gflops",
    "runtime_version",
    "summarize",
    "supported_precisions",
    "wait_line",
]
