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
from optuna.trial import TrialState

from nas.cli import Parser, positive_float, positive_int
from nas.errors import UserError
from nas.failures import failure_share_error
from nas.identity import RunIdentity, check_identity, read_identity
from nas.runs import RESULTS_DIR, atomic_write, check_study_file
from nas.search.fitting import anchor_to_fit, apply_fit, enqueue_fit_samples, fitted_space
from nas.search.loop import enqueue_baselines, optimize
from nas.search.roles import ROLES, StudyLatency, join_study, serve
from nas.search.storage import (
    SAMPLERS,
    check_study_identity,
    fail_orphaned_trials,
    make_sampler,
    storage_for,
)

EXIT_FAILED = 1  # trials failed: five in a row (the search stopped), or more than a quarter of them


def build_parser() -> Parser:
    from nas.latency import BACKENDS, DEFAULT_BACKEND, DEFAULT_PRECISION, PRECISIONS

    p = Parser(prog="python -m nas.search", description=__doc__)
    p.add_argument("--budget-ms", type=positive_float, default=5.0, help="latency budget in ms (default 5)")
    p.add_argument("--trials", type=positive_int, default=40, help="completed trials to reach (default 40)")
    p.add_argument("--timeout", type=positive_float, default=660.0,
                   help="stop starting new trials this many seconds after the command started, baseline "
                        "scaling included (default 660: with the last trial and the report, about 12 min)")
    p.add_argument("--space", default=None, help="search space YAML (default search_spaces/default.yaml)")
    p.add_argument("--data", default=None, help="mnist (default, bundled), digits, or a CIFAR-10/ImageFolder dir")
    p.add_argument("--limit", type=positive_int, default=None, help="use at most this many images")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help="latency runtime")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                   help=f"inference precision candidates are timed at (default {DEFAULT_PRECISION}, pinned in the "
                        "runtime; int8 quantizes each candidate with NNCF before timing)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads for timing and training")
    p.add_argument("--epochs", type=positive_int, default=2, help="proxy training epochs (default 2)")
    p.add_argument("--min-epochs", type=positive_int, default=1,
                   help="first successive-halving rung: weak trials stop after this many epochs (default 1; "
                        "--min-epochs equal to --epochs trains every trial fully)")
    p.add_argument("--eta", type=positive_int, default=3,
                   help="successive halving: rungs at min-epochs * eta^k, about 1/eta of a rung goes on (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--sampler", choices=SAMPLERS, default="gp",
                   help="Optuna sampler (default gp: the best feasible hypervolume in bench/sampler_bench.py)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default sqlite:///<run>/study.db); e.g. a journal file for workers")
    p.add_argument("--study-name", default="search")
    p.add_argument("--run", default=None, help="run directory or name under results/ (default from settings)")
    p.add_argument("--results", default=None, help=f"results root (default {RESULTS_DIR})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baselines", action="store_true", help="do not enqueue the pure-family baselines")
    p.add_argument("--no-fit", action="store_true",
                   help="search the space's widths as written (default: fit them to this machine's budget first)")
    p.add_argument("--quick-latency", action="store_true", help="short timing passes (smoke tests only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--predictor", default="auto",
                   help="latency predictor that rejects candidates predicted far over budget before building them: "
                        "auto (the calibration of `python -m nas.latency --calibrate` for this machine, runtime and "
                        "threads, if any; default), off, or a predictor file")
    p.add_argument("--role", choices=ROLES, default="both",
                   help="both (default): time and train; train: train only, on any machine, latencies come from "
                        "the study's measuring worker; measure: only time, for training-only workers, on the "
                        "run's pinned device")
    p.add_argument("--latency-wait", type=positive_float, default=600.0,
                   help="--role train: seconds to wait for a measuring worker's latency before giving up (default 600)")
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
            latency_settings=asdict(latency), machine=machine_id(), fit=not args.no_fit)
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


def search_predictor(choice: str, backend: str, threads: int, resolution: int, precision: str,
                     quiet: bool) -> Any:
    """The latency predictor the objective rejects with, or None. `auto` uses the calibration for these
    settings when there is a valid one (else says why not, one line); a file given explicitly must be
    valid (PredictorError, exit 2)."""
    from nas.latency import PredictorError, load_predictor

    if choice == "off":
        return None
    path = None if choice == "auto" else Path(choice)
    try:
        predictor = load_predictor(path, backend=backend, threads=threads, resolution=resolution,
                                   precision=precision)
    except PredictorError as exc:
        if path is not None:
            raise
        if not quiet:
            print(f"predictor not used: {exc}", file=sys.stderr)
        return None
    if not quiet:
        print(f"predictor: candidates predicted over the budget by more than {100 * predictor.margin:.0f}% are "
              "rejected before building", file=sys.stderr)
    return predictor


