"""Kills during start-up, concurrent starts, Ctrl-C and failing trials (issue 13, item 4).

Real processes and real Optuna storages; faults come from `nas.faults` (VITNAS_FAULTS: `kill:` is a
SIGKILL, `int:` a SIGINT, i.e. Ctrl-C, at a named point). Baseline runs use a budget no model meets:
each family's ladder is one measurement and nothing trains, so a search takes seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from nas.baselines import FAMILIES
from nas.failures import failure_share_error, failures_md, group_failures
from nas.search.claims import release, try_claim
from nas.search.loop import SCALED_ATTR
from tests.test_reliability import (  # noqa: F401 (postgres_url is a fixture)
    FAST,
    TINY_SPACE,
    assert_none_duplicated,
    env_with,
    postgres_url,
    search,
    study_of,
)

WITH_BASELINES = [a for a in FAST if a not in ("--no-baselines", "--quiet")]  # not quiet: baseline lines
NO_MODEL_FITS = ("--budget-ms", "0.001")


def baseline_search(results: Path, run: str, *args: str, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nas.search", "--results", str(results), "--run", run, *WITH_BASELINES,
           *NO_MODEL_FITS, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env or env_with())


def baselines_of(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> dict[str, list[FrozenTrial]]:
    found: dict[str, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=states):
        if trial.user_attrs.get("baseline"):
            found.setdefault(trial.user_attrs["baseline"], []).append(trial)
    return found


def claim_names(storage: str | optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage) if ":claim:" in s.study_name]


def assert_each_baseline_once(study: optuna.Study) -> None:
    """One trial per family in any state (a retry of a dead worker's trial aside), one per family among
    the completed, each the study's recorded scaling, all different architectures."""
    for family, trials in baselines_of(study).items():
        firsts = [t for t in trials if "failed_trial" not in t.system_attrs]
        assert len(firsts) == 1, f"{family} enqueued {len(firsts)} times: {[t.number for t in firsts]}"
    complete = baselines_of(study, (TrialState.COMPLETE,))
    assert sorted(complete) == sorted(FAMILIES) and all(len(t) == 1 for t in complete.values()), \
        {f: [t.number for t in ts] for f, ts in complete.items()}
    for family, (trial,) in complete.items():
        assert trial.user_attrs["baseline_arch"] == study.user_attrs[SCALED_ATTR + family]["arch"]
    hashes = [t.user_attrs["arch_hash"] for (t,) in complete.values()]
    assert len(set(hashes)) == len(hashes)


# --- claims: one winner among racing processes, on every storage ------------------------------------

RACER = textwrap.dedent("""
    import sys
    import optuna
    from nas.search.claims import try_claim
    from nas.search.storage import storage_for
    study = optuna.load_study(study_name="search", storage=storage_for(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()  # all racers go at once
    print(int(try_claim(study, "baseline-casvit", {})), flush=True)
    sys.stdin.readline()  # holders stay alive until every racer has tried
""")


def race_for_a_claim(url: str, n: int = 4) -> None:
    from nas.search.storage import storage_for

    study = optuna.create_study(study_name="search", storage=storage_for(url), directions=["maximize", "minimize"])
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.communicate()[1][-2000:]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    won = [int(proc.stdout.readline() or -1) for proc in procs if proc.stdout is not None]
    outs = [p.communicate("exit\n", timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert sorted(won) == [0] * (n - 1) + [1], "exactly one racer holds the claim"
    assert claim_names(storage_for(url)) == ["search:claim:baseline-casvit:0"]
    # Its holder has exited: the claim is stale, and the next generation is taken over (here, once).
    assert try_claim(study, "baseline-casvit", {}) and not try_claim(study, "baseline-casvit", {})
    release(study, "baseline-casvit")
    assert claim_names(storage_for(url)) == []


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_racing_processes_win_one_claim(tmp_path: Path, kind: str) -> None:
    race_for_a_claim(f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'j.log'}")


@pytest.mark.slow
def test_racing_processes_win_one_claim_postgres(postgres_url: str) -> None:  # noqa: F811
    race_for_a_claim(postgres_url)


# --- baselines exactly once -------------------------------------------------------------------------

def ladder_steps() -> int:
    """Measurements a family's ladder takes when no rung meets the budget (nas.baselines decides)."""
    from nas.baselines import scale_to_budget

    calls: list[str] = []
    scale_to_budget("casvit", 10, 0.001, lambda arch: calls.append(arch.name) or float("inf"))
    return len(calls)


def kill_rounds(steps: int) -> list[tuple[str, str]]:
    """(VITNAS_FAULTS, where the search dies); families in order casvit (0), efficientvit (1), cagevit (2),
    `steps` ladder measurements each (the `scale` point counts them per process)."""
    return [
        (f"kill:scale:{2 * steps - 1}", "casvit scaled and enqueued; efficientvit's last ladder step"),
        ("kill:measure", "inside efficientvit's first uncached ladder measurement (machine lock held)"),
        ("kill:claimed:1", "efficientvit scaled and recorded, its claim held, not yet enqueued"),
        (f"kill:enqueued:2,kill:scale:{steps}", "cagevit enqueued, its claim not released (it would die at its "
                                                "first ladder step had efficientvit been scaled again)"),
        ("kill:done:0", "trial 0, the casvit baseline, finished and not yet recorded complete"),
    ]


@pytest.mark.slow
def test_kills_during_baseline_scaling_and_enqueueing_then_resume(tmp_path: Path) -> None:
    run_dir, trials = tmp_path / "kills", 4
    for faults, where in kill_rounds(ladder_steps()):
        out = baseline_search(tmp_path, "kills", "--trials", str(trials), env=env_with(VITNAS_FAULTS=faults))
        assert out.returncode == -signal.SIGKILL, (where, out.returncode, out.stderr[-3000:])
        study = study_of(run_dir)
        for family, found in baselines_of(study).items():
            assert len([t for t in found if "failed_trial" not in t.system_attrs]) == 1, (where, family)
        if faults == "kill:claimed:1":  # the kill landed with the claim held: the next start takes it over
            assert claim_names(f"sqlite:///{run_dir / 'study.db'}") == ["search:claim:baseline-efficientvit:0"]
            assert "efficientvit" not in baselines_of(study)
        if faults.startswith("kill:enqueued"):
            assert "(recorded)" in out.stderr.split("baseline EfficientViT-style", 1)[1].splitlines()[0]
            assert sorted(baselines_of(study)) == sorted(FAMILIES)
    out = baseline_search(tmp_path, "kills", "--trials", str(trials))
    assert out.returncode == 0, out.stderr[-3000:]
    study = study_of(run_dir)
    assert_each_baseline_once(study)
    assert_none_duplicated(study)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == trials
    assert claim_names(f"sqlite:///{run_dir / 'study.db'}") == []
    assert study.trials[0].state == TrialState.FAIL and "died during the trial" in study.trials[0].user_attrs[
        "fail_reason"], "trial 0 died with its worker and was retried"


def test_two_workers_started_together_enqueue_each_baseline_once(tmp_path: Path) -> None:
    storage, trials = f"sqlite:///{tmp_path / 'shared.db'}", 4
    cmd = [sys.executable, "-m", "nas.search", "--results", str(tmp_path), "--run", "shared", *WITH_BASELINES,
           "--quiet", *NO_MODEL_FITS, "--trials", str(trials), "--storage", storage]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with())
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    study = study_of(tmp_path, storage)
    assert_each_baseline_once(study)
    assert_none_duplicated(study)
    assert claim_names(storage) == []


# --- Ctrl-C -----------------------------------------------------------------------------------------

def test_ctrl_c_mid_trial_then_resume_retries_the_trial(tmp_path: Path) -> None:
    run_dir, trials = tmp_path / "ctrl-c", 2
    out = search(tmp_path, "ctrl-c", "--budget-ms", "1000", "--trials", str(trials),
                 env=env_with(VITNAS_FAULTS="int:train:1"))  # SIGINT inside trial 1's training epoch
    assert out.returncode == 130, out.stderr[-3000:]
    assert "interrupted: run the same command again to resume" in out.stderr
    study = study_of(run_dir)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING], states
    assert study.trials[1].user_attrs["fail_reason"].startswith("KeyboardInterrupt")
    assert study.trials[2].system_attrs["retry_history"] == [1] and study.trials[2].params == study.trials[1].params
    out = search(tmp_path, "ctrl-c", "--budget-ms", "1000", "--trials", str(trials))
    assert out.returncode == 0, out.stderr[-3000:]  # the interrupted trial is not counted as failed
    study = study_of(run_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert_none_duplicated(study)
    summary = (run_dir / "summary.md").read_text()
    assert "## Failed trials" in summary and "| 1 | 1* | KeyboardInterrupt: interrupted (Ctrl-C) |" in summary


# --- failed trials: grouped by reason, exit 1 above a quarter ----------------------------------------

def test_a_failing_mixer_exits_1_with_its_reason_and_the_summary_groups_it(tmp_path: Path) -> None:
    space = tmp_path / "two_mixers.yaml"
    space.write_text(TINY_SPACE.read_text().replace("mixer: [catm, litemla, glsra, mbconv]", "mixer: [catm, glsra]"))
    # Seed 1 proposes glsra in 3 of the first 6 architectures, never 5 in a row (a stop on its own).
    out = search(tmp_path, "glsra", "--budget-ms", "1000", "--trials", "3", "--space", str(space), "--seed", "1",
                 env=env_with(VITNAS_FAULTS="latency:glsra"))  # a bug in one mixer's code path
    assert out.returncode == 1, out.stderr[-3000:]
    study = study_of(tmp_path / "glsra")
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(failed) > (len(failed) + len(complete)) / 4 and len(complete) == 3
    assert all("glsra" in {s["mixer"] for s in t.user_attrs["arch"]["stages"]} for t in failed)
    assert not any("glsra" in {s["mixer"] for s in t.user_attrs["arch"]["stages"]} for t in complete)
    reason = "InjectedFault: injected latency fault (VITNAS_FAULTS)"
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {len(failed)} of {len(failed) + 3} trials failed (more than 25%); most common reason "
                      f"({len(failed)}x, trial {', '.join(str(t.number) for t in failed)}): {reason}"], errors
    summary = (tmp_path / "glsra" / "summary.md").read_text()
    assert f"| {len(failed)} | {', '.join(str(t.number) for t in failed)} | {reason} |" in summary


def fake(number: int, state: TrialState, reason: str | None = None, retries: list[int] | None = None) -> FrozenTrial:
    trial = optuna.trial.create_trial(state=state, values=[0.5, 1.0] if state == TrialState.COMPLETE else None,
                                      user_attrs={"fail_reason": reason} if reason else {},
                                      system_attrs={"retry_history": retries} if retries else {})
    trial.number = number
    return trial


def test_failure_share_counts_trials_not_queued_again_and_groups_by_reason() -> None:
    died = [fake(0, TrialState.FAIL, "worker 41 on h died during the trial"),
            fake(1, TrialState.FAIL, "worker 97 on h died during the trial"), fake(2, TrialState.COMPLETE, retries=[0]),
            fake(3, TrialState.COMPLETE, retries=[1]), fake(4, TrialState.COMPLETE)]
    assert failure_share_error(died) is None, "trials queued again failed for their worker, not themselves"
    (group,) = group_failures(died)
    assert group.reason == "worker # on h died during the trial" and group.numbers == group.requeued == (0, 1)
    diverged = [fake(5, TrialState.FAIL, "TrainingDiverged: loss nan"), fake(6, TrialState.FAIL, "OSError: disk")]
    quarter = [*died, fake(7, TrialState.COMPLETE), fake(8, TrialState.COMPLETE), fake(9, TrialState.COMPLETE),
               diverged[0]]
    assert failure_share_error(quarter) is None, "1 of 7 is not more than a quarter"
    error = failure_share_error([*quarter, diverged[1], fake(10, TrialState.FAIL, "TrainingDiverged: loss nan")])
    assert error == ("3 of 9 trials failed (more than 25%); most common reason (2x, trial 5, 10): "
                     "TrainingDiverged: loss nan")
    lines = failures_md([*died, *diverged])
    assert "| 2 | 0*, 1* | worker # on h died during the trial |" in lines and "| 1 | 6 | OSError: disk |" in lines
