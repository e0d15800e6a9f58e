"""nas.latency: statistics, sampling loop, cache (incl. several processes), real runtimes, CLI.

Real OpenVINO / ONNX Runtime / PyTorch on a tiny conv net; no timed assertions (this machine's
timing noise is large), only sanity: positive, finite, metadata recorded.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas.errors import BackendUnavailable, UserError
from nas.export import convert_openvino, export_onnx, save_openvino
from nas.latency import (
    CacheKey,
    LatencyCache,
    LatencyStats,
    MeasureSettings,
    best_of_rounds,
    file_key,
    measure,
    measure_ir,
    runtime_version,
    summarize,
)
from nas.latency._cache import SCHEMA as CACHE_SCHEMA
from nas.latency._timing import cpu_clock, others_cores, sample

REPO = Path(__file__).resolve().parent.parent
RES = 32
FAST = MeasureSettings.quick()


@pytest.fixture(autouse=True)
def _private_lock(tmp_path, monkeypatch):
    # Our own machine lock and cache: never wait on (or block) a real search running here.
    monkeypatch.setenv("VITNAS_LOCK", str(tmp_path / "machine.lock"))
    monkeypatch.setenv("VITNAS_LATENCY_CACHE", str(tmp_path / "default-cache.sqlite"))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    model = tiny_model()
    return {
        "xml": save_openvino(convert_openvino(model, RES), out / "tiny.xml"),
        "onnx": export_onnx(model, out / "tiny.onnx", RES),
    }


def fake_stats(**changes) -> LatencyStats:
    summary = summarize([[1.0, 1.1, 1.2], [1.0, 1.05, 1.1]], unsteady_cv=0.05)
    stats = LatencyStats.from_summary(summary, backend="openvino", runtime_version="1.0", device="CPU X",
                                      threads=2, resolution=224, key="abc")
    return replace(stats, **changes)


# --- statistics --------------------------------------------------------------------------------

def test_summarize_synthetic_timings():
    passes = [[3.0, 1.0, 2.0, 4.0], [2.0, 3.0, 4.0, 5.0], [10.0, 11.0, 12.0, 13.0]]
    s = summarize(passes, unsteady_cv=0.05)
    values = np.concatenate(passes)
    assert s.pass_medians_ms == (2.5, 3.5, 11.5)
    assert s.estimate_ms == 2.5  # min of pass medians, not of samples
    assert s.min_ms == 1.0
    assert s.median_ms == pytest.approx(np.median(values))
    assert s.p90_ms == pytest.approx(np.percentile(values, 90))
    assert s.iqr_ms == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    assert s.cv == pytest.approx(values.std(ddof=1) / values.mean())
    medians = np.array([2.5, 3.5, 11.5])
    assert s.pass_cv == pytest.approx(medians.std(ddof=1) / medians.mean())
    assert s.samples == 12 and s.unsteady


def test_summarize_steady_and_single_pass():
    steady = summarize([[2.0, 2.1, 1.9]] * 4, unsteady_cv=0.05)
    assert steady.pass_cv == 0.0 and not steady.unsteady and steady.estimate_ms == 2.0
    single = summarize([[5.0, 7.0]], unsteady_cv=0.05)
    assert single.pass_cv == 0.0 and single.estimate_ms == 6.0
    with pytest.raises(ValueError):
        summarize([[]], unsteady_cv=0.05)


def _scripted_step(values):
    it = iter(values)
    return lambda: next(it)


def test_sample_remeasures_unsteady_then_stops():
    settings = MeasureSettings(warmup_iters=1, warmup_seconds=0, passes=2, min_samples=2,
                               min_seconds_per_pass=0, max_seconds_per_pass=60, max_retries=3)
    # warm-up 1, then attempt 1 (passes 1,1 | 5,5: unsteady), attempt 2 (2,2 | 2,2: steady)
    result = sample(_scripted_step([9, 1, 1, 5, 5, 2, 2, 2, 2]), settings)
    assert result.attempts == 2 and not result.summary.unsteady and result.summary.estimate_ms == 2


def test_sample_retries_are_bounded_and_keep_steadiest():
    settings = MeasureSettings(warmup_iters=0, warmup_seconds=0, passes=2, min_samples=1,
                               min_seconds_per_pass=0, max_seconds_per_pass=60, max_retries=2)
    noisy = [1, 3, 1, 2, 1, 4]  # pass CVs: large, smaller, largest
    result = sample(_scripted_step(noisy), settings)
    assert result.attempts == 3 and result.summary.unsteady
    assert result.summary.pass_medians_ms == (1.0, 2.0)


def test_others_cores_sees_a_busy_neighbour():
    start = cpu_clock()
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nend = time.time() + 0.8\nwhile time.time() < end: pass"])
    busy.wait(timeout=30)
    others = others_cores(start, cpu_clock())
    assert others is not None and others > 0.3  # the child burned ~1 core (plus whatever else runs)
    assert others_cores(None, start) is None


def test_stats_round_trip_json():
    stats = fake_stats()
    data = json.loads(json.dumps(stats.to_dict()))
    assert LatencyStats.from_dict(data) == stats
    assert LatencyStats.from_dict({**data, "from_a_newer_writer": 1}) == stats
    assert stats.ms == stats.estimate_ms and "ms" in stats.summary()


def test_best_of_rounds_interleaves_and_keeps_each_fastest():
    script = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}
    order = []
    best = best_of_rounds({name: (lambda n=name: next(script[n])) for name in ("a", "b")}, 3, ms=float,
                          each=lambda r, name, ms: order.append((r, name, ms)))
    assert best == {"a": 1.0, "b": 4.0}
    assert order == [(1, "a", 3.0), (1, "b", 5.0), (2, "a", 1.0), (2, "b", 6.0), (3, "a", 2.0), (3, "b", 4.0)]
    stats = iter([fake_stats(estimate_ms=2.0), fake_stats(estimate_ms=1.5)])
    assert best_of_rounds({"m": lambda: next(stats)}, 2)["m"].estimate_ms == 1.5  # LatencyStats by default
    with pytest.raises(ValueError):
        best_of_rounds({"m": lambda: 1.0}, 0)


# --- cache -------------------------------------------------------------------------------------

def test_cache_hit_miss_and_persistence(tmp_path):
    path = tmp_path / "cache.sqlite"
    cache = LatencyCache(path)
    stats = fake_stats()
    assert cache.get(stats.cache_key()) is None and cache.misses == 1
    cache.put(stats)
    assert cache.get(stats.cache_key()) == stats and cache.hits == 1
    assert LatencyCache(path).get(stats.cache_key()) == stats  # another process / instance


def test_cache_key_covers_runtime_version_threads_resolution(tmp_path):
    cache = LatencyCache(tmp_path / "cache.sqlite")
    stats = fake_stats()
    cache.put(stats)
    key = stats.cache_key()
    assert cache.get(replace(key, runtime_version="2.0")) is None  # runtime upgraded: invalid
    assert cache.get(replace(key, threads=1)) is None
    assert cache.get(replace(key, resolution=160)) is None
    assert cache.get(replace(key, backend="onnxruntime")) is None
    assert cache.get(replace(key, device="other CPU")) is None
    newer = fake_stats(runtime_version="2.0", estimate_ms=0.9)
    cache.put(newer)
    assert cache.get(newer.cache_key()) == newer and cache.get(key) == stats
    assert cache.compact(keep=lambda s: s.runtime_version == "2.0") == 1
    fresh = LatencyCache(cache.path)
    assert fresh.get(key) is None and fresh.get(newer.cache_key()) == newer
    assert cache.get(key) is None  # the instance that compacted re-reads too


def test_cache_latest_entry_wins_and_other_schemas_are_ignored(tmp_path):
    cache = LatencyCache(tmp_path / "cache.sqlite")
    cache.put(fake_stats(estimate_ms=2.0))
    reader = LatencyCache(cache.path)
    assert len(reader) == 1
    cache.put(fake_stats(estimate_ms=3.0))
    assert reader.get(fake_stats().cache_key()).estimate_ms == 3.0 and len(reader) == 1
    with sqlite3.connect(cache.path) as db:  # an entry of an older schema, and one nobody can parse
        db.execute("INSERT INTO latency SELECT key || '-old', backend, device, resolution, threads, runtime_version,"
                   " precision, machine, 1, estimate_ms, measured_at, stats FROM latency")
        db.execute("INSERT INTO latency SELECT key || '-torn', backend, device, resolution, threads, "
                   "runtime_version, precision, machine, schema, estimate_ms, measured_at, '{\"backend\": ' "
                   "FROM latency WHERE schema = ?", (CACHE_SCHEMA,))
    assert reader.get(fake_stats(key="abc-old").cache_key()) is None
    assert reader.get(fake_stats(key="abc-torn").cache_key()) is None and len(reader) == 1
    assert reader.compact() == 1
    with sqlite3.connect(cache.path) as db:
        assert db.execute("SELECT count(*) FROM latency").fetchone()[0] == 1
    with pytest.raises(ValueError):
        cache.put(fake_stats(key=""))


WRITER = textwrap.dedent("""
    import sys
    from dataclasses import replace
    from nas.latency import LatencyCache, LatencyStats, summarize
    path, worker, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cache = LatencyCache(path)
    base = LatencyStats.from_summary(summarize([[1.0, 2.0]], 0.05), backend="openvino",
                                     runtime_version="1", device="cpu", threads=1, resolution=8)
    for i in range(40):
        cache.put(replace(base, key=f"{prefix}{i}", estimate_ms=float(i + 1) + worker / 10))
        assert cache.get(replace(base, key=f"{prefix}{i}").cache_key()) is not None