def main(argv: list[str] | None = None) -> int:
    from nas import faults
    from nas.data import load_dataset
    from nas.latency import LatencyCache, MeasureSettings, check_backend, check_precision, default_threads
    from nas.objective import Objective, TrialSettings
    from nas.report import is_feasible, write_report
    from nas.space import DEFAULT_SPACE, load_space

    started = time.monotonic()
    faults.install()  # chaos-test hooks in the machine lock; inert unless VITNAS_FAULTS / VITNAS_TRACE are set
    args = build_parser().parse_args(argv)
    check_backend(args.backend)
    if args.role != "train":  # a training-only worker never runs the latency precision
        check_precision(args.precision, args.backend)
    space_file = Path(args.space) if args.space else DEFAULT_SPACE
    space = load_space(space_file)
    threads = args.threads or default_threads()
    # A training-only worker's machine is not the latency device: its calibration would judge the wrong one.
    predictor = None if args.role == "train" else search_predictor(
        args.predictor, args.backend, threads, space.resolution.target, args.precision, args.quiet)
    splits = load_dataset(args.data, space.resolution.proxy, seed=args.seed, limit=args.limit)
    run_dir = run_directory(args, space.name)
    identity = run_identity(args, space_file, space, threads, splits.num_classes)
    config = resolved_config(identity, args)
    check_resume(run_dir, config)
    from nas.final import check_split_manifest, write_split_manifest

    check_split_manifest(run_dir, splits, args.data)  # a resumed run trains on the images it began with
    # Open the cache and the storage before writing anything: a refused invocation leaves a run untouched.
    cache = LatencyCache(run_dir / "latency_cache.sqlite")  # checks an existing file; creates none yet
    storage_url = args.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: one line each from after_trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat
    if not args.storage:
        check_study_file(run_dir)
    try:
        storage = storage_for(storage_url) if args.storage else None
    except UserError:
        raise
    except Exception as exc:  # a damaged journal file: JournalStorage replays it when opened
        raise UserError(f"--storage {storage_url!r}: cannot read the study ({type(exc).__name__}); restore the "
                        "file or pass a new one") from None
    run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=args.study_name, storage=storage or storage_for(storage_url),
                                directions=["maximize", "minimize"], load_if_exists=True,
                                # the objective's space: the fitted one, set before the first trial
                                sampler=make_sampler(args.sampler, args.seed,
                                                     arch_key=lambda p: objective.space.decode(
                                                         p, splits.num_classes).hash))
    device = join_study(study, args.role, args.backend, threads, args.precision,
                        journal=storage_url.startswith("journal:"))
    check_study_identity(study, identity)
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_split_manifest(run_dir, splits)  # later commands (nas.train, compress) check they reload these images
    atomic_write(run_dir / "environment.json",
                 json.dumps(environment(threads, args.backend, args.precision), indent=2))
    settings = TrialSettings(budget_ms=args.budget_ms, target_resolution=space.resolution.target,
                             backend=args.backend, precision=args.precision, threads=threads, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             checkpoints=run_dir / "checkpoints",
                             latency_settings=MeasureSettings.quick() if args.quick_latency else None,
                             trials=args.trials, min_epochs=identity.min_epochs, eta=identity.eta)
    latency_source = StudyLatency(study, args.role, device, args.latency_wait, args.quiet)
    objective = Objective(space, splits, settings, cache, latency_source, predictor=predictor)
    orphans = fail_orphaned_trials(study)
    if orphans and not args.quiet:
        print(f"resume: {len(orphans)} trial(s) left running by a dead worker failed and queued again",
              file=sys.stderr)
    if args.role == "measure":
        served = serve(study, objective, latency_source, args.trials,
                       seconds_left=args.timeout - (time.monotonic() - started), quiet=args.quiet)
        print(f"measured {served} latency request(s) for study {args.study_name!r}")
        return 0
    fit = None if args.no_fit else fitted_space(study, objective, args.budget_ms, args.seed, args.quiet)
    objective.space = apply_fit(space, fit)
    if fit is not None:
        atomic_write(run_dir / "space_fitted.yaml", yaml.safe_dump(objective.space.model_dump(mode="json"),
                                                                   sort_keys=False))
        if not args.quiet:
            print(fit.line(), file=sys.stderr)
        if objective.predictor is not None:
            objective.predictor = anchor_to_fit(objective.predictor, fit, objective.space, splits.num_classes)
            anchor = objective.predictor.error.get("anchor")
            if anchor and not args.quiet:
                print(f"predictor anchored to the fit's {anchor['archs']} timings: predictions x{anchor['factor']:.3f}",
                      file=sys.stderr)
    if not args.no_baselines:
        try:
            enqueue_baselines(study, objective, args.budget_ms, args.quiet)
        except KeyboardInterrupt:  # what was scaled is recorded in the study: a resume goes on from there
            print("interrupted: run the same command again to resume", file=sys.stderr)
            return 130
    if fit is not None:
        enqueue_fit_samples(study, fit)

    outcome = optimize(study, objective, args.trials, seconds_left=args.timeout - (time.monotonic() - started),
                       quiet=args.quiet)
    outcome = outcome if latency_source.gave_up is None else latency_source.gave_up
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
    if (failed := failure_share_error(trials)) is not None:
        print(f"error: {failed}", file=sys.stderr)
        return EXIT_FAILED
    if done and not any(is_feasible(t) for t in done):
        # Not an error: the search ran; its answer is that nothing in the space meets the budget.
        fastest = min(t.values[1] for t in done)
        print(f"no feasible architecture: all {len(done)} completed trials exceed the {args.budget_ms:g} ms "
              f"budget (fastest {fastest:.3g} ms); raise --budget-ms or use a smaller space", file=sys.stderr)
    return 0
