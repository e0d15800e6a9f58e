"""The on-disk layout of a search run, shared by the search, the report and the compression stage.

results/<run>/
  config.yaml               resolved settings (space, data, resolutions, backend, threads, budget...)
  environment.json          versions, device, threads
  study.db                  Optuna storage (SQLite by default)
  latency_cache.sqlite      measured latencies (SQLite in WAL mode: -wal/-shm beside it while open),
                            keyed by arch hash + runtime settings (nas.latency)
  trials.csv, pareto.png, pareto.html, summary.md
  winners/<trial>-<hash>/   arch.yaml, weights.pt (state_dict), metrics.json (trial, rank on the front)
  compress/                 written by python -m compress.*
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nas.arch import Arch
from nas.atomic import atomic_path, atomic_write
from nas.errors import UserError

RESULTS_DIR = Path(os.environ.get("VITNAS_RESULTS", Path(__file__).resolve().parent.parent / "results"))
__all__ = ["RESULTS_DIR", "Winner", "atomic_path", "atomic_write", "check_study_file", "get_winner", "list_winners",
           "load_state_dict", "load_weights", "read_config", "read_json", "resolve_run", "save_winner", "winner_name"]


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
    """The run's config.yaml; UserError naming it when it is unreadable or not a mapping."""
    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; not a search run directory") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read ({type(exc).__name__}); not a search config") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a search config (expected a mapping, got {type(config).__name__})")
    return config


def check_study_file(run_dir: Path) -> None:
    """A run that exists (config.yaml) keeps its study in study.db: refuse a missing or empty one (a
    disk that filled up), which SQLite would silently start afresh, re-running and overwriting trials."""
    path = run_dir / "study.db"
    if (run_dir / "config.yaml").is_file() and (not path.is_file() or path.stat().st_size == 0):
        raise UserError(f"{path}: {'empty' if path.is_file() else 'missing'}, but {run_dir} holds a run (config.yaml); "
                        "restore the study or pass a new --run")


def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file this project wrote, or None when absent; UserError naming it when damaged or of
    another type than `kind` (so a truncated metrics file is one line, not a traceback)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: damaged ({type(exc).__name__}); delete it or rerun the command that wrote "
                        "it") from None
    if not isinstance(data, kind):
        raise UserError(f"{path}: expected a JSON {kind.__name__}, got {type(data).__name__}; delete it or rerun the "
                        "command that wrote it")
    return data


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict file (weights only); UserError naming it when missing, damaged or not a state_dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except Exception as exc:  # truncated, garbage or foreign pickle
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state_dict (a {type(state).__name__})")
    return state


def load_weights(model: torch.nn.Module, path: Path, what: str = "its arch") -> torch.nn.Module:
    """Load the state_dict at `path` into `model`; UserError naming the file when it does not fit."""
    try:
        model.load_state_dict(load_state_dict(path))
    except RuntimeError as exc:  # "Error(s) in loading state_dict for X:" then what is missing or mis-sized
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[1:2] or lines[:1])
        raise UserError(f"{path}: does not match {what} ({detail[:160]})") from None
    return model


def winner_name(trial: int, arch: Arch) -> str:
    """A winner's directory name: trial number and arch hash, stable across re-reports."""
    return f"{trial}-{arch.hash}"


@dataclass(frozen=True)
class Winner:
    """A front member exported by nas.report: winners/<trial>-<hash>/ (arch.yaml, weights.pt, metrics.json).

    `rank` (1 = most accurate) is its place on the front at the last report; None when it has left
    the front since (its folder is kept because compress/ holds outputs made from it)."""

    trial: int
    directory: Path
    arch: Arch
    metrics: dict[str, Any]

    @property
    def rank(self) -> int | None:
        rank = self.metrics.get("rank")
        return rank if isinstance(rank, int) else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_state_dict(self.directory / "weights.pt")

    def model(self) -> torch.nn.Module:
        from nas.models import build_model

        return load_weights(build_model(self.arch), self.directory / "weights.pt", "arch.yaml").eval()


def _read_winner(directory: Path) -> Winner:
    from nas.space import load_arch_file

    metrics = read_json(directory / "metrics.json") or {}
    arch = load_arch_file(directory / "arch.yaml")
    trial = metrics.get("trial")
    if not isinstance(trial, int):  # metrics.json names the trial; older runs' folder names began with a rank
        head = directory.name.split("-", 1)[0]
        if not head.isdigit():
            raise UserError(f"{directory / 'metrics.json'}: no trial number")
        trial = int(head)
    return Winner(trial, directory, arch, metrics)


def list_winners(run_dir: Path) -> list[Winner]:
    """Front members by rank, then winners that have left the front (by trial number)."""
    found = [_read_winner(d) for d in (run_dir / "winners").glob("*-*") if (d / "arch.yaml").is_file()]
    return sorted(found, key=lambda w: (w.rank is None, w.rank or 0, w.trial))


def get_winner(run_dir: Path, trial: int | None, *, rank: int | None = None) -> Winner:
    """The winner of trial number `trial`, or of `rank` on the front, or the best one (rank 1)."""
    winners = list_winners(run_dir)
    if not winners:
        raise UserError(f"{run_dir}/winners: no winners (no feasible trial within the budget?)")
    if rank is not None:
        for winner in winners:
            if winner.rank == rank:
                return winner
        raise UserError(f"--winner {rank}: no winner of rank {rank} on the front in {run_dir}/winners; ranks: "
                        f"{[w.rank for w in winners if w.rank is not None]}")
    if trial is None:
        return winners[0]
    for winner in winners:
        if winner.trial == trial:
            return winner
    raise UserError(f"--winner {trial}: no winner of trial {trial} in {run_dir}/winners; winners' trial numbers: "
                    f"{[w.trial for w in winners]}")


def save_winner(run_dir: Path, trial: int, arch: Arch, state: dict[str, torch.Tensor], metrics: dict) -> Path:
    """Write winners/<trial>-<hash>/; arch.yaml last, as list_winners takes a folder with one as complete."""
    directory = run_dir / "winners" / winner_name(trial, arch)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "weights.pt") as tmp:
        torch.save(state, tmp)
    atomic_write(directory / "metrics.json", json.dumps({"trial": trial, **metrics}, indent=2))
    atomic_write(directory / "arch.yaml", arch.to_yaml())
    return directory