""")


def _writers(path: Path, prefixes: list[str]) -> None:
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), prefix], cwd=REPO)
               for w, prefix in enumerate(prefixes)]
    assert all(p.wait(timeout=60) == 0 for p in workers)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {row[0] for row in db.execute("SELECT DISTINCT schema FROM latency")} == {CACHE_SCHEMA}


def test_cache_is_safe_for_several_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    _writers(path, [f"w{w}-" for w in range(4)])
    cache = LatencyCache(path)
    assert len(cache) == 160
    keys = {s.key for s in cache.entries()}
    assert keys == {f"w{w}-{i}" for w, i in itertools.product(range(4), range(40))}


def test_two_processes_writing_the_same_keys_leave_one_whole_entry_each(tmp_path):
    path = tmp_path / "shared.sqlite"
    _writers(path, ["k", "k"])
    entries = LatencyCache(path).entries()
    assert sorted(s.key for s in entries) == sorted(f"k{i}" for i in range(40))
    # each entry is one writer's whole record: its estimate is that writer's value for that key
    assert all(s.estimate_ms in (int(s.key[1:]) + 1.0, int(s.key[1:]) + 1.1) for s in entries)


def test_a_corrupt_or_foreign_cache_file_is_a_one_line_error(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00\x01not a database" * 100)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE trials (id INTEGER)")
    truncated = tmp_path / "truncated.sqlite"
    cache = LatencyCache(truncated)
    for i in range(300):
        cache.put(fake_stats(key=f"k{i}", pass_medians_ms=tuple(range(50))))
    cache.close()
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for path in (garbage, foreign, truncated):
        with pytest.raises(UserError) as error:
            LatencyCache(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    result = run_cli("--ir", "model.xml", "--cache", str(garbage))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {garbage}: not a latency cache"), result.stderr


def test_a_json_lines_cache_of_an_older_version_is_imported_once(tmp_path):
    path = tmp_path / "latency_cache.sqlite"  # the run directory's name, JSON lines before
    stats = fake_stats()
    path.write_text(json.dumps({"schema": CACHE_SCHEMA, "stats": stats.to_dict()}) + "\n"
                    + json.dumps({"schema": 1, "stats": fake_stats(key="old").to_dict()}) + "\n"
                    + '{"schema": 2, "stats": {"backend": "openv')  # torn last line
    cache = LatencyCache(path)
    assert cache.get(stats.cache_key()) == stats and len(cache) == 1
    assert path.read_bytes().startswith(b"SQLite format 3")
    assert path.with_name(path.name + ".jsonl").read_text().count("\n") == 2  # the original, kept


# --- backends ----------------------------------------------------------------------------------

def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailable, match=r"cuda.*GPU.*openvino, onnxruntime, torch"):
        measure(tiny_model(), RES, backend="cuda")


def test_unknown_backend_names_allowed_values():
    with pytest.raises(UserError, match="allowed: openvino, onnxruntime, torch, cuda"):
        measure(tiny_model(), RES, backend="tensorrt")
    with pytest.raises(UserError, match="threads"):
        measure(tiny_model(), RES, threads=0)


def _check_sane(stats: LatencyStats, backend: str, threads: int, resolution: int) -> None:
    for value in (stats.estimate_ms, stats.median_ms, stats.p90_ms, stats.min_ms, stats.mean_ms):
        assert value > 0 and math.isfinite(value)
    assert stats.min_ms <= stats.estimate_ms <= max(stats.pass_medians_ms)
    assert stats.iqr_ms >= 0 and stats.cv >= 0 and stats.pass_cv >= 0
    assert stats.samples >= FAST.passes and len(stats.pass_medians_ms) == FAST.passes
    assert stats.backend == backend and stats.threads == threads and stats.resolution == resolution
    assert stats.runtime_version == runtime_version(backend) and stats.device
    assert stats.measured_at > 0 and stats.attempts >= 1
    assert stats.others_cpu is None or stats.others_cpu >= 0


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "torch"])
def test_real_measurement_on_each_cpu_backend(backend):
    model = tiny_model().train()
    threads_before = torch.get_num_threads()
    stats = measure(model, RES, backend=backend, threads=1, settings=FAST)
    _check_sane(stats, backend, 1, RES)
    assert model.training  # the caller's model is left as it was
    assert torch.get_num_threads() == threads_before  # torch's global threads restored


def test_measure_uses_cache_and_skips_work_on_hit(tmp_path):
    cache = LatencyCache(tmp_path / "c.jsonl")
    first = measure(tiny_model(), RES, threads=1, cache=cache, key="tiny", settings=FAST)
    again = measure(tiny_model(), RES, threads=1, cache=cache.path, key="tiny", settings=FAST)
    assert again == first  # same record: measured_at identical, nothing re-timed
    other = measure(tiny_model(), RES, threads=2, cache=cache, key="tiny", settings=FAST)
    assert other.threads == 2 and len(LatencyCache(cache.path)) == 2
    with pytest.raises(ValueError, match="key"):
        measure(tiny_model(), RES, cache=cache, settings=FAST)


@pytest.mark.parametrize(("kind", "backend"), [("xml", "openvino"), ("onnx", "onnxruntime"),
                                               ("onnx", "openvino")])
def test_measure_ir_on_exported_files(exported, kind, backend, tmp_path):
    stats = measure_ir(exported[kind], backend, threads=1, settings=FAST, cache=tmp_path / "c.jsonl")
    _check_sane(stats, backend, 1, RES)  # resolution read from the file's fixed input shape
    assert stats.key == file_key(exported[kind])
    hit = measure_ir(exported[kind], backend, threads=1, settings=FAST, cache=tmp_path / "c.jsonl")
    assert hit == stats


def test_measure_ir_bad_input(exported, tmp_path):
    with pytest.raises(UserError, match="not found"):
        measure_ir(tmp_path / "missing.xml")
    with pytest.raises(UserError, match=r"\.onnx files only"):
        measure_ir(exported["xml"], "onnxruntime")
    with pytest.raises(UserError, match="allowed: openvino, onnxruntime"):
        measure_ir(exported["onnx"], "torch")
    with pytest.raises(UserError, match="fixed"):
        measure_ir(exported["xml"], resolution=64, settings=FAST)


# --- CLI ---------------------------------------------------------------------------------------

def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "nas.latency", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "needle"), [
    (["--arch", "no/such/arch.yaml"], "no/such/arch.yaml"),
    (["--backend", "tensorrt", "--arch", "x.yaml"], "allowed: openvino, onnxruntime, torch, cuda"),
    (["--ir", "no/such/model.xml", "--backend", "onnxruntime"], "no/such/model.xml"),
    (["--threads", "many"], "--threads"),
])
def test_cli_bad_input_is_one_line_exit_2(args, needle):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_cuda_without_gpu_exit_2():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli("--backend", "cuda", "--arch", "whatever.yaml")
    assert result.returncode == 2 and result.stderr.startswith("error: backend 'cuda' needs a CUDA GPU")


def test_cli_times_an_ir_as_json(exported, tmp_path):
    cache = tmp_path / "cli.sqlite"
    args = ["--ir", str(exported["xml"]), "--threads", "1", "--quick", "--json", "--cache", str(cache)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == "openvino" and data["resolution"] == RES and data["estimate_ms"] > 0
    hit = run_cli(*args[:-3], "--cache", str(cache))  # human-readable, from the cache
    assert hit.returncode == 0 and "cache hit" in hit.stdout and "ms" in hit.stdout


def test_cache_key_str_is_unambiguous():
    assert CacheKey("a|b", "openvino", "cpu", 224, 2, "1").as_str() != CacheKey(
        "a", "b|openvino", "cpu", 224, 2, "1").as_str()


def test_int8_latency_draws_no_nncf_progress_bars(capfd: pytest.CaptureFixture[str]) -> None:
    """A search quantizes every candidate at --precision int8: NNCF's rich bars must not reach the terminal."""
    capfd.readouterr()
    stats = measure(tiny_model(), RES, threads=1, precision="int8", settings=FAST)
    captured = capfd.readouterr()
    assert stats.precision == "int8"
    assert "Statistics collection" not in captured.out + captured.err, captured.out[-500:]
