"""The host pace probe (nas.latency._pace): a real OpenVINO probe network, its quiet pace kept per
machine / runtime / threads in a file, and timing that waits out a slow spell and flags an attempt
taken in one (a pace file claiming a 10x faster machine makes every reading a slow spell)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nas.latency import MeasureSettings, measure
from nas.latency._pace import Probe, pace_path, probe, wait_for_pace

THREADS = 1


@pytest.fixture(autouse=True)
def _private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITNAS_LOCK", str(tmp_path / "machine.lock"))
    monkeypatch.setenv("VITNAS_LATENCY_CACHE", str(tmp_path / "latency.sqlite"))


def test_probe_learns_the_quiet_pace_and_keeps_it_per_machine(tmp_path: Path) -> None:
    path = tmp_path / "pace.json"
    gauge = Probe(THREADS, path)
    assert gauge.quiet_ms is None  # nothing known yet
    readings = [gauge.read() for _ in range(3)]
    assert all(r > 0 for r in readings) and gauge.quiet_ms == min(readings)
    saved = json.loads(path.read_text())
    assert saved["quiet_ms"] == gauge.quiet_ms and saved["threads"] == THREADS
    assert Probe(THREADS, path).quiet_ms == gauge.quiet_ms  # a new process starts knowing it
    assert Probe(THREADS + 1, path).quiet_ms is None  # another thread count: learnt afresh
    path.write_text(json.dumps({**saved, "machine": "elsewhere"}))
    assert Probe(THREADS, path).quiet_ms is None  # another machine's pace is not ours
    path.write_text("{ not json")
    assert Probe(THREADS, path).quiet_ms is None  # damaged: relearnt, not an error


def _claim_a_faster_machine(threads: int) -> Path:
    """Make the pace file say this machine once ran the probe 10x faster than it does."""
    path = pace_path(threads)
    gauge = probe(threads)
    now = gauge.read()
    gauge.quiet_ms = now / 10.0
    gauge._save()
    assert json.loads(path.read_text())["quiet_ms"] == pytest.approx(now / 10.0)
    return path


def test_a_slow_spell_is_waited_for_then_the_measurement_is_flagged() -> None:
    _claim_a_faster_machine(THREADS)
    ratio, waited = wait_for_pace(THREADS, 1.25, budget_s=0.6)
    assert ratio > 5 and waited >= 0.6  # never within 1.25x of a 10x faster pace: waited the budget out
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    settings = MeasureSettings(warmup_iters=2, warmup_seconds=0.0, passes=3, min_samples=5, min_seconds_per_pass=0.0,
                               max_seconds_per_pass=0.05, max_retries=0, max_others_cpu=0.0, pace_factor=1.25,
                               max_pace_wait_seconds=0.3, max_loaded_retries=1)
    stats = measure(model, 32, "openvino", THREADS, settings=settings)
    assert stats.loaded and stats.pace is not None and stats.pace > 5
    assert stats.attempts == 2  # the slow attempt was discarded and measured once more
    assert "slow spell" in stats.summary()
    off = measure(model, 32, "openvino", THREADS, settings=MeasureSettings.quick())  # pace_factor 0: not watched
    assert off.pace is None and not off.loaded


def test_host_phases_summary_finds_a_slow_spell() -> None:
    from bench.host_phases import summarize

    # 0-10 s fast (3.5 ms, probe 0.27), 10-15 s a spell (5.6 ms, probe 0.33), then fast again
    rows = [{"t": t / 2, "ms": 5.6 if 20 <= t < 30 else 3.5, "probe_ms": 0.33 if 20 <= t < 30 else 0.27,
             "others_cpu": 0.0} for t in range(50)]
    summary = summarize(rows)
    assert summary["fast_ms"] == 3.5 and summary["slow_share"] == pytest.approx(0.2)
    assert summary["slow_spells"] == 1 and summary["slow_spell_s_max"] == pytest.approx(5.0)
    assert summary["slow_median_over_fast"] == pytest.approx(1.6)
    assert summary["probe_over_quiet_fast_bursts_p5_p50_p95"] == [1.0, 1.0, 1.0]
    assert summary["probe_over_quiet_slow_bursts_p5_p50_p95"][1] == pytest.approx(0.33 / 0.27, abs=1e-3)
    assert summary["window_over_fast_max"] == pytest.approx(0.6)  # a 2 s window inside the spell
