"""Successive halving over epochs (nas.fidelity): rung schedule, non-dominated promotion, peers from a real study."""

from __future__ import annotations

import math

import optuna
import pytest

from nas.fidelity import MIN_PEERS, crowding_distances, front_ranks, judge, rungs
from nas.objective import rung_peers


def test_rung_schedule() -> None:
    assert rungs(3, 1, 3) == [1]
    assert rungs(9, 1, 3) == [1, 3]
    assert rungs(8, 1, 2) == [1, 2, 4]
    assert rungs(3, 3, 3) == [] and rungs(1, 1, 3) == []  # min_epochs >= epochs: no early stop at all


def test_front_ranks() -> None:
    # (accuracy, latency): the fast-weak and slow-strong ends are both non-dominated
    points = [(0.90, 1.0), (0.80, 2.0), (0.95, 3.0), (0.50, 0.5), (0.70, 3.0)]
    assert front_ranks(points) == [0, 1, 0, 0, 2]


# Scripted accuracy curves (per epoch) and latencies, arriving one after another at the epoch-1 rung.
CURVES = [
    ("a", [0.80, 0.90, 0.93], 3.0),
    ("b", [0.60, 0.75, 0.80], 3.5),
    ("c", [0.85, 0.92, 0.95], 2.5),
    ("d", [0.70, 0.80, 0.85], 4.0),
    ("strong", [0.88, 0.94, 0.96], 2.0),   # best and fastest: non-dominated
    ("weak-slow", [0.40, 0.55, 0.60], 4.5),  # dominated by all: stops after one epoch
    ("weak-fast", [0.45, 0.60, 0.65], 0.8),  # weak but the fastest: on the rung's front, goes on
    ("middling", [0.72, 0.82, 0.86], 3.2),  # dominated by a, c, strong: front 2, place 5 of 8 > 3: stops
]


def replay(curves: list[tuple[str, list[float], float]], eta: int = 3) -> dict[str, int]:
    """Epochs each scripted trial gets when they run one after another (peers: everything before)."""
    schedule, done, epochs = rungs(3, 1, eta), [], {}
    for name, curve, ms in curves:
        got = len(curve)
        for rung in schedule:
            peers = [(c[rung - 1], m) for c, m in done if len(c) >= rung]
            if not judge(rung, (curve[rung - 1], ms), peers, eta).promoted:
                got = rung
                break
        epochs[name] = got
        done.append((curve[:got], ms))
    return epochs


def test_rung_promotion_on_scripted_curves() -> None:
    epochs = replay(CURVES)
    assert [epochs[n] for n in ("a", "b", "c", "d")] == [3, 3, 3, 3]  # fewer than MIN_PEERS peers: no evidence
    assert epochs["strong"] == 3 and epochs["weak-fast"] == 3
    assert epochs["weak-slow"] == 1 and epochs["middling"] == 1


def test_a_wide_first_front_keeps_only_its_share_ends_first() -> None:
    # Every point non-dominated (faster = weaker): 7 records, eta 3 -> 3 go on: the two ends of the
    # front, then the most isolated of the middle ones.
    front = [(0.50, 0.5), (0.60, 1.0), (0.62, 1.1), (0.64, 1.2), (0.80, 3.0), (0.90, 4.0)]
    assert judge(1, (0.95, 5.0), front, eta=3).promoted  # the accurate end
    assert judge(1, (0.40, 0.3), front, eta=3).promoted  # the fast end
    crowded = judge(1, (0.61, 1.05), front, eta=3)  # between two close neighbours
    assert crowded.front_rank == 0 and not crowded.promoted and crowded.kept == 3


def test_crowding_distance_ends_are_infinite() -> None:
    points = [(0.5, 1.0), (0.7, 2.0), (0.9, 4.0), (0.6, 3.0)]
    ranks = front_ranks(points)
    crowd = crowding_distances(points, ranks)
    assert ranks == [0, 0, 0, 1]
    assert crowd[0] == crowd[2] == math.inf and 0 < crowd[1] < math.inf and crowd[3] == math.inf


def test_promotion_keeps_the_best_share_of_a_dominated_rung() -> None:
    peers = [(0.9, 1.0), (0.8, 1.5), (0.7, 2.0), (0.6, 2.5), (0.5, 3.0)]
    best_dominated = judge(1, (0.85, 1.6), peers, eta=3)  # dominated only by (0.9, 1.0): front 2
    assert best_dominated.front_rank == 1 and best_dominated.position == 2 and best_dominated.kept == 2
    assert best_dominated.promoted
    worst = judge(1, (0.4, 3.5), peers, eta=3)
    assert not worst.promoted and worst.position == 6 and "stopped" in worst.reason
    assert judge(1, (0.4, 3.5), peers, eta=6).kept == 1  # eta sets the share
    assert judge(1, (0.0, 99.0), peers[: MIN_PEERS - 1], eta=3).promoted  # too few peers


def test_rung_peers_come_from_the_study() -> None:
    """Peers at a rung: completed and live trials that reached that epoch; never itself or failed ones."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state: optuna.trial.TrialState, curve: list[float], ms: float) -> None:
        values = [curve[-1] if curve else 0.0, ms] if state == optuna.trial.TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, values=values, params={"x": 0.5}, distributions=dist,
                                                  user_attrs={"curve": curve, "latency_ms": ms}))

    add(optuna.trial.TrialState.COMPLETE, [0.5, 0.7, 0.8], 2.0)
    add(optuna.trial.TrialState.COMPLETE, [0.4], 1.0)  # stopped at epoch 1
    add(optuna.trial.TrialState.FAIL, [0.9, 0.95], 1.0)  # failed: not a peer
    add(optuna.trial.TrialState.COMPLETE, [], 9.0)  # over budget, never trained
    trial = study.ask()
    trial.set_user_attr("curve", [0.3])
    trial.set_user_attr("latency_ms", 1.5)
    assert sorted(rung_peers(trial, 1)) == [(0.4, 1.0), (0.5, 2.0)]
    assert rung_peers(trial, 2) == [(0.7, 2.0)]


@pytest.mark.parametrize("eta", [2, 3, 4])
def test_every_scripted_trial_gets_a_rung_or_all_epochs(eta: int) -> None:
    epochs = replay(CURVES, eta)
    assert set(epochs.values()) <= {1, 2, 3} and epochs["strong"] == 3
