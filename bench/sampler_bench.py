"""Sampler benchmark: which Optuna sampler finds the best feasible front in few trials?

Compares RandomSampler, NSGAIISampler (population 12, the search's), TPESampler(multivariate,
constant_liar) and GPSampler at equal trial counts over several seeds, on an objective cheap enough
to repeat but built from real trials:

1. `--record RUN`: a replay table of real trials of the default space, recorded once by a real
   search (`python -m nas.search --sampler random --no-baselines ...`: measured OpenVINO latency
   at the target resolution, a real short proxy training): every completed trial's parameters,
   architecture, latency and accuracy -> bench/results/sampler_replay.json.
2. The replay objective: two ridge regressions on features of the decoded architecture (per stage
   and mixer: depth, depth x width, depth x width^2; downsampling, stem, head), fitted to the
   table's log-latency (all trials) and accuracy (trained trials). Their 5-fold cross-validated R^2
   is reported with the results, so the reader sees how faithful the replay is. Every sampler sees
   exactly the search's encoding (`SearchSpace.suggest`: every knob under a fixed name), the latency
   constraint through `trial.set_constraint`, and the three baselines enqueued first, as in a search.
3. Hypervolume of the *feasible* front after each trial (maximise accuracy, minimise latency;
   reference point accuracy 0, latency = budget), median and IQR over the seeds.

    python -m bench.sampler_bench --record results/replay   # once: the table from a real run
    python -m bench.sampler_bench --seeds 5 --trials 40       # -> bench/results/sampler_bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna

if __package__ in (None, ""):  # `python bench/sampler_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.arch import Arch
from nas.atomic import atomic_write
from nas.cli import Parser
from nas.errors import run_cli
from nas.mixers import mixer_names
from nas.space import SearchSpace, load_space

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TABLE = RESULTS / "sampler_replay.json"
SAMPLERS = ("random", "nsga2", "tpe", "gp")
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)


# ---- the replay table ---------------------------------------------------------------------------
def record(run_dir: Path, out: Path) -> dict[str, Any]:
    """Every completed trial of a real search run (its study.db and config.yaml) as a JSON table."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    study = optuna.load_study(study_name=config.get("study_name", "search"),
                              storage=f"sqlite:///{(run_dir / 'study.db').resolve()}")
    rows = [{"number": t.number, "arch": t.user_attrs["arch"], "latency_ms": t.user_attrs["latency_ms"],
             "accuracy": t.values[0] if t.user_attrs.get("trained") else None,
             "epochs": t.user_attrs.get("epochs"), "seconds": t.user_attrs.get("seconds")}
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    keys = ("budget_ms", "space_file", "data", "limit", "epochs", "backend", "precision", "threads", "sampler",
            "seed", "proxy_resolution", "target_resolution", "machine", "latency_settings")
    run = {k: config.get(k) for k in keys}
    space_file = Path(run["space_file"] or "search_spaces/default.yaml").resolve()
    if space_file.is_relative_to(REPO):  # portable: the table is committed and read on other checkouts
        run["space_file"] = str(space_file.relative_to(REPO))
    table = {"run": run, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(table, indent=1))
    return table


# ---- the replay objective -----------------------------------------------------------------------
def features(arch: Arch, stages: int) -> np.ndarray:
    """Cost-shaped features of an architecture: per stage and mixer depth, depth*w, depth*w^2 (w in 64s)."""
    out: list[float] = []
    for i in range(stages):
        stage = arch.stages[i] if i < len(arch.stages) else None
        for mixer in mixer_names():
            on = float(stage is not None and stage.mixer == mixer)
            d = float(stage.depth) if stage else 0.0
            w = stage.width / 64 if stage else 0.0
            out += [on, on * d, on * d * w, on * d * w * w]
        for kind in ("none", "conv", "mbconv"):
            out.append(float(stage is not None and stage.downsample == kind))
        out.append(stage.expand * (stage.width / 64) ** 2 * stage.depth if stage else 0.0)
    out += [float(arch.stem_kind == k) for k in ("conv2", "dsconv", "patch")]
    out += [arch.stem_width / 64, float(arch.head_kind == "evit"), float(arch.head_kind == "cas"),
            sum(arch.head_widths) / 1024]
    return np.array(out)


class Ridge:
    def __init__(self, x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> None:
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-9
        z = np.c_[np.ones(len(x)), (x - self.mean) / self.scale]
        penalty = alpha * np.eye(z.shape[1])
        penalty[0, 0] = 0.0
        self.coef = np.linalg.solve(z.T @ z + penalty, z.T @ y)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.c_[np.ones(len(x)), (x - self.mean) / self.scale] @ self.coef


def cv_r2(x: np.ndarray, y: np.ndarray, alpha: float, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold R^2 of the ridge fit: how well the replay predicts trials it was not fitted on."""
    order = np.random.default_rng(seed).permutation(len(x))
    predicted = np.empty(len(x))
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        predicted[fold] = Ridge(x[train], y[train], alpha)(x[fold])
    return float(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


class Replay:
    """The cheap objective: latency and accuracy predicted from the replay table."""

    def __init__(self, table: dict[str, Any], space: SearchSpace) -> None:
        self.space, self.stages = space, len(space.stages)
        rows = table["rows"]
        archs = [Arch.from_dict(r["arch"]) for r in rows]
        x = np.array([features(a, self.stages) for a in archs])
        log_ms = np.log([r["latency_ms"] for r in rows])
        trained = np.array([r["accuracy"] is not None for r in rows])
        acc = np.array([r["accuracy"] or 0.0 for r in rows])
        # The ridge penalty of each model is the one with the best out-of-fold R^2.
        lat_alpha = max(ALPHAS, key=lambda a: cv_r2(x, log_ms, a))
        acc_alpha = max(ALPHAS, key=lambda a: cv_r2(x[trained], acc[trained], a))
        self.latency = Ridge(x, log_ms, lat_alpha)
        self.accuracy = Ridge(x[trained], acc[trained], acc_alpha)
        self.fit = {"rows": len(rows), "trained": int(trained.sum()),
                    "cv_r2_log_latency": cv_r2(x, log_ms, lat_alpha), "alpha_latency": lat_alpha,
                    "cv_r2_accuracy": cv_r2(x[trained], acc[trained], acc_alpha), "alpha_accuracy": acc_alpha}
        self.acc_range = (float(acc[trained].min()), float(acc[trained].max()))

    def predict(self, arch: Arch) -> tuple[float, float]:
        f = features(arch, self.stages)[None]
        acc = float(np.clip(self.accuracy(f)[0], 0.0, 1.0))
        return acc, float(np.exp(self.latency(f)[0]))


def hypervolume(points: list[tuple[float, float]], budget_ms: float) -> float:
    """Area dominated by the feasible (accuracy, latency) points, reference (0, budget)."""
    feasible = sorted((lat, acc) for acc, lat in points if lat <= budget_ms and acc > 0)
    area, best = 0.0, 0.0
    for i, (lat, acc) in enumerate(feasible):  # sweep by latency; each step adds its accuracy gain
        best = max(best, acc)
        right = feasible[i + 1][0] if i + 1 < len(feasible) else budget_ms
        area += best * (right - lat)
    return area


def make_sampler(name: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    from nas.search import make_sampler as search_sampler

    return search_sampler(name, seed, arch_key=lambda p: space.decode(p, 10).hash)  # as the search does


def one_run(replay: Replay, sampler: str, seed: int, trials: int, budget_ms: float,
            baselines: list[dict[str, Any]]) -> list[float]:
    """Hypervolume after each trial of one seeded study."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(sampler, seed, replay.space))
    for params in baselines:
        study.enqueue_trial(params)
    points: list[tuple[float, float]] = []
    curve: list[float] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        arch = replay.space.sample(trial, num_classes=10)
        acc, ms = replay.predict(arch)
        trial.set_constraint("latency", ms - budget_ms)
        acc = acc if ms <= budget_ms else 0.0  # over budget: never trained, as in the search
        points.append((acc, ms))
        curve.append(hypervolume(points, budget_ms))
        return acc, ms

    study.optimize(objective, n_trials=trials)
    return curve


def summarise(curves: list[list[float]]) -> dict[str, list[float]]:
    data = np.array(curves)
    q1, median, q3 = np.percentile(data, [25, 50, 75], axis=0)
    return {"median": median.tolist(), "q1": q1.tolist(), "q3": q3.tolist()}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.sampler_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", type=Path, default=None, help="write the replay table from this search run, first")
    p.add_argument("--table", type=Path, default=TABLE)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--out", type=Path, default=RESULTS / "sampler_bench.json")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    table = record(args.record, args.table) if args.record else json.loads(args.table.read_text())
    space_file = table["run"].get("space_file")
    space = load_space(str(REPO / space_file) if space_file and not Path(space_file).is_absolute() else space_file)
    budget = float(table["run"]["budget_ms"])
    replay = Replay(table, space)
    print(f"replay: {replay.fit}", file=sys.stderr)
    from nas.baselines import FAMILIES, scale_to_budget

    baselines = [space.encode(scale_to_budget(f, 10, budget, lambda a: replay.predict(a)[1])[0])[0] for f in FAMILIES]
    results: dict[str, Any] = {}
    for name in args.samplers.split(","):
        started = time.perf_counter()
        curves = [one_run(replay, name, seed, args.trials, budget, baselines) for seed in range(args.seeds)]
        results[name] = {**summarise(curves), "per_seed": curves,
                         "seconds_per_run": (time.perf_counter() - started) / args.seeds}
        at = [t for t in (10, 20, 30, 40, 60) if t <= args.trials]
        print(f"{name:7s} " + "  ".join(f"@{t}: {results[name]['median'][t - 1]:.3f} "
                                        f"[{results[name]['q1'][t - 1]:.3f}, {results[name]['q3'][t - 1]:.3f}]"
                                        for t in at) + f"  ({results[name]['seconds_per_run']:.1f} s/run)")
    record_out = {"table": str(args.table), "run": table["run"], "replay_fit": replay.fit, "budget_ms": budget,
                  "reference_point": {"accuracy": 0.0, "latency_ms": budget}, "seeds": args.seeds,
                  "trials": args.trials, "baselines_enqueued": len(baselines), "samplers": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(record_out, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
