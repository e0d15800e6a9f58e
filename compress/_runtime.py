"""Run exported models (OpenVINO IR / model objects, ONNX Runtime) on a validation split.

The IRs have a static batch-1 input, so evaluation feeds one image at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.data import ImageDataset
from nas.latency import DEFAULT_PRECISION, compile_openvino, default_threads


def openvino_logits(model: Any, images: torch.Tensor, threads: int | None = None,
                    precision: str = DEFAULT_PRECISION) -> np.ndarray:
    """Logits of an openvino.Model or .xml/.onnx path at `precision` (fp32 pinned by default; an
    INT8 model's float ops then run in f32 too)."""
    compiled = compile_openvino(model, threads, precision)
    request = compiled.create_infer_request()
    out = []
    for image in images:
        request.infer({0: image[None].numpy()})
        out.append(request.get_output_tensor(0).data.copy())
    return np.concatenate(out)


def onnx_logits(path: Path, images: torch.Tensor, threads: int | None = None) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: image[None].numpy()})[0] for image in images])


def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def validation_batch(dataset: ImageDataset, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The first `limit` validation images (all when None) as one tensor, and their labels."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    images, labels = dataset.batch(torch.arange(n))
    return images.contiguous(), labels.numpy()


def image_batch(dataset: ImageDataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The first `limit` images as the network sees them (normalised float NCHW), as a shipped model
    takes them (uint8 RGB NHWC, grayscale repeated), and their labels."""
    images, labels = validation_batch(dataset, limit)
    raw = dataset.images[:len(labels)]
    raw = raw.expand(-1, 3, -1, -1) if raw.shape[1] == 1 else raw
    return images, raw.permute(0, 2, 3, 1).contiguous(), labels


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How far an exported model's logits are from PyTorch's: max abs diff and top-1 agreement."""
    return {
        "max_abs_diff": float(np.abs(reference - other).max()),
        "top1_agreement": float((reference.argmax(-1) == other.argmax(-1)).mean()),
        "finite": bool(np.isfinite(other).all()),
    }
