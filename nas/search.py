"""python -m nas.search --budget-ms 5: multi-objective NAS (accuracy up, measured latency down).

The study lives in the run directory (SQLite by default) or any Optuna storage URL, so a killed
search resumes by running the same command again and several workers can join one study.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from nas.cli import Parser, positive_float, positive_int
from nas.errors import UserError, run_cli
from nas.identity import RunIdentity, check_identity, read_identity
from nas.runs import RESULTS_DIR, atomic_write

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
MAX_CONSECUTIVE_FAILURES = 5
EXIT_FAILED = 1  # the search stopped on repeated trial failures
# A trial whose worker died is failed and run again, at most twice (then it is likely the trial's fault).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY = RetryHeartbeatStaleTrialCallback(max_retry=2)
SAMPLERS = ("nsga2", "tpe", "gp", "random")


def build_parser() -> Parser:
    from nas.latency import BACKENDS, DEFAULT_BACKEND, DEFAULT_PRECISION, PRECISIONS

    p = Parser(prog="python -m nas.search", description=__doc__)
    p.add_argument("--budget-ms", type=positive_float, default=5.0, help="latency budget in ms (default 5)")
    p.add_argument("--trials", type=positive_int, default=30, help="completed trials to reach (default 30)")
    p.add_argument("--timeout", type=positive_float, default=1620.0,
                   help="stop starting new trials this many seconds after the command started, baseline "
                        "scaling included (default 1620: with the last trial and the report, under 30 min)")
    p.add_argument("--space", default=None, help="search space YAML (default search_spaces/default.yaml)")
    p.add_argument("--data", default=None, help="mnist (default, bundled), digits, or a CIFAR-10/ImageFolder dir")
    p.add_argument("--limit", type=positive_int, default=None, help="use at most this many images")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help="latency runtime")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                   help=f"inference precision candidates are timed at (default {DEFAULT_PRECISION}, pinned in the "
                        "runtime; int8 quantizes each candidate with NNCF before timing)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads for timing and training")
    p.add_argument("--epochs", type=positive_int, default=3, help="proxy training epochs (default 3)")
    p.add_argument("--min-epochs", type=positive_int, default=1,
                   help="first successive-halving rung: weak trials stop after this many epochs (default 1; "
                        "--min-epochs equal to --epochs trains every trial fully)")
    p.add_argument("--eta", type=positive_int, default=3,
                   help="successive halving: rungs at min-epochs * eta^k, about 1/eta of a rung goes on (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--sampler", choices=SAMPLERS, default="nsga2")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default sqlite:///<run>/study.db); e.g. a journal file for workers")
    p.add_argument("--study-name", default="search")
    p.add_argument("--run", default=None, help="run directory or name under results/ (default from settings)")
    p.add_argument("--results", default=None, help=f"results root (default {RESULTS_DIR})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baselines", action="store_true", help="do not enqueue the pure-family baselines")
    p.add_argument("--quick-latency", action="store_true", help="short timing passes (smoke tests only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_directory(args: Any, space_name: str) -> Path:
    results = Path(args.results) if args.results else RESULTS_DIR
    if args.run:
        path = Path(args.run)
        return path if path.is_absolute() or path.parent != Path(".") else results / args.run
    budget = f"{args.budget_ms:g}".replace(".", "p")
    return results / f"{space_name}-{budget}ms-{args.backend}"


def run_identity(args: Any, space_file: Path, space: Any, threads: int, num_classes: int) -> RunIdentity:
    """The run's identity from validated CLI settings (see nas.identity)."""
    from dataclasses import asdict

    from pydantic import ValidationError

    from nas.latency import MeasureSettings, machine_id

    if args.eta < 2:
        raise UserError(f"--eta: must be >= 2, got {args.eta}")
    latency = MeasureSettings.quick() if args.quick_latency else MeasureSettings()
    try:
        return RunIdentity(
            budget_ms=args.budget_ms, space_file=str(space_file), space=space.model_dump(mode="json"),
            proxy_resolution=space.resolution.proxy, target_resolution=space.resolution.target, data=args.data,
            limit=args.limit, num_classes=num_classes, seed=args.seed, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, min_epochs=min(args.min_epochs, args.epochs), eta=args.eta,
            sampler=args.sampler, backend=args.backend, precision=args.precision, threads=threads,
            latency_settings=asdict(latency), machine=machine_id())
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise UserError(f"run settings: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None


def resolved_config(identity: RunIdentity, args: Any) -> dict[str, Any]:
    """config.yaml: the identity, then what only says how much to do (not part of it)."""
    return {**identity.model_dump(mode="json"), "study_name": args.study_name, "trials": args.trials,
            "timeout_s": args.timeout}


def check_resume(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to resume `run_dir` with any identity key changed (one line, exit 2)."""
    path = run_dir / "config.yaml"
    check_identity(read_identity(path), config, str(path))


def check_study_identity(study: optuna.Study, identity: RunIdentity) -> None:
    """The same check against the study, for workers that share a storage but not a run directory."""
    current = identity.model_dump(mode="json")
    recorded = study.user_attrs.get("identity")
    if recorded is None:
        study.set_user_attr("identity", current)
        return
    # The machine is check_machine's (it names both machines); a space file's path may differ per worker.
    skip = {"machine", "space_file"}
    check_identity({k: v for k, v in recorded.items() if k not in skip}, current, f"study {study.study_name!r}")


def check_machine(study: optuna.Study) -> None:
    """One machine per study: a worker on a machine described differently (CPU, ISA, OpenVINO
    capabilities) would put latencies of another clock into the same front. The first worker
    records its description in the study, which every storage (SQLite, journal, PostgreSQL) shares."""
    from nas.latency import describe_machine, machine_line

    mine = describe_machine()
    recorded = study.user_attrs.get("machine")
    if recorded is None:
        study.set_user_attr("machine", mine)
    elif recorded.get("fingerprint") != mine["fingerprint"]:
        raise UserError(f"study {study.study_name!r}: its latencies come from {machine_line(recorded)}, this worker "
                        f"runs on {machine_line(mine)}; latencies of different machines cannot share one front")


def environment(threads: int, backend: str, precision: str) -> dict[str, Any]:
    import numpy
    import onnxruntime
    import openvino
    import torch

    from nas.latency import describe_machine, device_name, runtime_version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "openvino": openvino.__version__,
        "onnxruntime": onnxruntime.__version__,
        "optuna": optuna.__version__,
        "numpy": numpy.__version__,
        "device": device_name(backend),
        "runtime": runtime_version(backend),
        "precision": precision,
        "threads": threads,
        "machine": describe_machine(),
    }


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna 5 samplers (all but random) read the latency constraint each trial sets with `trial.set_constraint`."""
    if name == "tpe":  # constant_liar: parallel workers do not all propose the same point
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=12)


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Heartbeats let a resumed or parallel search fail trials whose worker died, then retry them."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        backend = JournalFileBackend(url.removeprefix("journal:"))
        return optuna.storages.JournalStorage(backend)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                              heartbeat_stale_trial_callback=RETRY,
                                              engine_kwargs={"connect_args": {"timeout": 60}}
                                              if url.startswith("sqlite") else None)
        except (IntegrityError, ProgrammingError) as exc:
            if attempt == 2:
                raise UserError(f"--storage {url!r}: cannot create the Optuna schema ({type(exc).__name__})") from None
            time.sleep(1.0)  # workers starting together race to create the schema: the other one won
        except Exception as exc:  # bad URL, missing driver, unreachable server
            raise UserError(f"--storage {url!r}: cannot open Optuna storage ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]})") from None
    raise AssertionError("unreachable")


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail (and retry) RUNNING trials whose worker is gone, now rather than after the heartbeat grace.

    Sound with several workers: a trial is failed only when its claimed worker process on this host
    no longer exists, or when no worker claimed it within CLAIM_SECONDS; a live worker's trial is
    never touched, and trials claimed on other hosts are left to the storage heartbeat.
    """
    from nas.objective import is_orphan

    storage, failed = study._storage, []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_orphan(trial):
            continue
        claim = trial.user_attrs.get("worker") or {}
        reason = (f"worker {claim['pid']} on {claim['host']} died during the trial"
                  if claim.get("trial") == trial.number
                  else "no worker claimed the trial (its worker died before starting it)")
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it (or it finished) first
    for trial_id in failed:
        RETRY(study, storage.get_trial(trial_id))
    return failed


def enqueue_baselines(study: optuna.Study, objective: Any, budget_ms: float, quiet: bool) -> None:
    from nas.baselines import FAMILIES, scale_to_budget

    if study.user_attrs.get("baselines_enqueued"):
        return
    for family in FAMILIES:
        arch, ms = scale_to_budget(family, objective.splits.num_classes, budget_ms,
                                   lambda a: objective.latency(a).ms)
        if not quiet:
            print(f"baseline {arch.name}: {ms:.2f} ms", file=sys.stderr)
        # A hand design need not lie in the space (the default space has no conv2 stem, no catm first
        # stage, no one-stage ViT). Its trial evaluates the true design (`baseline_arch`), while its
        # parameters are the nearest point of the space: the samplers learn the baseline's measured
        # accuracy and latency at that point, a warm start rather than an exact observation;
        # `baseline_exact` says which it is. With the parameters it is an ordinary member of the
        # population and of the intersection search space.
        params, exact = objective.space.encode(arch)
        study.enqueue_trial(params, user_attrs={"baseline": family, "baseline_arch": arch.to_dict(),
                                                "baseline_exact": exact}, skip_if_exists=False)
    study.set_user_attr("baselines_enqueued", True)


def main(argv: list[str] | None = None) -> int:
    from nas.data import load_dataset
    from nas.latency import LatencyCache, MeasureSettings, check_backend, check_precision, default_threads
    from nas.objective import Objective, TrialSettings
    from nas.report import is_feasible, write_report
    from nas.space import DEFAULT_SPACE, load_space

    started = time.monotonic()
    args = build_parser().parse_args(argv)
    check_backend(args.backend)
    check_precision(args.precision, args.backend)
    space_file = Path(args.space) if args.space else DEFAULT_SPACE
    space = load_space(space_file)
    threads = args.threads or default_threads()
    splits = load_dataset(args.data, space.resolution.proxy, seed=args.seed, limit=args.limit)
    run_dir = run_directory(args, space.name)
    identity = run_identity(args, space_file, space, threads, splits.num_classes)
    config = resolved_config(identity, args)
    check_resume(run_dir, config)
    # Open the storage before writing anything: a refused invocation leaves an existing run untouched.
    storage_url = args.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: one line each from after_trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat
    storage = make_storage(storage_url) if args.storage else None
    run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=args.study_name, storage=storage or make_storage(storage_url),
                                directions=["maximize", "minimize"], load_if_exists=True,
                                sampler=make_sampler(args.sampler, args.seed))
    check_machine(study)
    check_study_identity(study, identity)
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    from nas.final import write_split_manifest

    write_split_manifest(run_dir, splits)  # later commands (nas.train, compress) check they reload these images
    atomic_write(run_dir / "environment.json",
                 json.dumps(environment(threads, args.backend, args.precision), indent=2))
    settings = TrialSettings(budget_ms=args.budget_ms, target_resolution=space.resolution.target,
                             backend=args.backend, precision=args.precision, threads=threads, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             checkpoints=run_dir / "checkpoints",
                             latency_settings=MeasureSettings.quick() if args.quick_latency else None,
                             trials=args.trials, min_epochs=identity.min_epochs, eta=identity.eta)
    objective = Objective(space, splits, settings, LatencyCache(run_dir / "latency_cache.sqlite"))
    orphans = fail_orphaned_trials(study)
    if orphans and not args.quiet:
        print(f"resume: {len(orphans)} trial(s) left running by a dead worker failed and queued again",
              file=sys.stderr)
    if not args.no_baselines:
        enqueue_baselines(study, objective, args.budget_ms, args.quiet)

    outcome = optimize(study, objective, args, seconds_left=args.timeout - (time.monotonic() - started))
    write_report(run_dir, study, budget_ms=args.budget_ms, splits=splits)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    print(f"{len(done)} completed trials; results in {run_dir}")
    if outcome == "interrupted":
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    if outcome is not None:
        print(f"error: {outcome}", file=sys.stderr)
        return EXIT_FAILED
    if done and not any(is_feasible(t) for t in done):
        # Not an error: the search ran; its answer is that nothing in the space meets the budget.
        fastest = min(t.values[1] for t in done)
        print(f"no feasible architecture: all {len(done)} completed trials exceed the {args.budget_ms:g} ms "
              f"budget (fastest {fastest:.3g} ms); raise --budget-ms or use a smaller space", file=sys.stderr)
    return 0


def optimize(study: optuna.Study, objective: Any, args: Any, seconds_left: float) -> str | None:
    """Run trials until --trials complete (across all workers) or `seconds_left` run out.

    Returns None when done, "interrupted" on Ctrl-C, or why the search gave up.
    """
    from tqdm import tqdm

    from nas.objective import is_live

    complete = (TrialState.COMPLETE,)
    remaining = args.trials - len(study.get_trials(deepcopy=False, states=complete))
    if remaining <= 0:
        return None
    bar = tqdm(total=args.trials, initial=args.trials - remaining, disable=args.quiet, unit="trial",
               desc="search", file=sys.stderr)
    failures = [0]

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.PRUNED:  # surplus: other workers already cover --trials
            return
        failures[0] = failures[0] + 1 if trial.state == TrialState.FAIL else 0
        if trial.state == TrialState.FAIL:
            print(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', 'unknown')}", file=sys.stderr)
        if failures[0] >= MAX_CONSECUTIVE_FAILURES:
            study.stop()
        if trial.state == TrialState.COMPLETE:
            bar.update(1)
        fail_orphaned_trials(study)
        trials = study.get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE or is_live(t) for t in trials) >= args.trials:
            study.stop()  # the trials in flight in other workers complete the count
        bar.set_postfix_str(best_so_far(study))

    started = time.monotonic()
    try:
        study.optimize(objective, timeout=max(1.0, seconds_left), catch=(Exception,), gc_after_trial=True,
                       callbacks=[MaxTrialsCallback(args.trials, states=complete), after_trial])
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        bar.close()
    if not args.quiet:
        print(f"search loop: {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failures[0] >= MAX_CONSECUTIVE_FAILURES:
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        reason = failed[-1].user_attrs.get("fail_reason", "unknown") if failed else "unknown"
        return f"stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; last: {reason}"
    return None


def best_so_far(study: optuna.Study) -> str:
    front = study.best_trials  # Optuna's own front: feasible trials only, by the stored constraint
    if not front:
        return "no feasible trial yet"
    best = max(front, key=lambda t: t.values[0])
    return f"best {100 * best.values[0]:.1f}% @ {best.values[1]:.2f} ms"

if __name__ == "__main__":
    sys.exit(run_cli(main))
