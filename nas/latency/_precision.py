"""Inference precision: a setting of every measurement, never the runtime's silent default.

OpenVINO's CPU plugin runs an FP32 IR in bf16 when the CPU has AVX-512 BF16 / AMX (its default
INFERENCE_PRECISION_HINT there is bf16), so "FP32" latencies and outputs depend on the machine unless
the hint is pinned. Here every precision maps to explicit runtime settings (kept as data below):

  fp32  OpenVINO hint f32; torch: float32 matmuls at "highest" and TF32 off on CUDA; ORT's CPU EP is fp32
  bf16  OpenVINO hint bf16 (needs BF16 in the plugin's OPTIMIZATION_CAPABILITIES); torch autocast bf16
  fp16  OpenVINO hint f16 (needs FP16 in the capabilities); torch autocast fp16 on CUDA
  int8  an NNCF INT8 model (FakeQuantize ops) on OpenVINO; the ops it keeps float (and the dequantized
        tensors between INT8 ops) run in bf16 where the plugin has BF16 (OpenVINO's own default for
        an INT8 IR there), else f32 (AVX2-only CPUs): `int8_float_hint`
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nas.errors import BackendUnavailable, UserError
from nas.latency._machine import cpu_features, openvino_capabilities

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
DEFAULT_PRECISION = "fp32"
FLOAT_PRECISIONS = ("fp32", "bf16", "fp16")

# OpenVINO INFERENCE_PRECISION_HINT per float precision (int8: `int8_float_hint`, it depends on the CPU).
OPENVINO_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
# The float parts of an INT8 model: the fastest float precision the CPU runs natively, first available.
# On an AMX Xeon the default winner's INT8 IR runs at 0.90x of its bf16 latency with bf16 float parts,
# 0.94x with f32 ones (1.01x / 1.13x under the rules before; benchmark_app, bench/int8_amx.py,
# bench/results/int8_amx_<cpu>.json); f32 where the plugin lacks BF16 (AVX2-only CPUs).
INT8_FLOAT_HINTS = (("BF16", "bf16"), ("FP32", "f32"))
# The OpenVINO CPU capability a precision needs (FP32 is always there).
OPENVINO_CAPABILITY = {"bf16": "BF16", "fp16": "FP16", "int8": "INT8"}
# CPU features that give torch's CPU autocast native arithmetic (without them it is emulated: slow).
TORCH_CPU_FEATURES = {"bf16": ("avx512_bf16", "amx_bf16")}


def supported_precisions(backend: str) -> tuple[str, ...]:
    """The precisions `backend` can run on this machine (fp32 first)."""
    if backend == "openvino":
        caps = set(openvino_capabilities())
        return ("fp32", *(p for p, cap in OPENVINO_CAPABILITY.items() if cap in caps))
    if backend == "torch":
        features = set(cpu_features())
        return ("fp32", *(p for p, need in TORCH_CPU_FEATURES.items() if features & set(need)))
    if backend == "cuda":
        import torch

        return ("fp32", "fp16", *(("bf16",) if torch.cuda.is_bf16_supported() else ()))
    return ("fp32",)  # onnxruntime's CPU execution provider computes float models in fp32


def check_precision(precision: str, backend: str) -> str:
    """`precision` if `backend` runs it here; else UserError (unknown) or BackendUnavailable (one line)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    supported = supported_precisions(backend)
    if precision not in supported:
        from nas.latency._machine import cpu_name

        why = {"openvino": f"the OpenVINO CPU plugin lists capabilities {', '.join(openvino_capabilities())}",
               "torch": "torch CPU autocast needs " + " or ".join(TORCH_CPU_FEATURES.get(precision, ("?",))),
               }.get(backend, "its runtime computes in fp32 only")
        raise BackendUnavailable(f"precision {precision!r} is not supported by backend {backend!r} on {cpu_name()} "
                                 f"({why}); supported here: {', '.join(supported)}")
    return precision


def int8_float_hint(capabilities: tuple[str, ...] | None = None) -> str:
    """The INFERENCE_PRECISION_HINT an INT8 model runs with: its float ops' precision on a CPU with these
    OpenVINO capabilities (default: this one's)."""
    caps = set(openvino_capabilities() if capabilities is None else capabilities)
    return next((hint for cap, hint in INT8_FLOAT_HINTS if cap in caps), "f32")


def cache_tag(precision: str) -> str:
    """What a latency cache key adds for a setting the precision's name does not fix: int8's float hint."""
    return f"+float-{int8_float_hint()}" if precision == "int8" else ""


def openvino_precision_config(precision: str) -> dict[str, str]:
    hint = int8_float_hint() if precision == "int8" else OPENVINO_HINT[precision]
    return {"INFERENCE_PRECISION_HINT": hint}


@contextmanager
def torch_precision(precision: str, device: str = "cpu") -> Iterator[None]:
    """Run torch code inside at `precision`: fp32 pinned (no TF32 / reduced-precision matmuls), or autocast."""
    import torch

    if precision == "fp32":
        saved: dict[str, Any] = {"matmul": torch.get_float32_matmul_precision()}
        torch.set_float32_matmul_precision("highest")
        if device == "cuda":
            saved["tf32"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved["matmul"])
            if "tf32" in saved:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved["tf32"]
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise BackendUnavailable(f"precision {precision!r} runs on OpenVINO only (an NNCF INT8 model)")
    with torch.autocast(device_type=device, dtype=dtype):
        yield
