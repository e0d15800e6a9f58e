"""Multi-fidelity proxies: successive halving over training epochs, multi-objective (MOASHA-like).

Optuna cannot prune multi-objective trials (optuna#3450), so the rule is ours. Training epochs are
the fidelity; rungs sit at min_epochs * eta^k epochs below the full `epochs` (3 epochs, eta 3:
one rung after epoch 1). A trial reaching a rung is compared with its peers there: every other
trial of the study (any worker, finished or still running) that reached the same epoch, with its
accuracy at that epoch and its measured latency. It goes on when it is among the best
ceil(n / eta) of the n records, ranked as MOASHA does by non-dominated sorting (accuracy up, latency
down), and within a front by NSGA-II's crowding distance (the two ends of the front first, then the
most isolated points), then accuracy; else it stops there and keeps its accuracy at that epoch.
(An earlier rule let every point of the first front go on: with a sampler that spreads over
latency most trials were on it, and 28 of 35 trials of a default run trained all epochs.)
With fewer than `min_peers` peers there is no evidence yet, so it goes on. Weak candidates then
cost min_epochs epochs instead of all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MIN_PEERS = 4  # records at a rung (besides the trial) before it may stop anyone

Point = tuple[float, float]  # (accuracy, latency_ms): accuracy up, latency down


def rungs(epochs: int, min_epochs: int, eta: int) -> list[int]:
    """Epoch counts after which a trial is judged, below `epochs` (the last, full fidelity)."""
    out, rung = [], min_epochs
    while rung < epochs:
        out.append(rung)
        rung *= eta
    return out


def dominates(a: Point, b: Point) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def front_ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: 0 for the first front, 1 for the front once it is removed, ..."""
    ranks = [-1] * len(points)
    left, rank = set(range(len(points))), 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Point], ranks: Sequence[int]) -> list[float]:
    """NSGA-II crowding distance of each point within its front (inf at a front's two ends)."""
    out = [0.0] * len(points)
    for rank in set(ranks):
        front = [i for i in range(len(points)) if ranks[i] == rank]
        for axis in (0, 1):
            front.sort(key=lambda i: (points[i][axis], i))
            span = points[front[-1]][axis] - points[front[0]][axis]
            out[front[0]] = out[front[-1]] = math.inf
            for left, mid, right in zip(front, front[1:], front[2:], strict=False):
                if span > 0:
                    out[mid] += (points[right][axis] - points[left][axis]) / span
    return out


@dataclass(frozen=True)
class RungDecision:
    epoch: int
    peers: int
    front_rank: int | None  # None when there were too few peers to rank
    position: int | None  # 1-based place in the ranking
    kept: int | None  # how many of the rung's records go on
    promoted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(epoch: int, me: Point, peers: Sequence[Point], eta: int, min_peers: int = MIN_PEERS) -> RungDecision:
    """Whether a trial at `me` after `epoch` epochs goes on, given the peers' records at that epoch."""
    if len(peers) < min_peers:
        return RungDecision(epoch, len(peers), None, None, None, True,
                            f"epoch {epoch}: {len(peers)} peer(s) at this rung, fewer than {min_peers}: goes on")
    points = [me, *peers]
    ranks = front_ranks(points)
    crowding = crowding_distances(points, ranks)
    order = sorted(range(len(points)), key=lambda i: (ranks[i], -crowding[i], -points[i][0], points[i][1], i))
    position = order.index(0) + 1
    kept = max(1, math.ceil(len(points) / eta))
    promoted = position <= kept
    why = f"front {ranks[0] + 1}, place {position} of {len(points)}; the best {kept} go on"
    return RungDecision(epoch, len(peers), ranks[0], position, kept, promoted,
                        f"epoch {epoch}: {why}" + ("" if promoted else ": stopped"))
