"""The search command, `python -m nas.search`, in modules with one job each:

cli       the command line, the run directory and its identity (config.yaml, environment.json), main()
storage   the Optuna storage and what workers sharing it check and clean up (machine, identity, orphans)
loop      the trial loop: baselines enqueued once, trials until --trials complete, time is up, or they fail
roles     --role both|train|measure: the pinned latency device, and the latency queue in the study
claims    study-level claims that survive kills (a baseline is enqueued once across workers and restarts)
_optuna   the one adapter over Optuna's private API (failing a dead worker's trial)

One trial is nas.objective; worker claims and liveness are nas.workers; result files are nas.report.
"""

from nas.search.cli import build_parser, check_resume, main, run_directory, run_identity
from nas.search.loop import enqueue_baselines, optimize
from nas.search.storage import check_machine, check_study_identity, fail_orphaned_trials, make_sampler, storage_for

__all__ = [
    "build_parser",
    "check_machine",
    "check_resume",
    "check_study_identity",
    "enqueue_baselines",
    "fail_orphaned_trials",
    "main",
    "make_sampler",
    "optimize",
    "run_directory",
    "run_identity",
    "storage_for",
]
