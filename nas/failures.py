"""Failed trials grouped by reason: the summary's section and the search's exit code.

A failed trial that was queued again (its worker died, or Ctrl-C interrupted it) failed for a reason
outside the trial: it is listed, but does not count towards the share of failed trials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

FAIL_SHARE = 0.25  # more than this share of the finished trials failed: the search exits 1
INTERRUPTED = "KeyboardInterrupt: interrupted (Ctrl-C)"


@dataclass(frozen=True)
class FailureGroup:
    reason: str  # the trials' reason; numbers (pids, epochs, values) shown as # when they differ
    numbers: tuple[int, ...]
    requeued: tuple[int, ...]  # of `numbers`, those queued again


def fail_reason(trial: FrozenTrial) -> str:
    """Why a trial failed: recorded by the objective or the resume check; else its worker stopped beating."""
    reason = (trial.user_attrs.get("fail_reason") or trial.system_attrs.get("fail_reason")
              or "worker lost (heartbeat stale)")
    return INTERRUPTED if reason.strip() == "KeyboardInterrupt:" else reason


def requeued(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that a later trial retries."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def group_failures(trials: list[FrozenTrial]) -> list[FailureGroup]:
    """The failed trials by reason (numbers aside), most frequent first."""
    again = requeued(trials)
    groups: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.FAIL:
            groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", fail_reason(trial).strip()), []).append(trial)
    out = []
    for key, members in groups.items():
        reasons = {fail_reason(t).strip() for t in members}
        out.append(FailureGroup(reasons.pop() if len(reasons) == 1 else key, tuple(t.number for t in members),
                                tuple(t.number for t in members if t.number in again)))
    return sorted(out, key=lambda g: (-len(g.numbers), g.numbers[0]))


def failure_share_error(trials: list[FrozenTrial]) -> str | None:
    """The one-line error when more than FAIL_SHARE of the finished trials failed (not counting those
    queued again), with the most common reason; None otherwise."""
    again = requeued(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in again]
    finished = len(failed) + sum(t.state == TrialState.COMPLETE for t in trials)
    if not failed or len(failed) <= FAIL_SHARE * finished:
        return None
    top = group_failures(failed)[0]
    return (f"{len(failed)} of {finished} trials failed (more than {FAIL_SHARE:.0%}); most common reason "
            f"({len(top.numbers)}x, trial {', '.join(map(str, top.numbers))}): {top.reason}")


def failures_md(trials: list[FrozenTrial]) -> list[str]:
    """summary.md's section on failed trials (none: no section)."""
    groups = group_failures(trials)
    if not groups:
        return []
    total, again = sum(len(g.numbers) for g in groups), sum(len(g.requeued) for g in groups)
    lines = ["", "## Failed trials", "",
             f"{total} failed trial(s), {again} of them queued again (their worker died or was interrupted; "
             "marked *).", "", "| count | trials | reason |", "|---:|---|---|"]
    for g in groups:
        numbers = ", ".join(f"{n}*" if n in g.requeued else str(n) for n in g.numbers)
        reason = g.reason.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {len(g.numbers)} | {numbers} | {reason} |")
    return lines
