"""Helpers for tests: export a model to ONNX/OpenVINO and compare with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from nas.export import convert_openvino, example_input, export_onnx
from nas.latency import compile_openvino


def torch_logits(model: nn.Module, resolution: int) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(example_input(resolution)).numpy()


def onnx_logits(model: nn.Module, resolution: int, tmp: Path) -> np.ndarray:
    path = export_onnx(model, tmp / "model.onnx", resolution)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": example_input(resolution).numpy()})[0]


def openvino_logits(model: nn.Module, resolution: int, precision: str = "fp32") -> np.ndarray:
    """OpenVINO's logits at a pinned precision (fp32 by default: the CPU plugin's own default is bf16
    on CPUs with AVX-512 BF16 / AMX, which is not what these comparisons check)."""
    compiled = compile_openvino(convert_openvino(model, resolution), precision=precision)
    return compiled(example_input(resolution).numpy())[0]


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-3) -> None:
    """Relative to the logits' scale, so big and tiny models are judged alike."""
    assert np.isfinite(actual).all(), "non-finite outputs after export"
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= rtol * scale
    assert (actual.argmax(-1) == expected.argmax(-1)).all()
