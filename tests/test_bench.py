"""The bench scripts: bad flags answered like the nas/compress commands (one line `error: ...`, exit code 2),
and int8_profile's choice among an IR's holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem != "__init__")
# what a script requires, so that the unknown flag is the error argparse reports
REQUIRED = {"int8_amx": ["--run", "r"], "int8_rules": ["--run", "r"], "prune_bench": ["time", "--run", "r"],
            "winners_benchmark_app": ["--run", "r"]}


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"bench.{script}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_every_bench_script_is_listed() -> None:
    assert len(SCRIPTS) >= 15 and "int8_profile" in SCRIPTS and "latency_bench" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_flag_is_one_line_and_exit_2(script: str) -> None:
    result = run_bench(script, *REQUIRED.get(script, []), "--no-such-flag")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--no-such-flag" in lines[0], result.stderr
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr


def test_a_missing_run_or_winner_is_one_line_and_exit_2(tmp_path: Path) -> None:
    def profile(*args: str) -> subprocess.CompletedProcess:
        return run_bench("int8_profile", *args, "--prepare-only", "--workdir", str(tmp_path / "work"))

    result = profile("--run", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no such run" in result.stderr and str(tmp_path) in result.stderr
    (tmp_path / "config.yaml").write_text("space: {}\n")
    (tmp_path / "winners").mkdir()
    result = profile("--run", str(tmp_path), "--winner", "3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no winners" in result.stderr and str(tmp_path / "winners") in result.stderr


def _hold(profiled: float, bench: float, ours: float | None = None) -> dict:
    row = {"ir": "m.xml", "hint": "f32", "profile": {"total_ms": profiled}, "benchmark_app": {"median_ms": bench}}
    return row if ours is None else {**row, "ours": {"estimate_ms": ours}}


def test_the_fastest_profiled_hold_is_kept_with_the_best_timings_over_all_holds() -> None:
    from bench.int8_profile import fastest_hold

    holds = [_hold(4.0, 2.1, 2.0), _hold(2.5, 2.6, 2.4), {"ir": "m.xml", "hint": "f32", "error": "RuntimeError: x"},
             _hold(3.0, 1.9, 2.2)]
    row = fastest_hold(holds)
    assert row["profile"]["total_ms"] == 2.5  # a slow phase inflates a whole hold: keep the fastest one
    assert row["benchmark_app"]["median_ms"] == 1.9 and row["ours"]["estimate_ms"] == 2.0
    assert row["rounds"] == {"profiled_ms": [4.0, 2.5, 3.0], "benchmark_app_ms": [2.1, 2.6, 1.9],
                             "ours_ms": [2.0, 2.4, 2.2]}
    island = fastest_hold([_hold(1.5, 1.4), _hold(1.2, 1.6)])  # int8@f32: no our-clock figure
    assert "ours" not in island and island["benchmark_app"]["median_ms"] == 1.4 and "ours_ms" not in island["rounds"]
    failed = [{"ir": "m.xml", "hint": "bf16", "error": "RuntimeError: bf16 under the cap"}]
    assert fastest_hold(failed) == failed[0]


def test_the_type_bound_takes_each_op_type_at_its_faster_precision() -> None:
    from bench.int8_profile import type_bound

    fp32 = {"Convolution": 6.0, "GroupConvolution": 1.0, "FullyConnected": 2.0, "Reorder": 0.5}
    int8 = {"Convolution": 4.0, "GroupConvolution": 1.5, "FullyConnectedQuantizedLegacy": 3.0, "Subgraph": 0.6}
    bound = type_bound(fp32, int8)
    # conv INT8, depthwise and the (legacy-kernel) INT8 FullyConnected fp32, fp32-only Reorder kept,
    # INT8-only quantize subgraphs dropped
    assert bound["bound_ms"] == 4.0 + 1.0 + 2.0 + 0.5 and bound["fp32_ms"] == 9.5 and bound["int8_ms"] == 9.1
    assert bound["faster_in"] == {"Convolution": "int8", "GroupConvolution": "fp32", "FullyConnected": "fp32",
                                  "Reorder": "fp32"}
    assert abs(bound["bound/fp32"] - 7.5 / 9.5) < 1e-12
