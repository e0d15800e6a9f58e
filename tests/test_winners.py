"""Winner folders are keyed by trial number and arch hash: a re-report re-ranks without renaming, a
winner that leaves the front keeps its folder while compress/ holds outputs made from it, and the
compression commands find a winner by its trial number."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from tests.conftest import TinyRun, copy_run


def report(run: Path) -> None:
    from nas.errors import run_cli
    from nas.report import main

    assert run_cli(main, ["--run", str(run)]) == 0


def study_of(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="search", storage=f"sqlite:///{run / 'study.db'}")


def test_folders_are_trial_and_hash_and_survive_a_re_report(tiny_run: TinyRun, tmp_path: Path) -> None:
    from nas.runs import get_winner, list_winners

    run = copy_run(tiny_run, tmp_path).path
    front = json.loads((run / "front.json").read_text())
    names = sorted(p.name for p in (run / "winners").iterdir())
    assert names == sorted(f"{e['trial']}-{e['arch_hash']}" for e in front)
    report(run)
    assert sorted(p.name for p in (run / "winners").iterdir()) == names
    winners = list_winners(run)
    assert [w.rank for w in winners] == list(range(1, len(front) + 1))  # best first
    for entry in front:
        winner = get_winner(run, entry["trial"])
        assert winner.directory.name == f"{entry['trial']}-{entry['arch_hash']}"
        assert winner.rank == entry["rank"] and winner.metrics["trial"] == entry["trial"]
    assert get_winner(run, None).rank == 1


def test_a_winner_that_leaves_the_front_keeps_its_compress_outputs(tiny_run: TinyRun, tmp_path: Path) -> None:
    from compress._target import load_target
    from nas.errors import UserError
    from nas.runs import get_winner, list_winners

    run = copy_run(tiny_run, tmp_path).path
    before = list_winners(run)
    used, dropped = before[0], before[1:]
    (run / "compress" / used.directory.name / "pruned").mkdir(parents=True)  # compress.prune wrote here
    # A new trial of the best winner's architecture that dominates every trial: the front is it alone.
    study = study_of(run)
    best = study.trials[used.trial]
    number = len(study.trials)
    checkpoint = f"{number}-{used.arch.hash}.pt"
    shutil.copy(run / "checkpoints" / best.user_attrs["checkpoint"], run / "checkpoints" / checkpoint)
    study.add_trial(optuna.trial.create_trial(
        values=[1.0, best.values[1] / 2], user_attrs={**best.user_attrs, "checkpoint": checkpoint},
        system_attrs={"constraints": [-1.0]}))
    report(run)

    after = {w.directory.name: w for w in list_winners(run)}
    assert set(after) == {f"{number}-{used.arch.hash}", used.directory.name}
    assert after[f"{number}-{used.arch.hash}"].rank == 1
    assert after[used.directory.name].rank is None  # left the front, kept for compress/
    assert all(not w.directory.exists() for w in dropped)  # nothing was made from these
    summary = (run / "summary.md").read_text()
    assert f"| left the front | {used.trial} |" in summary and f"| 1 | {number} |" in summary
    assert [e["trial"] for e in json.loads((run / "front.json").read_text())] == [number]
    # compress/ finds both: the best by default, the old one by its trial number, its outputs where they were.
    assert load_target(run, None).winner.trial == number
    old = load_target(run, used.trial)
    assert old.out_dir == run / "compress" / used.directory.name and old.pruned_dir.is_dir()
    with pytest.raises(UserError, match=f"--winner {dropped[0].trial}" if dropped else "--winner 999"):
        get_winner(run, dropped[0].trial if dropped else 999)


def test_rank_named_folders_of_older_runs_are_renamed_with_their_outputs(tiny_run: TinyRun, tmp_path: Path) -> None:
    from nas.runs import list_winners

    run = copy_run(tiny_run, tmp_path).path
    winner = list_winners(run)[0]
    legacy = run / "winners" / f"7-{winner.arch.hash}"  # rank 7 in an older report; metrics.json has the trial
    winner.directory.rename(legacy)
    (run / "compress" / legacy.name / "int8").mkdir(parents=True)
    report(run)
    assert not legacy.exists() and (run / "winners" / f"{winner.trial}-{winner.arch.hash}" / "weights.pt").is_file()
    assert (run / "compress" / f"{winner.trial}-{winner.arch.hash}" / "int8").is_dir()
