"""The shipped model takes images: uint8 RGB, NHWC, normalisation built in, labels beside it.

    ov_model = with_preprocessing(ov_model, splits.train.mean, splits.train.std)  # IR input: u8 [1, R, R, 3]
    export_deploy_onnx(model, "model.onnx", R, splits.train.mean, splits.train.std)  # the same input in ONNX
    write_labels(out_dir, splits.class_names)                                         # out_dir/labels.txt
    image = load_image("cat.jpg", R)                                                  # u8 (R, R, 3), as training

Input contract of a shipped model (OpenVINO IR and ONNX alike): one tensor named `input`, uint8,
shape [1, R, R, 3] (N, H, W, C; RGB; static; R = the model's resolution), the image already resized
to R x R the way training does (`load_image`: shorter side to R, antialiased bilinear, centre
crop). Inside: x -> float32, (x / 255 - mean) / std per channel, NHWC -> NCHW, the network.
Output: `logits`, float32 [1, num_classes] (softmax not applied).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nas.atomic import atomic_path, atomic_write
from nas.data import _decode_image
from nas.errors import UserError
from nas.export import ONNX_OPSET

LABELS_FILE = "labels.txt"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
RT_INFO_KEY = "vitnas_input"  # rt_info entry describing the image input (informational)


def rgb_stats(mean: Sequence[float] | Tensor | np.ndarray,
              std: Sequence[float] | Tensor | np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) for a 3-channel RGB input; 1 channel is repeated to 3."""
    m = [float(v) for v in np.asarray(mean, dtype=np.float64).reshape(-1)]
    s = [float(v) for v in np.asarray(std, dtype=np.float64).reshape(-1)]
    if len(m) not in (1, 3) or len(s) not in (1, 3):
        raise ValueError(f"mean and std need 1 or 3 channels, got {len(m)} and {len(s)}")
    m, s = (m * 3 if len(m) == 1 else m), (s * 3 if len(s) == 1 else s)
    if not all(np.isfinite(m)) or not all(np.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"mean must be finite and std positive and finite, got {m} and {s}")
    return m, s


def _square_nchw_side(shape: Sequence[int], where: str) -> int:
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise ValueError(f"{where}: expected a static [N, 3, R, R] float input, found {list(shape)}")
    return int(shape[2])


def with_preprocessing(ov_model: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """A copy of `ov_model` (FP32 or NNCF INT8, static [1, 3, R, R] float input) whose input is a
    uint8 RGB image batch [1, R, R, 3] (NHWC), converted to f32 and normalised as (x/255 - mean)/std
    per channel by OpenVINO's PrePostProcessor before the original network. `ov_model` is untouched."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    if len(ov_model.inputs) != 1:
        raise ValueError(f"expected a model with one input, found {len(ov_model.inputs)}")
    port = ov_model.inputs[0]
    if port.get_partial_shape().is_dynamic:
        raise ValueError(f"expected a static input shape, found {port.get_partial_shape()}")
    if port.get_element_type() != ov.Type.f32:
        raise ValueError(f"expected an f32 input (already preprocessed?), found {port.get_element_type()}")
    side = _square_nchw_side(list(port.get_shape()), "model input")
    m, s = rgb_stats(mean, std)
    model = ov_model.clone()
    ppp = PrePostProcessor(model)
    info = ppp.input()
    info.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_shape([1, side, side, 3])
    info.model().set_layout(ov.Layout("NCHW"))
    # (x - 255 m) / (255 s) == (x / 255 - m) / s: the /255 folded into the constants.
    info.preprocess().convert_element_type(ov.Type.f32).mean([255.0 * v for v in m]).scale([255.0 * v for v in s])
    model = ppp.build()
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.set_rt_info(f"uint8 RGB NHWC [1,{side},{side},3]; (x/255 - mean)/std; mean={m}; std={s}", [RT_INFO_KEY])
    return model


class DeployWrapper(nn.Module):
    """`model` behind the shipped input: uint8 RGB NHWC [N, R, R, 3] -> f32, (x/255 - mean)/std, NCHW.

    The normalisation is the same affine map as nas.data.ImageDataset (x * 1/(255 std) - mean/std),
    so the wrapped model sees bit-identical inputs to training's."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m, s = rgb_stats(mean, std)
        mean_t, std_t = torch.tensor(m, dtype=torch.float32), torch.tensor(s, dtype=torch.float32)
        self.model = model
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        # Cast before the transpose: the exported graph is Cast(u8 -> f32) then a float Transpose.
        x = x.float().permute(0, 3, 1, 2).contiguous()
        return self.model(x * self.scale + self.shift)


def example_image(resolution: int, batch: int = 1, seed: int = 0) -> Tensor:
    """A random uint8 NHWC image batch [batch, R, R, 3]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, resolution, resolution, 3), generator=generator, dtype=torch.uint8)


def export_deploy_onnx(model: nn.Module, path: str | Path, resolution: int, mean: Sequence[float],
                       std: Sequence[float], opset: int = ONNX_OPSET) -> Path:
    """ONNX of `DeployWrapper(model, mean, std)` with nas.export's settings (TorchScript exporter,
    dynamo=False, static batch 1): input `input` uint8 [1, R, R, 3], output `logits` [1, classes]."""
    path = Path(path)
    wrapper = DeployWrapper(model, mean, std).eval()
    with torch.no_grad(), warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # tracer warnings about static shapes are expected here
        torch.onnx.export(wrapper, (example_image(resolution),), str(tmp), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False)
    return path


def write_labels(directory: str | Path, class_names: Sequence[str]) -> Path:
    """Write `directory/labels.txt`: one class name per line, in class-index order."""
    names = [str(n) for n in class_names]
    bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
    if not names or bad:
        raise ValueError(f"class names must be non-empty single lines, got {bad or names!r}")
    path = Path(directory) / LABELS_FILE
    atomic_write(path, "".join(f"{n}\n" for n in names))
    return path


def read_labels(path: str | Path) -> list[str]:
    """Class names from a labels file (one per line, index order); UserError if missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels file not found: {path}" if not path.exists() else f"{path}: labels file is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the labels file ({type(exc).__name__})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{path}: labels file is empty; expected one class name per line")
    return lines


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """A PNG/JPEG file of any size as uint8 RGB (R, R, 3), resized exactly as training does
    (nas.data: shorter side to R, antialiased bilinear, centre crop; grayscale repeated to RGB).
    UserError (one line, naming the file) if it is missing, a directory or not a readable image."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"image not found: {path}")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not an image file")
    return np.ascontiguousarray(_decode_image(path, resolution).permute(1, 2, 0).numpy())


__all__ = [
    "INPUT_NAME", "LABELS_FILE", "OUTPUT_NAME", "DeployWrapper", "example_image", "export_deploy_onnx",
    "load_image", "read_labels", "rgb_stats", "with_preprocessing", "write_labels",
]
