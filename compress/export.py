"""Export the FP32, pruned and INT8 models of a winner, verify them against PyTorch, time them.

    python -m compress.export [--run R] [--winner K] [--val-limit N] [--rounds 2]

Writes <run>/compress/<winner>/export/{fp32,pruned,int8}.{xml,bin,onnx} and metrics.json, then the
run's compress/report.{json,md}. Every file is checked on the validation split at the target
resolution (max abs logit difference and top-1 agreement with PyTorch; INT8 against the model it
was quantized from) and timed with nas.latency on the run's threads: IRs on OpenVINO, ONNX files on
ONNX Runtime, interleaved over a few rounds so a slow spell of the machine hits all of them alike.

Precision is pinned, never the runtime's default: float IRs run at fp32 and, where the CPU has it,
again at bf16 (OpenVINO's default on AVX-512 BF16 / AMX CPUs), plus the run's --precision if it is
fp16; the INT8 IR runs at int8 (its float ops in f32). So the report gives INT8 against both.

INT8 has no ONNX file: NNCF quantized the OpenVINO model (FakeQuantize ops), and OpenVINO has no
IR -> ONNX writer. A QDQ ONNX would be a second, different quantization (ORT's quantizer or NNCF's
torch backend), so its numbers would not describe the INT8 IR reported here.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from compress._metrics import count_macs, count_params, size_on_disk
from compress._runtime import compare, image_batch, onnx_logits, openvino_logits, top1, torch_logits
from compress._target import (
    Target,
    add_target_arguments,
    load_module,
    load_target,
    read_json,
    write_json,
)
from compress.deploy import export_deploy_onnx, with_preprocessing, write_labels
from nas.errors import run_cli
from nas.export import convert_openvino, export_onnx, save_openvino
from nas.latency import LatencyStats, MeasureSettings, best_of_rounds, measure_ir, supported_precisions


def float_precisions(target: Target) -> list[str]:
    """fp32, bf16 where OpenVINO runs it here, and the run's own precision when it is another float one."""
    here = supported_precisions("openvino")
    wanted = ["fp32", "bf16", target.precision]
    return [p for p in dict.fromkeys(wanted) if p in here and p != "int8"]


def run_label(kind: str, precision: str) -> str:
    """'xml' for the precision a file is deployed at (fp32 float, int8 quantized), else 'xml@bf16'."""
    return kind if precision in ("fp32", "int8") else f"{kind}@{precision}"


def export_files(model: nn.Module, directory: Path, name: str, resolution: int,
                 stats: tuple[Any, Any] | None = None) -> dict[str, Path]:
    """FP32 IR (true FP32 weights) and ONNX (TorchScript exporter), static batch 1.

    With `stats` (the train split's mean, std) both take the shipped input: uint8 RGB NHWC
    [1, R, R, 3] with the normalisation built in (compress.deploy); without, float NCHW [1, 3, R, R]."""
    ov_model = convert_openvino(model, resolution)
    if stats is None:
        return {"xml": save_openvino(ov_model, directory / f"{name}.xml"),
                "onnx": export_onnx(model, directory / f"{name}.onnx", resolution)}
    return {"xml": save_openvino(with_preprocessing(ov_model, *stats), directory / f"{name}.xml"),
            "onnx": export_deploy_onnx(model, directory / f"{name}.onnx", resolution, *stats)}


def time_files(paths: dict[str, tuple[Path, str]], threads: int | None, rounds: int = 2,
               settings: MeasureSettings | None = None) -> dict[str, LatencyStats]:
    """Best (lowest-estimate) measurement per (file, precision) over interleaved rounds; .onnx on ONNX Runtime."""
    return best_of_rounds({label: partial(measure_ir, path, "onnxruntime" if path.suffix == ".onnx" else "openvino",
                                          threads, precision=precision, settings=settings)
                           for label, (path, precision) in paths.items()}, rounds)


def _latency_record(stats: LatencyStats) -> dict[str, Any]:
    return {"backend": stats.backend, "precision": stats.precision, "estimate_ms": stats.estimate_ms,
            "median_ms": stats.median_ms, "cv": stats.cv, "pass_cv": stats.pass_cv, "unsteady": stats.unsteady,
            "threads": stats.threads, "runtime_version": stats.runtime_version, "machine": stats.machine,
            "others_cpu": stats.others_cpu}


def _variants(target: Target) -> dict[str, tuple[nn.Module, Any]]:
    """name -> (PyTorch reference model, INT8 openvino.Model to ship or None). Every input is read
    here, before anything is written: a damaged one is a one-line error that leaves the run as it was."""
    from nas.latency import ov_read

    fp32 = target.fp32_model()
    variants: dict[str, tuple[nn.Module, Any]] = {"fp32": (fp32, None)}
    if target.has_pruned():
        variants["pruned"] = (load_module(target.pruned_path()), None)
    int8 = read_json(target.int8_dir / "metrics.json")
    if int8 is not None and (target.int8_dir / "model.xml").is_file():
        source = variants.get(int8.get("source", "fp32"), variants["fp32"])[0]
        variants["int8"] = (source, ov_read(target.int8_dir / "model.xml"))
    return variants


