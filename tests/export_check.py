"""Helpers for tests: export a model to ONNX/OpenVINO and compare with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch
from torch import nn

from nas.export import convert_openvino, example_input, export_onnx


def torch_logits(model: nn.Module, resolution: int) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(example_input(resolution)).numpy()


def onnx_logits(model: nn.Module, resolution: int, tmp: Path) -> np.ndarray:
    path = export_onnx(model, tmp / "model.onnx", resolution)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": example_input(resolution).numpy()})[0]


def openvino_logits(model: nn.Module, resolution: int) -> np.ndarray:
    compiled = ov.Core().compile_model(convert_openvino(model, resolution), "CPU")
    return compiled(example_input(resolution).numpy())[0]


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-3) -> None:
    """Relative to the logits' scale, so big and tiny models are judged alike."""
    assert np.isfinite(actual).all(), "non-finite outputs after export"
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= rtol * scale
    assert (actual.argmax(-1) == expected.argmax(-1)).all()
