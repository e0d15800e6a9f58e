"""The on-disk layout of a search run, shared by the search, the report and the compression stage.

results/<run>/
  config.yaml               resolved settings (space, data, resolutions, backend, threads, budget...)
  environment.json          versions, device, threads
  study.db                  Optuna storage (SQLite by default)
  latency_cache.sqlite      measured latencies (SQLite in WAL mode: -wal/-shm beside it while open),
                            keyed by arch hash + runtime settings (nas.latency)
  trials.csv, pareto.png, pareto.html, summary.md
  winners/<rank>-<hash>/    arch.yaml, weights.pt (state_dict), metrics.json
  compress/                 written by python -m compress.*
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nas.arch import Arch
from nas.errors import UserError

RESULTS_DIR = Path(os.environ.get("VITNAS_RESULTS", Path(__file__).resolve().parent.parent / "results"))


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and rename, so a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_run(run: str | Path | None, results: Path | None = None) -> Path:
    """A run directory: the path given, a name under results/, or the latest run there."""
    results = results or RESULTS_DIR
    if run is not None:
        for candidate in (Path(run), results / str(run)):
            if (candidate / "config.yaml").is_file():
                return candidate
        raise UserError(f"run {str(run)!r}: no such run (looked for {run}/config.yaml and {results / str(run)})")
    runs = [p for p in results.glob("*/config.yaml")] if results.is_dir() else []
    if not runs:
        raise UserError(f"no search run found under {results}; run `python -m nas.search` first or pass --run")
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def read_config(run_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


@dataclass(frozen=True)
class Winner:
    rank: int
    directory: Path
    arch: Arch
    metrics: dict[str, Any]

    def state_dict(self) -> dict[str, torch.Tensor]:
        path = self.directory / "weights.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{path}: missing") from None
        except Exception as exc:  # truncated, garbage or foreign pickle
            raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None

    def model(self) -> torch.nn.Module:
        from nas.models import build_model

        model = build_model(self.arch)
        try:
            model.load_state_dict(self.state_dict())
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{self.directory / 'weights.pt'}: does not match arch.yaml ({first})") from None
        return model.eval()


def list_winners(run_dir: Path) -> list[Winner]:
    from nas.space import load_arch_file

    winners = []
    for directory in sorted((run_dir / "winners").glob("*-*")):
        if not (directory / "arch.yaml").is_file():
            continue
        rank = int(directory.name.split("-", 1)[0])
        metrics = json.loads((directory / "metrics.json").read_text()) if (directory / "metrics.json").is_file() else {}
        winners.append(Winner(rank, directory, load_arch_file(directory / "arch.yaml"), metrics))
    return winners


def get_winner(run_dir: Path, rank: int | None) -> Winner:
    winners = list_winners(run_dir)
    if not winners:
        raise UserError(f"{run_dir}/winners: no winners (no feasible trial within the budget?)")
    if rank is None:
        return winners[0]
    for winner in winners:
        if winner.rank == rank:
            return winner
    raise UserError(f"--winner {rank}: not in {run_dir}/winners; available: {[w.rank for w in winners]}")


def save_winner(run_dir: Path, rank: int, arch: Arch, state: dict[str, torch.Tensor], metrics: dict) -> Path:
    directory = run_dir / "winners" / f"{rank}-{arch.hash}"
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "arch.yaml", arch.to_yaml())
    tmp = directory / ".weights.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / "weights.pt")
    atomic_write(directory / "metrics.json", json.dumps(metrics, indent=2))
    return directory
