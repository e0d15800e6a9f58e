"""What the compression commands work on: one winner of one search run, and where results go.

results/<run>/compress/<trial>-<hash>/     named like the winner's folder (winners/<trial>-<hash>/)
  pruned/   model.pt (whole module: a pruned net no longer matches its Arch), metrics.json
  int8/     model.xml/.bin (NNCF INT8 OpenVINO IR), metrics.json
  export/   fp32|pruned|int8 .xml/.bin/.onnx, metrics.json (verification + timing)
results/<run>/compress/report.json, report.md   one entry per compressed winner
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.data import Splits
from nas.errors import UserError
from nas.latency import PRECISIONS
from nas.runs import Winner, atomic_write, get_winner, load_weights, read_config, resolve_run
from nas.runs import read_json as read_json  # re-exported for compress.export/report

DEFAULT_TARGET_RESOLUTION = 224


@dataclass(frozen=True)
class Target:
    run_dir: Path
    winner: Winner
    config: dict[str, Any]
    precision_override: str | None = None  # --precision; else the run's

    @property
    def out_dir(self) -> Path:
        return self.run_dir / "compress" / self.winner.directory.name

    @property
    def pruned_dir(self) -> Path:
        return self.out_dir / "pruned"

    @property
    def int8_dir(self) -> Path:
        return self.out_dir / "int8"

    @property
    def export_dir(self) -> Path:
        return self.out_dir / "export"

    @property
    def data(self) -> str | None:
        return self.config.get("data")

    @property
    def proxy_resolution(self) -> int:
        return int(self.config.get("proxy_resolution") or self.target_resolution)

    @property
    def target_resolution(self) -> int:
        return int(self.config.get("target_resolution") or DEFAULT_TARGET_RESOLUTION)

    @property
    def backend(self) -> str:
        return str(self.config.get("backend") or "openvino")

    @property
    def precision(self) -> str:
        """The precision latencies are measured at: --precision, else the search's (fp32 by default)."""
        return str(self.precision_override or self.config.get("precision") or "fp32")

    @property
    def threads(self) -> int | None:
        threads = self.config.get("threads")
        return int(threads) if threads else None

    @property
    def final_weights(self) -> Path | None:
        """Weights from final training at the target resolution (nas.train), if it has run."""
        from nas.final import final_weights

        return final_weights(self.run_dir, self.winner.arch)

    @property
    def weights(self) -> str:
        """Which weights the FP32 model has: 'final' (target resolution) or 'proxy' (search proxy)."""
        return "final" if self.final_weights is not None else "proxy"

    @property
    def train_resolution(self) -> int:
        """The resolution the FP32 weights were trained at: where their accuracy means something."""
        return self.target_resolution if self.weights == "final" else self.proxy_resolution

    def fp32_model(self) -> nn.Module:
        """The winner with its final weights when final training has run, else its proxy weights."""
        path = self.final_weights
        if path is None:
            return self.winner.model()
        from nas.models import build_model

        return load_weights(build_model(self.winner.arch), path, "the winner's arch.yaml").eval()

    def splits(self, resolution: int) -> Splits:
        """The run's own train/val/test images at `resolution` (same source, seed and limit as the search)."""
        return load_splits(self.run_dir, resolution)

    def pruned_path(self) -> Path:
        return self.pruned_dir / "model.pt"

    def has_pruned(self) -> bool:
        return self.pruned_path().is_file()


def load_target(run: str | Path | None, trial: int | None, precision: str | None = None) -> Target:
    """Resolve --run/--winner (a winner's trial number; None: the best) to a Target; UserError (one
    line, exit 2) when either is missing or damaged or the precision cannot run on OpenVINO here."""
    from nas.latency import check_precision

    run_dir = resolve_run(run)
    target = Target(run_dir, get_winner(run_dir, trial), read_config(run_dir), precision)
    check_precision(target.precision, "openvino")
    return target


@functools.lru_cache(maxsize=4)
def load_splits(run_dir: Path, resolution: int) -> Splits:
    """The run's splits (nas.final.run_splits: checked against the run's manifest), memoised: prune,
    quantize and export in one process share the decode."""
    from nas.final import run_splits

    return run_splits(run_dir, resolution)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="run directory or name under results/ (default: the latest run)")
    parser.add_argument("--winner", type=int, default=None, metavar="TRIAL",
                        help="the winner of this trial number (winners/<trial>-<hash>/, summary.md; default: the "
                             "best, rank 1)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="precision latencies are measured at (default: the search run's, fp32 if unset); "
                             "the report also times the float IRs at fp32 and, where the CPU has it, bf16")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def load_module(path: Path) -> nn.Module:
    """A whole pickled module (trusted: written by compress.prune in this run directory)."""
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or garbage: any unpickling error
        raise UserError(f"{path}: not a readable pruned model ({type(exc).__name__}); delete it or rerun "
                        "python -m compress.prune") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"{path}: not a pruned model (a {type(module).__name__}); delete it or rerun "
                        "python -m compress.prune")
    return module.eval()
