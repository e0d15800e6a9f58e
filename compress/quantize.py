"""NNCF post-training INT8 of a winner's OpenVINO model, with accuracy control as the fallback.

    python -m compress.quantize [--run R] [--winner K] [--max-drop 0.5] [--calibration 300]

The (pruned, when compress.prune has run) winner is converted to a static-shape OpenVINO model at
the run's target resolution and quantized there: NNCF on the OpenVINO model avoids NNCF's torch
extension build and is the deployment path anyway. Calibration images come from the TRAIN split,
loaded at the target resolution (k^T v in linear attention sums over all tokens, so its range
grows with resolution). If the validation top-1 drop exceeds --max-drop points (counted from the
unpruned FP32 model: pruning's cost on val comes off the INT8 budget; a pruned model that used it
all is skipped for the unpruned one), `nncf.quantize_with_accuracy_control` reverts the most
harmful layers to float. Then the exports
are refreshed, verified and timed (compress.export) and the report rewritten.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from compress._runtime import compile_openvino, openvino_logits, top1, validation_batch
from compress._target import Target, add_target_arguments, load_module, load_target, write_json
from nas.data import ImageDataset, calibration_subset
from nas.errors import UserError, run_cli
from nas.export import convert_openvino, save_openvino
from nas.latency import count_fake_quantize
from nas.quantization import mixers_of, quantize_options

MIN_INT8_BUDGET = 0.1  # points: below this, accuracy control would keep nearly every op in float


@dataclass
class QuantizeResult:
    model: Any  # openvino.Model with FakeQuantize ops
    fp32_accuracy: float  # top-1 (0..1) of the FP32 OpenVINO model on the validation images used
    int8_accuracy: float
    method: str  # "quantize" or "accuracy_control"
    keep_float: bool
    ignored_ops: list[str] = field(default_factory=list)
    fake_quantize_ops: int = 0
    calibration_images: int = 0
    validation_images: int = 0
    resolution: int = 0
    seconds: float = 0.0

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.int8_accuracy)

    def metrics(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "model"}
        data["drop_points"] = self.drop_points
        return data


class BudgetSpent(Exception):
    """The model to quantize already lies --max-drop (less MIN_INT8_BUDGET) below its reference."""

    def __init__(self, spent_points: float) -> None:
        super().__init__(f"{spent_points:.2f} points already spent")
        self.spent_points = spent_points


def int8_budget(max_drop: float, reference_accuracy: float | None, fp32_accuracy: float) -> tuple[float, float]:
    """(points left for INT8, points the model already lies below the reference), in top-1 points."""
    spent = 0.0 if reference_accuracy is None else max(0.0, 100.0 * (reference_accuracy - fp32_accuracy))
    return max_drop - spent, spent


def quantize_model(model: nn.Module, calibration: torch.Tensor, validation: ImageDataset, *,
                   max_drop: float = 0.5, keep_float: bool = True, threads: int | None = None,
                   val_limit: int | None = None, reference_accuracy: float | None = None) -> QuantizeResult:
    """INT8 OpenVINO model of `model` at the resolution of `validation` (which must match `calibration`).

    With `reference_accuracy` (the unpruned model's, for a pruned `model`), --max-drop counts from
    it: what `model` already lies below comes off the INT8 budget; BudgetSpent when little is left."""
    import nncf

    start = time.perf_counter()
    resolution = validation.resolution
    if calibration.shape[-1] != resolution:
        raise ValueError(f"calibration images are {calibration.shape[-1]} px, validation {resolution} px")
    fp32 = convert_openvino(model, resolution)
    images, labels = validation_batch(validation, val_limit)
    fp32_accuracy = top1(openvino_logits(fp32, images, threads), labels)
    max_drop, spent = int8_budget(max_drop, reference_accuracy, fp32_accuracy)
    if reference_accuracy is not None and max_drop < MIN_INT8_BUDGET:
        raise BudgetSpent(spent)
    options, ignored = quantize_options(fp32, len(calibration), keep_float, mixers_of(model))
    calibration_set = nncf.Dataset([image[None].numpy() for image in calibration])
    int8 = nncf.quantize(fp32, calibration_set, **options)
    int8_accuracy = top1(openvino_logits(int8, images, threads, "int8"), labels)  # as it runs
    method = "quantize"
    if 100.0 * (fp32_accuracy - int8_accuracy) > max_drop:
        method = "accuracy_control"
        validation_set = nncf.Dataset(list(zip(images.numpy()[:, None], labels, strict=True)))
        control = {("advanced_quantization_parameters" if k == "advanced_parameters" else k): v
                   for k, v in options.items()}  # the same rules under this function's argument name
        int8 = nncf.quantize_with_accuracy_control(
            fp32, calibration_set, validation_set, _validate, max_drop=max_drop / 100.0,
            drop_type=nncf.DropType.ABSOLUTE, **control)
        int8_accuracy = top1(openvino_logits(int8, images, threads, "int8"), labels)  # as it runs
    return QuantizeResult(int8, fp32_accuracy, int8_accuracy, method, keep_float, ignored,
                          count_fake_quantize(int8), len(calibration), len(images), resolution,
                          time.perf_counter() - start)


def _validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
    """nncf's validation_fn: top-1 over (image, label) items, with per-sample correctness."""
    correct = [float(np.argmax(compiled([image])[0]) == label) for image, label in items]
    return float(np.mean(correct)), correct


def source_model(target: Target, use_pruned: bool = True) -> tuple[str, nn.Module]:
    """The pruned model when compress.prune has saved one (and use_pruned), else the FP32 winner."""
    if use_pruned and target.has_pruned():
        return "pruned", load_module(target.pruned_path())
    return "fp32", target.fp32_model()


def _val_accuracy(model: nn.Module, validation: ImageDataset, threads: int | None, val_limit: int | None) -> float:
    images, labels = validation_batch(validation, val_limit)
    return top1(openvino_logits(convert_openvino(model, validation.resolution), images, threads), labels)


def quantize_target(target: Target, *, max_drop: float = 0.5, calibration: int = 300, keep_float: bool = True,
                    use_pruned: bool = True, val_limit: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Quantize a winner, save int8/model.xml and int8/metrics.json; returns the metrics.

    --max-drop counts from the unpruned FP32 model: when pruning already used the whole budget on
    val, the unpruned model is quantized instead (and the metrics say why)."""
    resolution = target.target_resolution  # the static IR shape export verifies and times
    source, model = source_model(target, use_pruned)
    splits = target.splits(resolution)
    if not quiet:
        print(f"quantizing the {source} model of {target.winner.directory.name} at {resolution} px ...",
              file=sys.stderr)
    if not quiet and target.weights != "final":
        print(f"note: {target.winner.directory.name} has no final weights (python -m nas.train): quantizing its "
              f"proxy weights, whose accuracy at {resolution} px is not meaningful", file=sys.stderr)
    calibration_set = calibration_subset(splits, calibration)
    reference = None  # a pruned model's INT8 drop counts from the unpruned model
    if source == "pruned":
        reference = _val_accuracy(target.fp32_model(), splits.val, target.threads, val_limit)
    budget_info: dict[str, Any] = {}
    try:
        result = quantize_model(model, calibration_set, splits.val, max_drop=max_drop, keep_float=keep_float,
                                threads=target.threads, val_limit=val_limit, reference_accuracy=reference)
        budget, spent = int8_budget(max_drop, reference, result.fp32_accuracy)
    except BudgetSpent as exc:
        if not quiet:
            print(f"pruning already costs {exc.spent_points:.2f} of --max-drop {max_drop} points on val: "
                  "quantizing the unpruned model instead (prune less or fine-tune longer to ship both)",
                  file=sys.stderr)
        budget_info["pruned_skipped"] = True
        source, budget, spent = "fp32", max_drop, exc.spent_points
        result = quantize_model(target.fp32_model(), calibration_set, splits.val, max_drop=max_drop,
                                keep_float=keep_float, threads=target.threads, val_limit=val_limit)
    if reference is not None:
        budget_info.update(unpruned_fp32_accuracy=reference, pruning_cost_points=spent)
    if result.fake_quantize_ops == 0:  # accuracy control reverted every quantized op to float
        raise UserError(f"no INT8 model of {target.winner.directory.name} stays within --max-drop {max_drop} points "
                        f"on {result.validation_images} val images (FP32 top-1 {100 * result.fp32_accuracy:.2f}%); "
                        "raise --max-drop or final-train the winner (python -m nas.train)")
    path = save_openvino(result.model, target.int8_dir / "model.xml")
    compile_openvino(path, target.threads)  # fail here, not in a later step, if the IR does not load
    metrics = {"source": source, "weights": target.weights, "max_drop_points": max_drop,
               "int8_budget_points": budget, **budget_info, "ir": str(path),
               "calibration_split": "train", "accuracy_control_split": "val", **result.metrics()}
    write_json(target.int8_dir / "metrics.json", metrics)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    from nas.cli import Parser, positive_float, positive_int

    parser = Parser(prog="python -m compress.quantize", description=__doc__.split("\n\n")[0])
    add_target_arguments(parser)
    parser.add_argument("--max-drop", type=positive_float, default=0.5,
                        help="largest acceptable val top-1 drop in points, counted from the unpruned FP32 model, "
                             "before accuracy control (default 0.5)")
    parser.add_argument("--calibration", type=positive_int, default=300, help="calibration images (train split)")
    parser.add_argument("--val-limit", type=positive_int, default=None, help="validate on the first N images")
    parser.add_argument("--fp32", action="store_true", help="quantize the unpruned winner even if a pruned one exists")
    parser.add_argument("--quantize-all", action="store_true",
                        help="also quantize attention MatMuls/Div/softmax/selection ops (normally kept float)")
    parser.add_argument("--no-export", action="store_true", help="skip the export/verify/time/report step")
    parser.add_argument("--benchmark-app", action="store_true",
                        help="also time every exported IR with OpenVINO's benchmark_app (sync, 1 stream, the run's "
                             "threads) for the report, beside our clock")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = load_target(args.run, args.winner, args.precision)
    metrics = quantize_target(target, max_drop=args.max_drop, calibration=args.calibration,
                              keep_float=not args.quantize_all, use_pruned=not args.fp32, val_limit=args.val_limit,
                              quiet=args.quiet)
    print(f"INT8 ({metrics['method']}, {metrics['fake_quantize_ops']} FakeQuantize): top-1 "
          f"{100 * metrics['fp32_accuracy']:.2f}% -> {100 * metrics['int8_accuracy']:.2f}% "
          f"(drop {metrics['drop_points']:.2f} points) -> {metrics['ir']}")
    if not args.no_export:
        from compress.export import export_target
        from compress.report import winner_entry

        export_target(target, val_limit=args.val_limit, quiet=args.quiet)
        if args.benchmark_app:
            from compress.report import time_benchmark_app, write_report

            time_benchmark_app(target.out_dir, target.threads or 2)
            write_report(target)
        entry = winner_entry(target.out_dir)
        int8 = entry["variants"]["int8"]
        for name, row in entry["variants"].items():
            for clock, label in (("latency_ms", "ours"), ("benchmark_app_ms", "benchmark_app")):
                if name != "int8" and row.get(clock) and int8.get(clock):
                    print(f"INT8 {int8[clock]:.3f} ms vs {name} ({row['precision']}) {row[clock]:.3f} ms: "
                          f"{row[clock] / int8[clock]:.2f}x ({label})")
        print(f"report: {target.run_dir / 'compress' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
