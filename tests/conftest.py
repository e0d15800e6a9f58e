"""Shared fixtures: tiny architectures of every mixer family (real models, tiny sizes), and one
finished tiny search run that several test modules read (built once per session)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nas.arch import Arch, StageSpec
from nas.mixers import mixer_names

if TYPE_CHECKING:
    from nas.latency import LatencyStats

MIXERS = mixer_names()  # the built-in catalogue (nas.mixers), every family the tests build

# A lock of this test session (its search subprocesses inherit it): tests neither wait for nor block
# the machine's real measurements, nor another test session's.
os.environ.setdefault("VITNAS_LOCK", os.path.join(tempfile.mkdtemp(prefix="vitnas-test-"), "machine.lock"))
warnings.filterwarnings("ignore", category=Warning, module="torch.onnx")


def tiny_arch(mixer: str, num_classes: int = 10, head: str = "evit") -> Arch:
    """Two small stages: a conv stage, then the mixer under test (a few thousand parameters)."""
    return Arch(
        stages=(
            StageSpec("mbconv", 1, 16, expand=2, downsample="mbconv"),
            StageSpec(mixer, 2, 32, expand=2, downsample="conv", head_dim=8, fusion_tokens=2),
        ),
        stem_kind="dsconv",
        stem_width=8,
        stem_depth=1,
        head_kind=head,
        head_widths=(32, 48) if head == "evit" else (),
        num_classes=num_classes,
        name=f"tiny-{mixer}",
    )


@pytest.fixture(params=MIXERS)
def mixer(request: pytest.FixtureRequest) -> str:
    return request.param


# --- one finished tiny search, shared -------------------------------------------------------------

TINY_SPACE = Path(__file__).parent / "data" / "tiny_space.yaml"
# Real search settings, small: 600 MNIST images at 32 px, 2 epochs (one successive-halving rung),
# batch 16 (enough steps to beat chance), one thread (two stall on these shared cores), quick timing.
TINY_SEARCH = ("--space", str(TINY_SPACE), "--epochs", "2", "--limit", "600", "--batch-size", "16",
               "--quick-latency", "--quiet", "--no-baselines", "--no-fit", "--threads", "1")
TINY_TRIALS = 6
CHANCE = 0.1  # 10 MNIST classes


@dataclass(frozen=True)
class TinyRun:
    """A finished search over the tiny space whose budget lies between its trials' latencies."""

    path: Path  # the run directory; shared: read it, or `copy_run` it before changing anything
    budget_ms: float
    latency_ms: dict[str, float]  # arch hash -> latency measured before the search (read back from the cache)

    def args(self, *extra: str) -> list[str]:
        """`python -m nas.search` arguments that resume this run (results root, run name, settings)."""
        return ["--results", str(self.path.parent), "--run", self.path.name, *TINY_SEARCH,
                "--budget-ms", repr(self.budget_ms), *extra]


def copy_run(run: TinyRun, directory: Path) -> TinyRun:
    """A private copy of a run (same run name, under `directory`) that a test may change."""
    shutil.copytree(run.path, directory / run.path.name)
    return TinyRun(directory / run.path.name, run.budget_ms, run.latency_ms)


def budget_between(latencies: list[float]) -> float:
    """A budget in the widest gap (by ratio) between measured latencies."""
    values = sorted(set(latencies))
    lo, hi = max(zip(values, values[1:], strict=False), key=lambda pair: pair[1] / pair[0])
    return float(f"{math.sqrt(lo * hi):.4g}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """One real search (OpenVINO timing, Optuna SQLite study, training, report) with feasible and
    over-budget trials, whatever this machine's speed or load: the seeded sampler's candidates are
    timed first into the run's latency cache, the budget is set between their latencies, and the
    search reads them back (tests check it did)."""
    import optuna

    from nas.errors import run_cli
    from nas.latency import LatencyCache, MeasureSettings, measure
    from nas.models import build_model
    from nas.objective import decided_latency, latency_key
    from nas.search import main, make_sampler
    from nas.space import load_space

    run_dir = tmp_path_factory.mktemp("tiny-results") / "tiny"
    run_dir.mkdir()
    space, quick = load_space(TINY_SPACE), MeasureSettings.quick()
    cache = LatencyCache(run_dir / "latency_cache.sqlite")  # where nas.search keeps a run's latencies

    def timer(arch: Arch) -> Callable[[int], LatencyStats]:
        """The i-th independent measurement of `arch`, cached under the key the search looks up."""
        model = build_model(arch)
        return lambda i: measure(model, space.resolution.target, "openvino", 1, cache=cache,
                                 key=latency_key(arch.hash, quick, i), settings=quick)

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler("nsga2", 0))
    timers: dict[str, Callable[[int], LatencyStats]] = {}
    for _ in range(TINY_TRIALS):  # the candidates nas.search will propose with --seed 0
        trial = study.ask()
        arch = space.sample(trial, 10)
        timers[arch.hash] = timer(arch)
        study.tell(trial, [0.0, timers[arch.hash](1).ms])
    budget = budget_between([t(1).ms for t in timers.values()])
    # The search's own rule (a second measurement near the budget), here, so it finds both in the cache.
    latency = {h: decided_latency(t, budget)[0].ms for h, t in timers.items()}
    if all(ms <= budget for ms in latency.values()) or all(ms > budget for ms in latency.values()):
        pytest.fail(f"tiny run: no budget splits the latencies {sorted(latency.values())}")
    run = TinyRun(run_dir, budget, latency)
    assert run_cli(main, [*run.args(), "--trials", str(TINY_TRIALS)]) == 0
    return run
