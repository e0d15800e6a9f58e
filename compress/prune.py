"""Structured pruning of a winner with torch-pruning, to a measured latency or a channel ratio.

    python -m compress.prune [--run R] [--winner K] [--target-ms T | --ratio P] [--epochs N] [--distill]

What is pruned comes from the model families: each family file in nas/models/ registers
`PruningRule`s (which of its layers keep their output channels, and why) with its mixer; here they
are applied to every instance of their module class. The classifier's output stays. Channel counts
are rounded to multiples of 8 (round_to=8).

With --target-ms the pruner steps the channel ratio up and measures the model (nas.latency, run's
backend and threads, target resolution) after each step until it is under the target. Then it
fine-tunes with nas.train.train_proxy (optionally distilling from the unpruned model) and saves the
whole module (it no longer matches its Arch) to <run>/compress/<winner>/pruned/model.pt.

It starts from the winner's final weights (nas.train, target resolution) when they exist, and then
fine-tunes and evaluates at the target resolution; otherwise from the proxy weights at the proxy
resolution, and says so. Fine-tuning uses the run's train split, the accuracy reported is val
(and test, reported only), on exactly the run's images.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from compress._metrics import count_macs, count_params
from compress._target import Target, add_target_arguments, load_target, write_json
from compress._units import count_blocks, opaque_units, prune_inner, unit_pruner
from nas.atomic import atomic_path
from nas.errors import UserError, run_cli
from nas.export import example_input
from nas.latency import MeasureSettings, measure
from nas.models.registry import PruningRule, pruning_rules

ROUND_TO = 8


def ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels must not be pruned: the families' rules, and the classifier."""
    rules = pruning_rules()
    ignored = [layer for module in model.modules() for rule in rules if isinstance(module, rule.module)
               for layer in rule.frozen_layers(module)]
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    return ignored + [classifier]


def _unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Bare parameters with the dim that holds channels (else torch-pruning guesses, noisily)."""
    rules = pruning_rules()
    return [found for module in model.modules() for rule in rules if isinstance(module, rule.module)
            for found in rule.unwrapped_parameters(module)]


def _units(model: nn.Module) -> list[tuple[nn.Module, PruningRule]]:
    """Every instance of a unit rule's module class (one node of the dependency graph each)."""
    rules = [rule for rule in pruning_rules() if rule.is_unit]
    return [(module, rule) for module in model.modules() for rule in rules if isinstance(module, rule.module)]


