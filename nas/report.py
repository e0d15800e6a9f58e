"""Results a person can open: trials.csv, pareto.png, pareto.html, summary.md and winners/.

`python -m nas.report [--run R]` regenerates them from the study; the search writes them too.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas import faults
from nas.arch import Arch
from nas.cli import Parser
from nas.errors import UserError, run_cli
from nas.failures import fail_reason, failures_md
from nas.runs import (
    atomic_path,
    atomic_write,
    load_state_dict,
    read_config,
    read_json,
    resolve_run,
    save_winner,
    winner_name,
)

CSV_COLUMNS = ("number", "state", "baseline", "arch_hash", "architecture", "accuracy", "latency_ms",
               "precision", "latency_cv", "latency_loaded", "feasible", "trained", "stopped_early", "epochs_run",
               "stop_reason", "params_m", "seconds", "fail_reason")


def is_feasible(trial: FrozenTrial) -> bool:
    """Within budget, read from Optuna's constraint (the only record of it; <= 0 is feasible)."""
    constraints = trial.constraints
    return trial.state == TrialState.COMPLETE and bool(constraints) and all(v <= 0 for v in constraints.values())


def is_trained(trial: FrozenTrial) -> bool:
    return is_feasible(trial) and bool(trial.user_attrs.get("trained"))


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's own front (`study.best_trials`: feasible by the stored constraint), trained, by latency."""
    return sorted((t for t in study.best_trials if is_trained(t)), key=lambda t: t.values[1])


def describe(arch: Arch | dict[str, Any]) -> str:
    """A compact one-line description, e.g. 'dsconv:16 > mbconv 2x24, catm 3x64, litemla 2x128 > evit'.

    stem kind:width, then each stage as mixer depth x width (a `conv2` stem of width 24 reads
    `conv2:24`, never `conv224`)."""
    arch = arch if isinstance(arch, Arch) else Arch.from_dict(arch)
    stages = ", ".join(f"{s.mixer} {s.depth}x{s.width}" for s in arch.stages)
    return f"{arch.stem_kind}:{arch.stem_width} > {stages} > {arch.head_kind}"


def _row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    latency = attrs.get("latency") or {}
    done = trial.state == TrialState.COMPLETE
    return {
        "number": trial.number,
        "state": trial.state.name,
        "baseline": attrs.get("baseline", ""),
        "arch_hash": attrs.get("arch_hash", ""),
        "architecture": describe(attrs["arch"]) if "arch" in attrs else "",
        "accuracy": round(trial.values[0], 4) if done and attrs.get("trained") else "",
        "latency_ms": round(attrs["latency_ms"], 3) if "latency_ms" in attrs else "",
        "precision": latency.get("precision", ""),
        "latency_cv": round(latency.get("cv", 0.0), 4) if latency else "",
        "latency_loaded": bool(attrs.get("latency_loaded", latency.get("loaded"))) if latency else "",
        "feasible": is_feasible(trial) if done else "",
        "trained": bool(attrs.get("trained")),
        "stopped_early": bool(attrs.get("stopped_early")),
        "epochs_run": attrs.get("epochs", len(attrs.get("curve", []))),
        "stop_reason": attrs.get("stop_reason", ""),
        "params_m": round(attrs["params_m"], 3) if "params_m" in attrs else "",
        "seconds": round(attrs.get("seconds", 0.0), 1),
        "fail_reason": fail_reason(trial) if trial.state == TrialState.FAIL else "",
    }


