"""Runtimes that can time a model: each yields a `step()` that runs one inference, returning ms.

Preparation (export, compile, session creation) happens before the step is yielded, so callers
hold the machine lock only around timing. Runtimes are imported lazily: `import nas.latency`
must stay cheap for processes that only read the cache.

Timers: OpenVINO reports `InferRequest.latency`, the runtime's own timer around `infer()`, which
is what `benchmark_app` reports too (so the two agree like for like); the others use
`time.perf_counter` around the blocking call (Python call overhead is ~10-20 us included).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nas.errors import BackendUnavailable, UserError
from nas.latency._machine import cpu_name
from nas.latency._precision import DEFAULT_PRECISION, openvino_precision_config, torch_precision
from nas.threads import torch_threads

if TYPE_CHECKING:
    import torch
    from torch import nn

Step = Callable[[], float]

BACKENDS = ("openvino", "onnxruntime", "torch", "cuda")
DEFAULT_BACKEND = "openvino"
IR_BACKENDS = ("openvino", "onnxruntime")


def default_threads() -> int:
    """All cores this process may run on (the affinity mask, which os.cpu_count() ignores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_backend(backend: str) -> None:
    """Raise a UserError naming the allowed values, or BackendUnavailable if it cannot run here."""
    if backend not in BACKENDS:
        raise UserError(f"unknown latency backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "cuda" and not _torch().cuda.is_available():
        raise BackendUnavailable(
            f"backend 'cuda' needs a CUDA GPU, but none is available to torch {_torch().__version__} "
            f"on this machine; use one of: {', '.join(b for b in BACKENDS if b != 'cuda')}"
        )


def check_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if int(threads) < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    return int(threads)


def runtime_version(backend: str) -> str:
    if backend == "openvino":
        import openvino

        return openvino.__version__
    if backend == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    torch = _torch()
    return f"{torch.__version__} (CUDA {torch.version.cuda})" if backend == "cuda" else torch.__version__


def device_name(backend: str) -> str:
    if backend == "cuda":
        check_backend("cuda")
        return _torch().cuda.get_device_name(0)
    return cpu_name()


# --- OpenVINO ---------------------------------------------------------------------------------

@functools.cache
def ov_core() -> Any:
    import openvino as ov

    return ov.Core()


def openvino_config(threads: int, precision: str = DEFAULT_PRECISION) -> dict[str, str]:
    """Sync single-stream latency settings, the same as benchmark_app's
    `-hint none -nstreams 1 -nthreads T -nireq 1 -api sync -infer_precision P` (the CPU plugin's
    default hint is LATENCY; stating it keeps us on it if that default changes). The inference
    precision is always stated: the plugin's default is bf16 on CPUs with AVX-512 BF16 / AMX."""
    return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
            **openvino_precision_config(precision)}


def compile_openvino(model: Any, threads: int | None = None, precision: str = DEFAULT_PRECISION) -> Any:
    """Compile an openvino.Model or an .xml/.onnx path on CPU with the timing settings at `precision`."""
    source = ov_core().read_model(str(model)) if isinstance(model, str | Path) else model
    return ov_core().compile_model(source, "CPU", openvino_config(threads or default_threads(), precision))


def count_fake_quantize(ov_model: Any) -> int:
    """FakeQuantize ops in an OpenVINO model: > 0 for an NNCF INT8 model."""
    return sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())


def _check_ir_precision(path: Path, ov_model: Any, precision: str) -> None:
    quantized = count_fake_quantize(ov_model)
    if precision == "int8" and not quantized:
        raise UserError(f"{path}: not an INT8 model (no FakeQuantize ops); compress.quantize makes one, "
                        "or time it with --precision fp32|bf16|fp16")
    if precision != "int8" and quantized:
        raise UserError(f"{path}: an INT8 model ({quantized} FakeQuantize ops); time it with --precision int8")


def ir_precision(path: str | Path) -> str:
    """The precision a model file is deployed at: int8 if it has FakeQuantize ops, else fp32."""
    return "int8" if count_fake_quantize(ov_read(path)) else DEFAULT_PRECISION


def _ov_step(ov_model: Any, threads: int, data: np.ndarray, precision: str) -> Step:
    import openvino as ov

    compiled = ov_core().compile_model(ov_model, "CPU", openvino_config(threads, precision))
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(np.ascontiguousarray(data)))
    infer = request.infer

    def step() -> float:
        infer(share_outputs=True)  # no copy of the outputs we never read
        return request.latency

    return step


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 around a native reader: OpenVINO's frontends log lines of their own
    (absl, protobuf) about a file they reject, which would come before our one-line error."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


