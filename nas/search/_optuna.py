"""The one place that uses Optuna's private API (optuna is pinned in constraints.txt).

Failing a RUNNING trial that belongs to another, dead process needs the study's storage and the
trial's storage id (`study._storage`, `trial._trial_id`): Optuna has no public call for it.
Study-level claims (nas.search.claims) create and delete studies in the same storage, which a
`Study` holds only privately (`storage_of`).
`study.tell` can fail a trial by number, but cannot record why, and cannot tell this worker
whether it or a concurrent worker finished the trial first (both would then queue a retry).
On an Optuna upgrade that changes these internals, only this module needs to change.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> FrozenTrial | None:
    """Mark a RUNNING `trial` failed with user attr `fail_reason`; the failed trial as stored, or
    None when another worker failed or finished it first (so exactly one worker retries it)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(trial._trial_id)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study lives in (for the public study-level calls that take a storage)."""
    return study._storage