def export_target(target: Target, *, val_limit: int | None = None, rounds: int = 2,
                  settings: MeasureSettings | None = None, quiet: bool = False) -> dict[str, Any]:
    """Export, verify and time every variant of a winner; write export/metrics.json and the report."""
    from compress.report import write_report
    from nas.latency import describe_machine

    resolution = target.target_resolution
    splits = target.splits(resolution)
    # test: what the report's top-1 is measured on (never used for a decision); val: alongside.
    # Each entry: (normalised float images for PyTorch, the same as uint8 NHWC for the shipped files, labels).
    data = {"test": image_batch(splits.test, val_limit), "val": image_batch(splits.val, val_limit)}
    stats = (splits.train.mean, splits.train.std)
    out = target.export_dir
    variants = _variants(target)
    for other in sorted((target.run_dir / "compress").glob("*/export/metrics.json")):
        read_json(other)  # the report reads every winner's: a damaged one fails now, before anything is written
    write_labels(out, splits.class_labels())
    results: dict[str, Any] = {}
    files: dict[str, tuple[Path, str]] = {}
    floats = float_precisions(target)
    for name, (model, int8_ir) in variants.items():
        if not quiet:
            print(f"exporting and verifying {name} ...", file=sys.stderr)
        if int8_ir is None:
            paths = export_files(model, out, name, resolution, stats)
        else:  # NNCF quantized the float-input model; the shipped one takes images like the others
            paths = {"xml": save_openvino(with_preprocessing(int8_ir, *stats), out / "int8.xml")}
        reference = {split: torch_logits(model, images) for split, (images, _, _) in data.items()}
        record: dict[str, Any] = {"torch_accuracy": top1(reference["test"], data["test"][2]),
                                  "torch_val_accuracy": top1(reference["val"], data["val"][2]),
                                  "params": count_params(model), "macs": count_macs(model, resolution), "files": {}}
        runs = ([("xml", "int8")] if int8_ir is not None
                else [("xml", p) for p in floats] + [("onnx", "fp32")])
        for kind, precision in runs:
            path = paths[kind]
            logits = {split: (openvino_logits(path, images, target.threads, precision) if kind == "xml"
                              else onnx_logits(path, images, target.threads)) for split, (_, images, _) in data.items()}
            label = run_label(kind, precision)
            record["files"][label] = {"path": str(path), "bytes": size_on_disk(path), "precision": precision,
                                      "accuracy": top1(logits["test"], data["test"][2]),
                                      "val_accuracy": top1(logits["val"], data["val"][2]),
                                      **compare(reference["test"], logits["test"])}
            files[f"{name}.{label}"] = (path, precision)
        results[name] = record
    if not quiet:
        print(f"timing {len(files)} files ({rounds} interleaved rounds) ...", file=sys.stderr)
    for label, stats in time_files(files, target.threads, rounds, settings).items():
        name, kind = label.split(".")
        results[name]["files"][kind]["latency"] = _latency_record(stats)
    metrics = {"resolution": resolution, "test_images": len(data["test"][2]), "val_images": len(data["val"][2]),
               "input": f"uint8 RGB NHWC [1, {resolution}, {resolution}, 3], normalisation built in; labels.txt",
               "weights": target.weights, "accuracy_split": "test", "variants": results,
               "precisions": floats + ["int8"], "machine": describe_machine(),
               "int8_onnx": "skipped: NNCF quantized the OpenVINO model; there is no IR -> ONNX writer, and a "
                            "separately quantized QDQ ONNX would not describe this INT8 model"}
    write_json(out / "metrics.json", metrics)
    write_report(target)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    from nas.cli import Parser, positive_int

    parser = Parser(prog="python -m compress.export", description=__doc__.split("\n\n")[0])
    add_target_arguments(parser)
    parser.add_argument("--val-limit", type=positive_int, default=None, help="verify on the first N val images")
    parser.add_argument("--rounds", type=positive_int, default=2, help="interleaved timing rounds (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = load_target(args.run, args.winner, args.precision)
    metrics = export_target(target, val_limit=args.val_limit, rounds=args.rounds, quiet=args.quiet)
    for name, record in metrics["variants"].items():
        for kind, info in record["files"].items():
            print(f"{name:7s} {kind:8s} top-1 {100 * info['accuracy']:6.2f}%  agreement "
                  f"{100 * info['top1_agreement']:6.2f}%  max|diff| {info['max_abs_diff']:.2e}  "
                  f"{info['latency']['estimate_ms']:.3f} ms ({info['latency']['backend']})  {info['path']}")
    print(f"report: {target.run_dir / 'compress' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