# Location-only lines of OpenVINO exception texts ("Exception from src/...cpp:84:", "Check '...' failed at ...:219:").
_WHERE_LINE = re.compile(r"^(Exception from |Check '.*' failed at )\S+:\d+:$")


def runtime_reason(exc: BaseException, path: str | Path) -> str:
    """The informative part of a runtime's exception text about `path`, on one bounded line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not _WHERE_LINE.match(line.strip())]
    text = lines[0] if lines else type(exc).__name__
    if text.startswith("Unable to read the model"):  # OpenVINO: no frontend recognises the bytes
        text = "no OpenVINO frontend recognises its contents"
    elif "failed:" in text:  # ONNX Runtime: "[ONNXRuntimeError] : 7 : ... Load model from P failed:<why>"
        text = text.rsplit("failed:", 1)[1].strip() or text
    text = " ".join(text.replace(str(path), "the file").split())
    return text if len(text) <= 160 else text[:157] + "..."


def _check_ir_files(path: Path) -> None:
    """An IR .xml needs its .bin beside it (OpenVINO's own message does not name it)."""
    if path.suffix.lower() != ".xml":
        return
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not an OpenVINO IR")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise UserError(f"{path}: its weights file {weights} is missing (an IR is an .xml/.bin pair)")


def ov_read(path: str | Path) -> Any:
    """openvino.Model from an .xml/.onnx file; UserError naming the file when it cannot be read
    (garbage, truncated or empty; an .xml whose .bin is missing or shorter than it expects)."""
    _check_ir_files(Path(path))
    try:
        with quiet_stderr():
            return ov_core().read_model(str(path))
    except Exception as exc:  # a truncated or foreign file: OpenVINO raises a plain RuntimeError
        reason = runtime_reason(exc, path)
        if "bin file" in reason:  # "Incorrect weights in bin file!": the .bin is shorter than the .xml says
            reason = f"{Path(path).with_suffix('.bin')} is shorter than the .xml describes: {reason}"
        raise UserError(f"{path}: cannot read the model ({reason})") from None


def _ov_read(path: Path, resolution: int | None) -> tuple[Any, np.ndarray, int]:
    """Read .xml or .onnx; fix a dynamic input shape to [1, 3, R, R]; return model, input, R."""
    model = ov_read(path)
    if len(model.inputs) != 1:
        raise UserError(f"{path}: expected one input, found {len(model.inputs)}")
    port = model.inputs[0]
    if port.get_partial_shape().is_dynamic:
        if resolution is None:
            raise UserError(f"{path}: input shape {port.get_partial_shape()} is dynamic; give a resolution")
        model.reshape({port.get_any_name(): [1, 3, resolution, resolution]})
        port = model.inputs[0]
    shape = list(port.get_shape())
    side = _check_shape(path, shape, resolution)
    dtype = port.get_element_type().to_dtype()
    return model, _fill(shape, dtype), side


# --- ONNX Runtime ------------------------------------------------------------------------------

def _ort_step(onnx_path: Path, threads: int, resolution: int | None) -> tuple[Step, int]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        with quiet_stderr():
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"{onnx_path}: cannot load the model ({runtime_reason(exc, onnx_path)})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise UserError(f"{onnx_path}: expected one input, found {len(inputs)}")
    dims = inputs[0].shape
    if any(not isinstance(d, int) for d in dims):
        if resolution is None:
            raise UserError(f"{onnx_path}: the input shape {dims} is dynamic; give a resolution")
        dims = [1, 3, resolution, resolution]
    side = _check_shape(onnx_path, dims, resolution)
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(uint8)": np.uint8}.get(inputs[0].type, np.float32)
    feed = {inputs[0].name: _fill(dims, dtype)}
    run = session.run
    clock = time.perf_counter

    def step() -> float:
        start = clock()
        run(None, feed)
        return (clock() - start) * 1e3

    return step, side


# --- PyTorch -----------------------------------------------------------------------------------

def _torch() -> Any:
    import torch  # lazily: the CLI's error paths and cache-only users need not pay ~2 s for it

    return torch


def _torch_step(model: nn.Module, data: torch.Tensor, sync: Callable[[], None] | None) -> Step:
    torch = _torch()
    clock = time.perf_counter

    def step() -> float:
        with torch.inference_mode():
            start = clock()
            model(data)
            if sync is not None:
                sync()  # CUDA launches are asynchronous: wait for the kernels
            return (clock() - start) * 1e3

    return step


# --- entry points ------------------------------------------------------------------------------

def _check_shape(path: Path, shape: list[Any], resolution: int | None) -> int:
    """The image side of a batch-1 NCHW float input or of a shipped uint8 NHWC image input [1, R, R, 3]."""
    if len(shape) != 4 or shape[0] != 1:
        raise UserError(f"{path}: expected a batch-1 NCHW (or NHWC image) input, found shape {shape}")
    nhwc = shape[3] == 3 and shape[1] != 3
    side = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
    if resolution is not None and side != (resolution, resolution):
        raise UserError(f"{path}: the input shape is fixed at {shape}, not resolution {resolution}")
    return int(side[0])


def _fill(shape: list[int], dtype: Any) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):  # a uint8 image input
        return np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _synthetic_calibration(resolution: int, count: int = 8) -> list[np.ndarray]:
    """Random images for INT8 latency: scales from them are wrong for accuracy, not for speed."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, resolution, resolution)).astype(np.float32) for _ in range(count)]


@contextmanager
def nncf_progress_hidden() -> Iterator[None]:
    """NNCF draws rich progress bars on rich's global console at every quantization: a search that
    quantizes each candidate would bury its own progress line under them."""
    import rich

    console = rich.get_console()
    was_quiet, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = was_quiet


@contextmanager
def model_runner(backend: str, model: nn.Module, resolution: int, threads: int,
                 precision: str = DEFAULT_PRECISION) -> Iterator[Step]:
    """Prepare `model` on `backend` at `precision` (export/compile/quantize outside the caller's
    timing) and yield step. INT8 quantizes the OpenVINO model with NNCF and the project's float-op
    rules on synthetic calibration images (latency does not depend on the scales)."""
    from nas.export import convert_openvino, example_input, export_onnx

    check_backend(backend)
    torch = _torch()
    was_training = model.training
    model.eval()
    try:
        if backend == "openvino":
            ov_model = convert_openvino(model, resolution)
            if precision == "int8":
                from nas.quantization import mixers_of, quantize_openvino

                with nncf_progress_hidden():
                    ov_model = quantize_openvino(ov_model, _synthetic_calibration(resolution), mixers=mixers_of(model))
            yield _ov_step(ov_model, threads, example_input(resolution).numpy(), precision)
        elif backend == "onnxruntime":
            with tempfile.TemporaryDirectory(prefix="vitnas-latency-") as tmp:
                onnx_path = export_onnx(model, Path(tmp) / "model.onnx", resolution)
                step, _ = _ort_step(onnx_path, threads, resolution)
            yield step  # the session holds the graph in memory; the file is no longer needed
        elif backend == "torch":
            with torch_threads(threads), torch_precision(precision, "cpu"):
                yield _torch_step(model, example_input(resolution), None)
        else:  # cuda: a copy, so the caller's model stays where it was
            with torch_threads(threads), torch_precision(precision, "cuda"):
                gpu_model = copy.deepcopy(model).to("cuda").eval()
                yield _torch_step(gpu_model, example_input(resolution).to("cuda"), torch.cuda.synchronize)
    finally:
        model.train(was_training)


def check_model_file(path: str | Path, backend: str) -> Path:
    """Validate an exported model file for `backend`; UserError naming what is wrong."""
    path = Path(path)
    if backend not in IR_BACKENDS:
        raise UserError(f"cannot time a model file on backend {backend!r}; allowed: {', '.join(IR_BACKENDS)}")
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".xml", ".onnx"):
        raise UserError(f"{path}: unsupported model file type {suffix!r}; allowed: .xml, .onnx")
    if backend == "onnxruntime" and suffix != ".onnx":
        raise UserError(f"{path}: onnxruntime reads .onnx files only; use backend 'openvino' for IR")
    return path


def model_file_resolution(path: Path, resolution: int | None) -> int:
    """The resolution a model file will run at (its fixed input side, or `resolution`)."""
    if resolution is not None:
        return resolution
    return _ov_read(path, None)[2]  # reading (not compiling) is cheap; ORT's ONNX reads the same


@contextmanager
def ir_runner(backend: str, path: str | Path, threads: int, resolution: int | None = None,
              precision: str = DEFAULT_PRECISION) -> Iterator[tuple[Step, int]]:
    """Prepare an exported model file; yield (step, resolution it runs at).

    .xml (OpenVINO IR) runs on openvino; .onnx on onnxruntime or openvino (which reads ONNX).
    An INT8 file (FakeQuantize ops) runs at precision int8 only, a float file at a float precision.
    """
    path = check_model_file(path, backend)
    if backend == "openvino":
        ov_model, data, res = _ov_read(path, resolution)
        _check_ir_precision(path, ov_model, precision)
        yield _ov_step(ov_model, threads, data, precision), res
    else:
        yield _ort_step(path, threads, resolution)
