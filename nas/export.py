"""Export a torch model to ONNX and OpenVINO with fixed batch-1 input shapes.

Shared by latency measurement (nas.latency), tests and the compression exports, so every path
times and verifies the same graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.atomic import atomic_ir, atomic_path

ONNX_OPSET = 17


def example_input(resolution: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, resolution, resolution, generator=generator)


def export_onnx(model: nn.Module, path: str | Path, resolution: int, opset: int = ONNX_OPSET) -> Path:
    """TorchScript-based exporter (dynamo=False): the dynamo one drops tiny eps adds (1e-15 -> NaNs in ONNX Runtime)."""
    path = Path(path)
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # tracer warnings about static shapes are expected here
        torch.onnx.export(
            model,
            (example_input(resolution),),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamo=False,
        )
    return path


_reused: dict[tuple[int, int], tuple[nn.Module, Any]] | None = None


@contextmanager
def reusing_conversions() -> Iterator[None]:
    """Within the block, converting the same model object at the same resolution again returns a copy
    of the first conversion (conversion is deterministic: a second, independent timing of a model
    needs a fresh compile, not a fresh trace). The caller promises not to change the models meanwhile."""
    global _reused
    outer, _reused = _reused, {} if _reused is None else _reused
    try:
        yield
    finally:
        _reused = outer


def convert_openvino(model: nn.Module, resolution: int):
    """torch -> openvino.Model with a static [1, 3, R, R] input (see `reusing_conversions`).

    The same path as `ov.convert_model(model, example_input=..., input=...)` (OpenVINO's TorchScript
    decoder, which traces the model), minus the tracer's self-check: `torch.jit.trace` re-runs the
    model twice to compare, a quarter of the conversion time; the IR is the same op for op
    (tests/test_export.py compares it with the default path's).
    """
    import openvino as ov
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    key = (id(model), resolution)
    if _reused is not None and key in _reused and _reused[key][0] is model:
        return _reused[key][1].clone()
    model = model.eval()
    example = (example_input(resolution),)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about static shapes are expected here
        decoder = TorchScriptPythonDecoder(model, example_input=example, trace_kwargs={"check_trace": False})
        ov_model = ov.convert_model(decoder, example_input=example, input=[(1, 3, resolution, resolution)])
    if _reused is not None:
        _reused[key] = (model, ov_model.clone())  # the model is kept alive, so its id stays its own
    return ov_model


def save_openvino(ov_model, path: str | Path) -> Path:
    """Save IR as true FP32 (ov.save_model defaults to FP16 weights), atomically: .bin, then .xml."""
    import openvino as ov

    path = Path(path)
    with atomic_ir(path) as tmp:
        ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
    return path
