"""Roofline arithmetic: how close a model's measured latency comes to what the CPU can do.

Peak compute is measured, not taken from a datasheet: the best FP32 GEMM throughput of torch
(oneDNN/MKL) and of OpenVINO at the same thread count. Work is the project's one MAC counter
(nas.models.counting: thop plus the attention matmuls and gates written inline), 2 FLOPs per MAC.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from nas.export import example_input
from nas.models.counting import count_macs
from nas.threads import torch_threads


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_peak_gflops(threads: int, n: int = 2048, repeats: int = 5, backend: str = "torch") -> float:
    """Best FP32 square-GEMM throughput (GFLOP/s) at `threads` on `backend` ('torch'/'openvino')."""
    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if backend == "torch":
        ta, tb, out = torch.from_numpy(a), torch.from_numpy(b), torch.empty(n, n)
        with torch_threads(threads):
            seconds = _best_seconds(lambda: torch.mm(ta, tb, out=out), repeats)
    elif backend == "openvino":
        import openvino as ov
        import openvino.opset13 as ops

        param = ops.parameter([n, n], np.float32)
        model = ov.Model([ops.matmul(param, ops.constant(b), False, False)], [param])
        from nas.latency._backends import compile_openvino

        compiled = compile_openvino(model, threads, "fp32")  # an FP32 peak: the hint pinned to f32
        request = compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(a))
        seconds = _best_seconds(lambda: request.infer(share_outputs=True), repeats)
    else:
        raise ValueError(f"unknown GEMM backend {backend!r}; allowed: torch, openvino")
    return flops / seconds / 1e9


def copy_bandwidth_gbs(threads: int, megabytes: int = 256, repeats: int = 5) -> float:
    """Best memory bandwidth (GB/s, read + write) of a large tensor copy at `threads`."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    with torch_threads(threads):
        seconds = _best_seconds(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / seconds / 1e9


def count_flops(model: nn.Module, resolution: int) -> int:
    """FLOPs of one batch-1 forward pass (a multiply-add counts 2)."""
    return 2 * count_macs(model, resolution)


def min_traffic_bytes(model: nn.Module, resolution: int) -> int:
    """Lower bound on FP32 memory traffic: weights + input + every leaf module's output once."""
    total = sum(p.numel() for p in model.parameters()) + 3 * resolution * resolution
    outputs: list[int] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append(output.numel())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(resolution))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return 4 * (total + sum(outputs))


def achieved_gflops(macs: float, ms: float) -> float:
    """Throughput a model reaches: 2 * MACs per inference over its latency."""
    return 2.0 * macs / (ms * 1e-3) / 1e9


def arithmetic_intensity(flops: float, traffic_bytes: float) -> float:
    return flops / traffic_bytes


def roofline_gflops(intensity: float, peak_gflops: float, bandwidth_gbs: float) -> float:
    """The attainable throughput at `intensity` (FLOP/byte): min(peak, bandwidth * intensity)."""
    return min(peak_gflops, bandwidth_gbs * intensity)