def _meta_pruner_class() -> type:
    import torch_pruning as tp

    class MetaPruner(tp.pruner.MetaPruner):
        """torch-pruning's MetaPruner with round_to applied to the whole width of grouped channels.

        Its `_round_to` receives the count pruned in *one* channel group (heads) but the width of all of
        them, and then may take more than a group holds; here the kept width per group is rounded so that
        all groups together stay a multiple of round_to.
        """

        _groups = 1

        def _is_atten_group(self, group: Any) -> Any:  # called per group right before _round_to
            self._groups = self._get_channel_groups(group)
            return super()._is_atten_group(group)

        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            if self._groups <= 1:
                return super()._round_to(n_pruned, current_channels, round_to)
            per_group = current_channels // self._groups
            step = round_to // math.gcd(round_to, self._groups)
            keep = max(step, (per_group - n_pruned) // step * step)
            return max(0, min(per_group - 1, per_group - keep))

    return MetaPruner


def make_pruner(model: nn.Module, resolution: int, ratio: float, steps: int = 1) -> Any:
    """A torch-pruning MetaPruner: L2 group magnitude, same ratio per layer, `steps` equal steps to `ratio`;
    the families' units are customized pruners (compress._units)."""
    import torch_pruning as tp

    model.eval()
    units = {rule.module: unit_pruner(rule) for rule in pruning_rules() if rule.is_unit}
    with warnings.catch_warnings(), opaque_units(model, units):
        warnings.simplefilter("ignore")
        return _meta_pruner_class()(
            model, example_input(resolution), importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, iterative_steps=steps, round_to=ROUND_TO, ignored_layers=ignored_layers(model),
            unwrapped_parameters=_unwrapped_parameters(model), customized_pruners=units,
        )


class Pruner:
    """One pruning schedule: torch-pruning's steps for the graph, the units' inner sets (heads) alongside."""

    def __init__(self, model: nn.Module, resolution: int, ratio: float, steps: int = 1) -> None:
        self.model, self.ratio, self.steps = model, ratio, steps
        self.graph = make_pruner(model, resolution, ratio, steps)
        self.initial: dict[int, int] = {}
        self.done = 0

    def step(self) -> float:
        """Prune to the next step's ratio; returns it."""
        self.graph.step()
        self.done += 1
        ratio = self.ratio * self.done / self.steps
        for unit, rule in _units(self.model):
            for inner in rule.inner:
                prune_inner(unit, inner, 1.0 - ratio, self.initial, ROUND_TO)
        return ratio


@dataclass
class PruneStep:
    step: int
    ratio: float
    params: int
    latency_ms: float | None


def prune_model(model: nn.Module, resolution: int, *, ratio: float | None = None, target_ms: float | None = None,
                latency: Any = None, step_ratio: float = 0.1, max_ratio: float = 0.8) -> list[PruneStep]:
    """Prune `model` in place; returns the steps taken.

    With `ratio`: one shot to that channel ratio. With `target_ms` and `latency` (model -> ms):
    steps of `step_ratio` until latency(model) <= target_ms or `max_ratio` is reached.
    """
    if (ratio is None) == (target_ms is None):
        raise ValueError("give exactly one of ratio and target_ms")
    if ratio is not None:
        Pruner(model, resolution, ratio).step()
        return [PruneStep(1, ratio, count_params(model), latency(model) if latency else None)]
    steps = max(1, round(max_ratio / step_ratio))
    pruner = Pruner(model, resolution, max_ratio, steps)
    history = []
    for step in range(1, steps + 1):
        pruner.step()
        ms = latency(model)
        history.append(PruneStep(step, max_ratio * step / steps, count_params(model), ms))
        if ms <= target_ms:
            break
    return history


def interleaved_latency(models: list[nn.Module], latency: Any, rounds: int = 2) -> list[float]:
    """Lowest of `rounds` alternating measurements per model."""
    best = [float("inf")] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            best[i] = min(best[i], latency(model))
    return best


def block_params(model: nn.Module, mixers: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Parameters per block (stem, each stage, head) and per unit (attention core or stage: its width, and
    heads where it has them), so a report shows what pruning took from where."""
    rows: dict[str, dict[str, Any]] = {}
    for name, child in model.named_children():
        if name == "stages":
            for i, stage in enumerate(child):
                rows[f"stages.{i}"] = {"params": count_params(stage)}
                if mixers and i < len(mixers):
                    rows[f"stages.{i}"]["mixer"] = mixers[i]
        else:
            rows[name] = {"params": count_params(child)}
    names = {module: name for name, module in model.named_modules()}
    for unit, rule in _units(model):
        row = {"kind": type(unit).__name__, "params": count_params(unit),
               "width": unit_pruner(rule).get_out_channels(unit)}
        for inner in rule.inner:
            if isinstance(inner.block, str):  # heads
                row["heads"] = count_blocks(unit, inner)
                row[inner.block] = getattr(unit, inner.block)
        rows[names[unit]] = row
    return rows


def snapshot(model: nn.Module, resolution: int, accuracy: float, latency_ms: float | None,
             mixers: list[str] | None = None) -> dict[str, Any]:
    return {"params": count_params(model), "macs": count_macs(model, resolution), "accuracy": accuracy,
            "latency_ms": latency_ms, "blocks": block_params(model, mixers)}


def prune_target(target: Target, *, ratio: float | None = None, target_ms: float | None = None, epochs: int = 1,
                 distill: bool = False, settings: MeasureSettings | None = None,
                 quiet: bool = False) -> dict[str, Any]:
    """Prune + fine-tune a winner; save pruned/model.pt and pruned/metrics.json; returns the metrics."""
    from nas.train import evaluate, train_proxy

    if ratio is None and target_ms is None:
        budget = target.config.get("budget_ms")
        raise UserError("give --ratio P or --target-ms T" + (f" (the run's budget was {budget} ms)" if budget else ""))
    resolution = target.target_resolution

    def latency(m: nn.Module) -> float:
        stats = measure(m, resolution, target.backend, target.threads, precision=target.precision, settings=settings)
        if not quiet:
            print(f"  {count_params(m) / 1e3:.1f} k params: {stats.summary()}", file=sys.stderr)
        return stats.ms

    train_resolution = target.train_resolution
    model = target.fp32_model()  # first: unreadable weights are a one-line error with nothing printed before
    if not quiet:
        print(f"starting from the {target.weights} weights of {target.winner.directory.name}; fine-tuning and "
              f"accuracy at {train_resolution} px"
              + ("" if target.weights == "final" else " (no final training yet: python -m nas.train)"),
              file=sys.stderr)
    splits = target.splits(train_resolution)
    original = copy.deepcopy(model).eval()
    if target_ms is not None and (start_ms := latency(model)) <= target_ms:
        raise UserError(f"the winner already runs in {start_ms:.3f} ms <= --target-ms {target_ms}")
    history = prune_model(model, resolution, ratio=ratio, target_ms=target_ms, latency=latency)
    pruned_accuracy = evaluate(model, splits.val)
    if epochs > 0:
        train_proxy(model, splits, epochs=epochs, teacher=original if distill else None, threads=target.threads,
                    progress=not quiet)
    model.eval()
    # The final comparison is interleaved (slow spells of this shared machine hit one-off measurements unevenly).
    before_ms, after_ms = interleaved_latency([original, model], latency)
    mixers = [stage.mixer for stage in target.winner.arch.stages]
    before = snapshot(original, resolution, evaluate(original, splits.val), before_ms, mixers)
    after = snapshot(model, resolution, evaluate(model, splits.val), after_ms, mixers)
    before["test_accuracy"], after["test_accuracy"] = evaluate(original, splits.test), evaluate(model, splits.test)
    return save_pruned(target, model, history, before=before, after=after, pruned_accuracy=pruned_accuracy,
                       target_ms=target_ms, epochs=epochs, distill=distill)


def save_pruned(target: Target, model: nn.Module, history: list[PruneStep], *, before: dict[str, Any],
                after: dict[str, Any], pruned_accuracy: float, target_ms: float | None, epochs: int,
                distill: bool) -> dict[str, Any]:
    """Write pruned/model.pt (whole module) and pruned/metrics.json (snapshots before/after, with their
    per-block parameter counts); returns the metrics."""
    with atomic_path(target.pruned_path()) as tmp:
        torch.save(model, tmp)
    (target.int8_dir / "metrics.json").unlink(missing_ok=True)  # an INT8 of the previous pruned model is stale
    metrics = {
        "ratio": history[-1].ratio, "steps": len(history), "target_ms": target_ms,
        "reached_target": None if target_ms is None else after["latency_ms"] <= target_ms,
        "fine_tune_epochs": epochs, "distill": distill, "weights": target.weights,
        "accuracy_resolution": target.train_resolution,
        "latency_resolution": target.target_resolution, "backend": target.backend, "threads": target.threads,
        "precision": target.precision,
        "before": before, "pruned_before_fine_tune_accuracy": pruned_accuracy, "after": after,
        "history": [asdict(h) for h in history], "model": str(target.pruned_path()),
        "note": "accuracy: PyTorch on the val split (test: reported only) at accuracy_resolution; "
                "MACs/latency at the target resolution; blocks: parameters per stage and per pruning unit",
    }
    write_json(target.pruned_dir / "metrics.json", metrics)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    from nas.cli import Parser, positive_float

    parser = Parser(prog="python -m compress.prune", description=__doc__.split("\n\n")[0])
    add_target_arguments(parser)
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--target-ms", type=positive_float, help="prune until the measured latency is below this")
    goal.add_argument("--ratio", type=float, help="prune this share of channels per prunable layer (0..0.9)")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs after pruning (default 1, 0: none)")
    parser.add_argument("--distill", action="store_true", help="fine-tune with the unpruned winner as teacher")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ratio is not None and not 0.0 < args.ratio <= 0.9:
        raise UserError(f"--ratio must be in (0, 0.9], got {args.ratio}")
    if args.epochs < 0:
        raise UserError(f"--epochs must be >= 0, got {args.epochs}")
    target = load_target(args.run, args.winner, args.precision)
    metrics = prune_target(target, ratio=args.ratio, target_ms=args.target_ms, epochs=args.epochs,
                           distill=args.distill, quiet=args.quiet)
    b, a = metrics["before"], metrics["after"]
    print(f"pruned {target.winner.directory.name} (ratio {metrics['ratio']:.2f}): params {b['params']} -> "
          f"{a['params']}, MACs {b['macs'] / 1e6:.1f}M -> {a['macs'] / 1e6:.1f}M, latency {b['latency_ms']:.3f} -> "
          f"{a['latency_ms']:.3f} ms, top-1 {100 * b['accuracy']:.2f}% -> {100 * a['accuracy']:.2f}% "
          f"-> {metrics['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