def trials_csv(trials: list[FrozenTrial]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for trial in trials:
        writer.writerow(_row(trial))
    return out.getvalue()


def pareto_png(path: Path, trials: list[FrozenTrial], front: list[FrozenTrial], budget_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    searched = [t for t in trials if is_trained(t) and not t.user_attrs.get("baseline")]
    over = [t for t in trials if t.state == TrialState.COMPLETE and not is_feasible(t)]
    trained_acc = [100 * t.values[0] for t in trials if is_trained(t)]
    # Over-budget trials have no accuracy: draw them on a strip just below the trained ones, so the
    # y axis keeps the resolution where the Pareto front is.
    floor = (min(trained_acc) - 0.15 * (max(trained_acc) - min(trained_acc) + 2)) if trained_acc else 0.0
    ax.scatter([t.values[1] for t in searched], [100 * t.values[0] for t in searched], s=22, c="tab:blue",
               alpha=0.6, label="searched (within budget)")
    if over:
        ax.scatter([t.values[1] for t in over], [floor] * len(over), s=22, marker="x",
                   c="tab:gray", label="over budget (not trained; drawn at the bottom)")
    ax.plot([t.values[1] for t in front], [100 * t.values[0] for t in front], "-o", c="tab:red", ms=6,
            label="Pareto front")
    for trial in trials:
        family = trial.user_attrs.get("baseline")
        if family and trial.state == TrialState.COMPLETE:
            y = 100 * trial.values[0] if is_trained(trial) else floor
            ax.scatter([trial.values[1]], [y], s=90, marker="*", c="tab:green", zorder=5)
            ax.annotate(trial.user_attrs["arch"].get("name") or family, (trial.values[1], y),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.scatter([], [], s=90, marker="*", c="tab:green", label="hand-designed baselines")
    ax.axvline(budget_ms, ls="--", c="black", lw=1, label=f"budget {budget_ms:g} ms")
    ax.set_xlabel("measured latency (ms, batch 1)")
    ax.set_ylabel("proxy validation accuracy (%)")
    ax.set_title("Accuracy vs measured latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pareto_html(path: Path, study: optuna.Study) -> None:
    """Optuna's own interactive Pareto plot (feasible/infeasible by our constraint), self-contained."""
    from optuna.visualization import plot_pareto_front

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not trials:
        atomic_write(path, "<html><body>No completed trials yet.</body></html>")
        return
    # The sampler stored each trial's constraint, so Optuna marks infeasible trials by itself.
    figure = plot_pareto_front(study, target_names=["accuracy", "latency (ms)"])
    atomic_write(path, figure.to_html(include_plotlyjs=True, full_html=True))


def run_machine(run_dir: Path) -> str:
    """The machine a run measured on, one line, from its environment.json."""
    from nas.latency import machine_line

    try:
        return machine_line(json.loads((run_dir / "environment.json").read_text())["machine"])
    except (KeyError, OSError, ValueError, TypeError):
        return "an unrecorded machine (no environment.json)"


def summary_md(config: dict[str, Any], trials: list[FrozenTrial], winners: list[tuple[int | None, FrozenTrial]],
               machine: str = "", space_fit: dict[str, Any] | None = None) -> str:
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    lines = [
        f"# Search summary: budget {config['budget_ms']:g} ms",
        "",
        f"- latency: {config['backend']} at {config.get('precision', 'fp32')}, {config['threads']} threads, "
        f"{config['target_resolution']}px, on {machine or 'an unrecorded machine'}",
        f"- proxy training {config['epochs']} epochs at {config['proxy_resolution']}px on "
        f"{config['data'] or 'mnist'} ({config['num_classes']} classes); sampler {config['sampler']}, seed "
        f"{config['seed']}",
        _halving_line(config, complete),
        *([_fit_line(space_fit)] if space_fit else []),
        f"- trials: {len(trials)} ({', '.join(f'{k.lower()} {v}' for k, v in states.items() if v)}); "
        f"within budget: {sum(is_feasible(t) for t in complete)}, over budget: "
        f"{sum(not is_feasible(t) for t in complete)} (rejected by prediction, not built: "
        f"{sum(bool(t.user_attrs.get('rejected_by_prediction')) for t in complete)})",
        "",
    ]
    if complete and not any(is_feasible(t) for t in complete):
        lines += [f"**No feasible architecture**: all {len(complete)} completed trials exceed the "
                  f"{config['budget_ms']:g} ms budget (fastest {min(t.values[1] for t in complete):.3g} ms); "
                  "raise the budget or search a smaller space.", ""]
    lines += [
        "## Winners (Pareto-optimal within budget)",
        "",
        "| rank | trial | accuracy | latency (ms) | CV | params (M) | architecture |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for rank, t in winners:
        lat = t.user_attrs.get("latency", {})
        lines.append(f"| {rank or 'left the front'} | {t.number} | {100 * t.values[0]:.2f}% | {t.values[1]:.2f} | "
                     f"{100 * lat.get('cv', 0):.1f}% | {t.user_attrs.get('params_m', 0):.2f} | "
                     f"{describe(t.user_attrs['arch'])} |")
    if not winners:
        lines.append("| - | - | - | - | - | - | no trained trial within the budget |")
    lines += ["", "## Hand-designed baselines (scaled to the budget)", "",
              "| family | trial | accuracy | latency (ms) | architecture |", "|---|---:|---:|---:|---|"]
    for t in trials:
        if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE:
            acc = f"{100 * t.values[0]:.2f}%" if is_trained(t) else "over budget"
            lines.append(f"| {t.user_attrs['arch'].get('name')} | {t.number} | {acc} | {t.values[1]:.2f} | "
                         f"{describe(t.user_attrs['arch'])} |")
    lines += failures_md(trials)
    lines += ["", "Files: trials.csv, pareto.png, pareto.html, winners/<trial>-<hash>/ "
              "(arch.yaml, weights.pt, metrics.json), study.db (open with optuna-dashboard).", ""]
    return "\n".join(lines)


def _fit_line(fit: dict[str, Any]) -> str:
    rounds = ", ".join(f"x{r['multiplier']:g}: {r['median_ms']:.2f} ms of {len(r['latencies_ms'])}"
                       for r in fit["rounds"])
    return (f"- space fitted to this machine (nas.fit): stem and stage widths x{fit['multiplier']:g}; median latency "
            f"of random architectures per round: {rounds} (space_fitted.yaml)")


def _halving_line(config: dict[str, Any], complete: list[FrozenTrial]) -> str:
    from nas.fidelity import rungs

    schedule = rungs(config["epochs"], config.get("min_epochs", config["epochs"]), config.get("eta", 3))
    stopped = sum(bool(t.user_attrs.get("stopped_early")) for t in complete)
    trained = sum(bool(t.user_attrs.get("trained")) for t in complete)
    if not schedule:
        return f"- successive halving: off (every trained trial gets all {config['epochs']} epochs)"
    return (f"- successive halving: rungs after epoch {', '.join(map(str, schedule))} (eta {config.get('eta', 3)}); "
            f"{stopped} of {trained} trained trials stopped at a rung")


def export_winners(run_dir: Path, front: list[FrozenTrial],
                   trials: list[FrozenTrial] | None = None) -> list[tuple[int | None, FrozenTrial]]:
    """Copy each front member's checkpoint into winners/<trial>-<hash>/ with its rank (1 = most
    accurate) in metrics.json. Folder names never change with the ranking: a winner that left the
    front is deleted, unless compress/ holds outputs made from it; then it is kept with rank None
    and returned with rank None (the summary marks it)."""
    ranked = sorted(front, key=lambda t: (-t.values[0], t.values[1]))
    winners_dir = run_dir / "winners"
    by_trial = {w.trial: w for w in _winners_or_none(run_dir)}
    keep = set()
    exported: list[tuple[int | None, FrozenTrial]] = []
    for rank, trial in enumerate(ranked, start=1):
        checkpoint = run_dir / "checkpoints" / trial.user_attrs.get("checkpoint", "")
        if not checkpoint.is_file():
            continue
        arch = Arch.from_dict(trial.user_attrs["arch"])
        _rename_legacy(run_dir, by_trial.get(trial.number), winner_name(trial.number, arch))
        metrics = {"trial": trial.number, "rank": rank, "accuracy": trial.values[0], "latency_ms": trial.values[1],
                   "latency": trial.user_attrs.get("latency"), "params_m": trial.user_attrs.get("params_m"),
                   "curve": trial.user_attrs.get("curve"), "baseline": trial.user_attrs.get("baseline")}
        keep.add(save_winner(run_dir, trial.number, arch, load_state_dict(checkpoint), metrics).name)
        exported.append((rank, trial))
    numbers = {t.number: t for t in trials or []}
    for stale in sorted(winners_dir.glob("*-*")) if winners_dir.is_dir() else []:
        if stale.name in keep or not stale.is_dir():
            continue
        if (run_dir / "compress" / stale.name).is_dir():  # compress/ outputs follow this folder: keep it
            metrics = read_json(stale / "metrics.json") or {}
            atomic_write(stale / "metrics.json", json.dumps({**metrics, "rank": None}, indent=2))
            if metrics.get("trial") in numbers:
                exported.append((None, numbers[metrics["trial"]]))
            continue
        for file in stale.iterdir():  # left the front, nothing made from it
            file.unlink()
        stale.rmdir()
    return exported


def _winners_or_none(run_dir: Path) -> list[Any]:
    from nas.runs import list_winners

    try:
        return list_winners(run_dir)
    except UserError:  # a damaged winner folder: rewritten below when its trial is still on the front
        return []


def _rename_legacy(run_dir: Path, winner: Any, name: str) -> None:
    """Runs reported before winners were keyed by trial named their folders by rank: rename the folder
    of this trial (and its compress/ outputs) to <trial>-<hash>."""
    if winner is None or winner.directory.name == name or (run_dir / "winners" / name).exists():
        return
    old = run_dir / "compress" / winner.directory.name
    if old.is_dir() and not (run_dir / "compress" / name).exists():
        old.rename(run_dir / "compress" / name)
    winner.directory.rename(run_dir / "winners" / name)


def write_report(run_dir: Path, study: optuna.Study, budget_ms: float | None = None, splits: Any = None) -> None:
    """Regenerate every result file; workers sharing the run directory take turns (a file lock)."""
    from filelock import FileLock

    with FileLock(run_dir / ".report.lock"):
        _write_report(run_dir, study, budget_ms)


REPORT_FILES = ("trials.csv", "pareto.png", "pareto.html", "summary.md", "front.json")


def _write_report(run_dir: Path, study: optuna.Study, budget_ms: float | None) -> None:
    for name in REPORT_FILES:  # temporary files of a report killed mid-write (only written under the lock)
        for stale in run_dir.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    config = read_config(run_dir)
    budget_ms = budget_ms if budget_ms is not None else config["budget_ms"]
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(study)
    atomic_write(run_dir / "trials.csv", trials_csv(trials))
    with atomic_path(run_dir / "pareto.png") as tmp:
        pareto_png(tmp, trials, front, budget_ms)
        faults.point("report")
    pareto_html(run_dir / "pareto.html", study)
    winners = export_winners(run_dir, front, trials)
    from nas.final import final_markdown

    summary = summary_md(config, trials, winners, run_machine(run_dir), study.user_attrs.get("space_fit"))
    final = final_markdown(run_dir)
    atomic_write(run_dir / "summary.md", summary + ("\n" + "\n".join(final) if final else ""))
    atomic_write(run_dir / "front.json", json.dumps(
        [{"rank": r, "trial": t.number, "accuracy": t.values[0], "latency_ms": t.values[1],
          "arch_hash": t.user_attrs.get("arch_hash")} for r, t in winners if r is not None], indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m nas.report", description=__doc__)
    parser.add_argument("--run", default=None, help="run directory or name (default: latest under results/)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL if not the run's study.db")
    args = parser.parse_args(argv)
    run_dir = resolve_run(args.run)
    try:
        config = read_config(run_dir)
    except Exception as exc:  # the user's file: one line, not a traceback
        raise UserError(f"{run_dir}/config.yaml: cannot read ({type(exc).__name__})") from None
    if not isinstance(config, dict) or "budget_ms" not in config:
        raise UserError(f"{run_dir}/config.yaml: not a search config (no budget_ms)")
    url = args.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if not args.storage and not (run_dir / "study.db").is_file():
        raise UserError(f"{run_dir}/study.db: not found; pass --storage for a study kept elsewhere")
    try:
        study = optuna.load_study(study_name=config.get("study_name", "search"), storage=url)
    except KeyError:
        raise UserError(f"{url}: no study named {config.get('study_name', 'search')!r}") from None
    except Exception as exc:  # a corrupt study.db, a bad URL, a missing driver
        raise UserError(f"{url}: cannot open the study ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    write_report(run_dir, study)
    print(f"report written to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
