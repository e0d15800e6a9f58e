"""Classify image files with a shipped model: top-5 labels with softmax scores per image.

    python -m compress.predict --model model.xml|model.onnx IMAGE [IMAGE...] [--labels labels.txt]
                               [--top 5] [--threads N] [--json]

The model must take images (compress.deploy: uint8 RGB [1, R, R, 3], normalisation inside); R is
read from the model file and every image (PNG/JPEG, any size) is resized to it the way training
does. `.xml` runs on OpenVINO CPU at a pinned precision (int8 for an IR with FakeQuantize ops,
fp32 otherwise), `.onnx` on ONNX Runtime CPU. Labels come from `labels.txt` beside the model
unless --labels is given; without either, class indices are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas.errors import UserError, run_cli
from nas.latency._backends import quiet_stderr, runtime_reason

MODEL_SUFFIXES = (".xml", ".onnx")


@dataclass
class Predictor:
    """A loaded model: `run(image)` maps one uint8 (R, R, 3) image to its logits (num_classes,)."""

    path: Path
    runtime: str  # "openvino" or "onnxruntime"
    precision: str  # the pinned inference precision ("fp32" or "int8"; ONNX Runtime: "fp32")
    resolution: int
    num_classes: int
    run: Callable[[np.ndarray], np.ndarray]


def _image_side(path: Path, element: str, shape: list, num_outputs: int) -> int:
    """Check the shipped-model input contract (uint8 [1, R, R, 3]); return R."""
    if element != "uint8" or len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2] \
            or not all(isinstance(d, int) and d > 0 for d in shape):
        raise UserError(f"{path}: input is {element} {shape}, not a uint8 RGB image [1, R, R, 3]; export the "
                        "model with compress.deploy (with_preprocessing / export_deploy_onnx)")
    if num_outputs < 1:
        raise UserError(f"{path}: the model has no output")
    return int(shape[1])


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if not path.is_file():
        raise UserError(f"{path}: is a directory, not a model file ({'/'.join(MODEL_SUFFIXES)})")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise UserError(f"{path}: unsupported model file type {path.suffix!r}; allowed: {', '.join(MODEL_SUFFIXES)}")


def _openvino(path: Path, threads: int | None) -> Predictor:
    from nas.latency import compile_openvino, count_fake_quantize, ov_core

    try:
        with quiet_stderr():
            ov_model = ov_core().read_model(str(path))
    except Exception as exc:  # garbage or truncated XML/bin: OpenVINO raises a plain RuntimeError
        raise UserError(f"{path}: not a readable OpenVINO IR ({runtime_reason(exc, path)})") from None
    if len(ov_model.inputs) != 1:
        raise UserError(f"{path}: expected one image input, found {len(ov_model.inputs)} inputs")
    port = ov_model.inputs[0]
    partial = port.get_partial_shape()
    shape = ["?"] if partial.rank.is_dynamic else [d.get_length() if d.is_static else "?" for d in partial]
    element = port.get_element_type()
    side = _image_side(path, str(element.to_dtype()) if element.is_static() else "dynamic", shape,
                       len(ov_model.outputs))
    # The same rule as nas.latency.ir_precision, on the model already read: int8 iff FakeQuantize ops.
    precision = "int8" if count_fake_quantize(ov_model) else "fp32"
    try:
        compiled = compile_openvino(ov_model, threads, precision)
    except Exception as exc:
        raise UserError(f"{path}: OpenVINO cannot compile the model ({runtime_reason(exc, path)})") from None
    request = compiled.create_infer_request()
    num_classes = int(np.prod(list(compiled.outputs[0].get_shape())))

    def run(image: np.ndarray) -> np.ndarray:
        request.infer({0: image[None]})
        return request.get_output_tensor(0).data.reshape(-1).astype(np.float64)

    return Predictor(path, "openvino", precision, side, num_classes, run)


def _onnxruntime(path: Path, threads: int | None) -> Predictor:
    import onnxruntime as ort

    from nas.latency import default_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        with quiet_stderr():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # garbage or truncated protobuf
        raise UserError(f"{path}: not a readable ONNX model ({runtime_reason(exc, path)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise UserError(f"{path}: expected one image input, found {len(inputs)} inputs")
    element = inputs[0].type.removeprefix("tensor(").removesuffix(")")
    side = _image_side(path, element, list(inputs[0].shape), len(outputs))
    name = inputs[0].name
    dims = outputs[0].shape
    num_classes = int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else 0

    def run(image: np.ndarray) -> np.ndarray:
        return session.run(None, {name: image[None]})[0].reshape(-1).astype(np.float64)

    return Predictor(path, "onnxruntime", "fp32", side, num_classes, run)


def load_predictor(path: str | Path, threads: int | None = None) -> Predictor:
    """Load a shipped model (.xml on OpenVINO CPU, .onnx on ONNX Runtime CPU); UserError if it is
    missing, unreadable, or does not take a uint8 RGB image [1, R, R, 3]."""
    path = Path(path)
    _check_model_file(path)
    return _openvino(path, threads) if path.suffix.lower() == ".xml" else _onnxruntime(path, threads)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """The k best classes, best first: [{"index", "label", "score"}] with softmax scores."""
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i], "score": float(probs[i])} for i in order]


def _labels(model: Path, given: str | None, num_classes: int) -> list[str]:
    from compress.deploy import LABELS_FILE, read_labels

    default = model.parent / LABELS_FILE
    if given is None and not default.is_file():
        return [str(i) for i in range(num_classes)]
    path = Path(given) if given is not None else default
    labels = read_labels(path)
    if num_classes and len(labels) != num_classes:
        raise UserError(f"{path}: {len(labels)} labels, but {model} has {num_classes} classes")
    return labels


def build_parser() -> argparse.ArgumentParser:
    from nas.cli import Parser, positive_int

    parser = Parser(prog="python -m compress.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files of any size")
    parser.add_argument("--model", required=True, help="a shipped model: .xml (OpenVINO IR) or .onnx")
    parser.add_argument("--labels", default=None, help="class names, one per line (default: labels.txt beside "
                                                       "the model; class indices without it)")
    parser.add_argument("--top", type=positive_int, default=5, help="labels printed per image (default 5)")
    parser.add_argument("--threads", type=positive_int, default=None, help="inference threads (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from compress.deploy import load_image

    predictor = load_predictor(args.model, args.threads)
    labels = _labels(predictor.path, args.labels, predictor.num_classes)
    # Decode every image first: a bad file is reported before anything is printed.
    images = [(path, load_image(path, predictor.resolution)) for path in args.images]
    results = []
    for path, image in images:
        logits = predictor.run(image)
        if len(logits) != len(labels):
            raise UserError(f"{args.model}: {len(logits)} outputs per image, but {len(labels)} labels")
        results.append({"image": path, "top": top_k(logits, labels, min(args.top, len(labels)))})
    if args.json:
        print(json.dumps({"model": str(predictor.path), "runtime": predictor.runtime, "precision": predictor.precision,
                          "resolution": predictor.resolution, "results": results}, indent=2))
        return 0
    width = max(len(row["label"]) for r in results for row in r["top"])
    for r in results:
        print(r["image"])
        for rank, row in enumerate(r["top"], 1):
            print(f"  {rank}. {row['label']:<{width}}  {row['score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
