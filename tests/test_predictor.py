"""The latency predictor: calibrated on a tiny space with quick timing (real OpenVINO), predicting
without building, refusing damaged or foreign calibrations, and rejecting a huge candidate in a search."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from nas.arch import Arch
from nas.errors import UserError, run_cli
from nas.latency import (
    LatencyCache,
    MeasureSettings,
    Predictor,
    PredictorError,
    calibrate,
    load_predictor,
    measure,
    predictor_path,
)
from nas.latency.__main__ import main as latency_main
from nas.latency._predictor import ROUNDS, decompose, sample_archs, space_units
from nas.space import load_space

RESOLUTION = 32
THREADS = 1
SPACE = """
name: predictor-test
resolution: {proxy: 32, target: 32}
stem: {kind: dsconv, width: 8, depth: 1}
stages:
  - {mixer: mbconv, depth: 1, width: 8, expand: 2, downsample: mbconv}
  - {mixer: [mbconv, litemla], depth: DEPTHS, width: 16, expand: 2, downsample: conv, head_dim: 8}
head: {kind: cas}
"""


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Predictor, Path]]:
    """A predictor calibrated on the tiny space (its 4 archs profiled in context), saved where auto looks."""
    root = tmp_path_factory.mktemp("predictor")
    space_file = root / "space.yaml"
    space_file.write_text(SPACE.replace("DEPTHS", "[1, 2]"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITNAS_LATENCY_CACHE", str(root / "latency.sqlite"))
        patch.setenv("VITNAS_LOCK", str(root / "machine.lock"))
        predictor, timed = calibrate([load_space(space_file)], threads=THREADS, resolution=RESOLUTION,
                                     cache=LatencyCache(root / "latency.sqlite"), archs=4, seconds=3600,
                                     arch_settings=MeasureSettings.quick(), progress=False)  # all 4, however slow
        predictor.save(predictor_path(threads=THREADS, resolution=RESOLUTION, precision="fp32"))
        yield predictor, root


def _arch(mixer: str, depth: int) -> Arch:
    space = load_space_text(SPACE.replace("DEPTHS", f"[{depth}]"))
    return next(a for a in sample_archs(space, 10, 0, num_classes=1000) if a.stages[1].mixer == mixer)


def load_space_text(text: str) -> object:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(text)
    try:
        return load_space(handle.name)
    finally:
        os.unlink(handle.name)


def test_units_cover_every_arch_of_the_space() -> None:
    space = load_space_text(SPACE.replace("DEPTHS", "[1, 2]"))
    units = {u.key for u in space_units(space, RESOLUTION)}
    for arch in sample_archs(space, 10, 1):
        assert {u.key for u in decompose(arch, RESOLUTION)} <= units


def test_calibrated_predictor_predicts_without_building(calibrated: tuple[Predictor, Path]) -> None:
    predictor, root = calibrated
    # the 4 archs of the space, 9 distinct units (stem, stage 0's downsampling and body, one conv
    # downsampling and 4 bodies in stage 1, head), each timed in context
    assert len(predictor.archs) == 4 and len(predictor.samples) == 4 and len(predictor.unit_ms) == 9
    for sample in predictor.samples:
        # per-node times have 1 us resolution: a unit of a 32 px network may read 0
        assert len(sample.units) == 6 and all(ms >= 0 for ms in sample.units.values())
        assert sum(sample.units.values()) > 0 and sample.measured_ms > 0
        # timed in ROUNDS rounds over the batch (profiled in the first two); the sample keeps the fastest timing
        assert len(sample.rounds_ms) == ROUNDS and not sample.loaded
        assert sample.measured_ms == pytest.approx(min(sample.rounds_ms), abs=1e-4)
    assert predictor.error["rounds"] == ROUNDS
    shallow, deep = _arch("litemla", 1), _arch("litemla", 2)
    started = time.perf_counter()
    p_shallow, p_deep = predictor.predict(shallow), predictor.predict(deep)
    assert time.perf_counter() - started < 0.05  # lookups only: no model built, no torch
    assert p_shallow.regressed == 0 and p_deep.units == p_shallow.units  # every unit seen in calibration
    # every unit from its group's regression; the correction scales their sum (4 networks: the median ratio)
    units = decompose(deep, RESOLUTION)
    assert p_deep.unit_sum_ms == pytest.approx(sum(predictor.regressed_ms(u) for u in units))
    assert set(predictor.correction) == {"*", "const"}
    assert p_deep.ms == pytest.approx(predictor.correction["*"] * p_deep.unit_sum_ms) and p_shallow.ms > 0
    # Against a real measurement (quick timing on a shared machine: a loose bound, still one that can fail).
    from nas.models import build_model

    measured = measure(build_model(deep), RESOLUTION, threads=THREADS, settings=MeasureSettings.quick()).ms
    assert 0.25 * measured < p_deep.ms < 4.0 * measured


def test_anchored_rescales_to_fresh_timings(calibrated: tuple[Predictor, Path]) -> None:
    """Fresh timings of a few archs (the search's space fit) rescale every prediction by their median
    measured / predicted ratio, within ANCHOR_BOUNDS; fewer than MIN_ANCHORS leave it as it was."""
    from nas.latency._predictor import ANCHOR_BOUNDS, MIN_ANCHORS

    predictor, _ = calibrated
    space = load_space_text(SPACE.replace("DEPTHS", "[1, 2]"))
    archs = sample_archs(space, 4, 0)
    probe = _arch("mbconv", 2)
    before = predictor.predict(probe).ms
    ratios = [1.05, 1.1, 1.1, 1.3]  # median 1.1
    anchored = predictor.anchored([(a, r * predictor.predict(a).ms) for a, r in zip(archs, ratios, strict=True)])
    assert anchored.predict(probe).ms == pytest.approx(1.1 * before)
    assert anchored.error["anchor"]["archs"] == 4 and predictor.predict(probe).ms == before  # the original unchanged
    assert predictor.anchored([(a, 2 * predictor.predict(a).ms) for a in archs[:MIN_ANCHORS - 1]]) is predictor
    slow_spell = predictor.anchored([(a, 3 * predictor.predict(a).ms) for a in archs])
    assert slow_spell.predict(probe).ms == pytest.approx(ANCHOR_BOUNDS[1] * before)


def test_search_anchors_the_predictor_to_its_space_fit(calibrated: tuple[Predictor, Path]) -> None:
    """The search's space fit times 8 samples of the fitted space: decoded again from the recorded
    fit, they re-anchor the predictor (here every timing 1.2x its prediction)."""
    from nas.fit import fit_space
    from nas.search.fitting import anchor_to_fit, apply_fit

    predictor, _ = calibrated
    space = load_space_text(SPACE.replace("DEPTHS", "[1, 2]"))
    budget = 4 * predictor.predict(_arch("mbconv", 2)).ms
    fit = fit_space(space, 10, budget, lambda arch: 1.2 * predictor.predict(arch).ms, samples=8, probe=3)
    anchored = anchor_to_fit(predictor, fit, apply_fit(space, fit), 10)
    assert anchored.error["anchor"]["archs"] == 8
    assert anchored.error["anchor"]["median_ratio"] == pytest.approx(1.2)


def test_features_count_padded_channels_and_blocks() -> None:
    """Dense MACs count channels padded to the CPU's 16-float blocks; blocks and every count grow with depth."""
    from nas.latency._predictor import Unit

    def body(width: int, depth: int) -> tuple[float, ...]:
        return Unit.of("body", mixer="mbconv", width=width, expand=2, depth=depth, side=14).features()

    def down(cin: int) -> tuple[float, ...]:
        return Unit.of("downsample", downsample="conv", width=32, cin=cin, side=28).features()

    assert down(24)[2] == down(32)[2] and down(24)[4] < down(32)[4]  # dense MACs padded, activations not
    assert body(16, 2)[1] == 2 and all(b >= a for a, b in zip(body(16, 1), body(16, 2), strict=True))
    glsra = Unit.of("body", mixer="glsra", width=64, expand=4, depth=1, side=14, head_dim=16, keep_ratio=0.5,
                    fusion_tokens=4, pool_size=7).features()
    assert len(glsra) == 7 and glsra[5] > 0 and glsra[6] > 0  # attention MACs, weights


def test_fit_takes_profiles_as_shares_of_the_timing() -> None:
    """Profiles read 0.65-1.0x of the true unit times, a different factor per network (profiling
    overhead drifting with a shared host's state): the fit uses them only to divide each network's
    measured latency among its units, so leave-one-out predictions match the timings; fitted on the
    raw profiles they would be off by up to ~20%."""
    from nas.latency._predictor import Predictor, Sample, Unit, _fit_correction, fit

    rng = np.random.default_rng(0)
    stem = Unit.of("stem", kind="dsconv", width=16, depth=1, side=224)
    specs, samples = {stem.key: stem}, []
    for i in range(16):
        body = Unit.of("body", mixer="mbconv", width=int(rng.choice([32, 48, 64, 96])), expand=2.0,
                       depth=int(rng.integers(1, 4)), side=int(rng.choice([7, 14, 28])))
        specs[body.key] = body
        true = {stem.key: 0.2, body.key: 0.05 + 0.002 * body.features()[2]}  # ms: a constant and per dense MMAC
        factor = rng.uniform(0.65, 1.0)
        samples.append(Sample(f"n{i}", {k: v * factor for k, v in true.items()}, sum(true.values())))
    predictor = Predictor("openvino", "CPU", 2, 224, "fp32", "v", "m", {}, {}, {"*": 1.0, "const": 0.0},
                          samples=samples, unit_specs={k: [u.kind, u.p] for k, u in specs.items()})
    error = fit(predictor).error
    assert error["archs"] == 16 and error["max_abs"] < 0.03, error
    few = _fit_correction(samples[:5], specs, predictor.groups)  # too few networks: the median ratio alone
    assert set(few) == {"*", "const"} and few["const"] == 0.0


def test_refit_brings_an_earlier_schema_to_the_current_model(calibrated: tuple[Predictor, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, root = calibrated
    monkeypatch.setenv("VITNAS_LATENCY_CACHE", str(root / "latency.sqlite"))
    data = predictor.to_dict()
    data.update(schema=2, groups={"all": [0.1, 0.0, 0.0, 0.0]}, correction=[1.0, 0.0])  # the earlier layout
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    base = ["--predictor", str(old), "--threads", str(THREADS), "--resolution", str(RESOLUTION)]
    assert "--refit" in _refused(["--preset", "efficientvit_b0", "--predict", *base], capsys)
    assert run_cli(latency_main, ["--refit", *base]) == 0
    assert "refitted" in capsys.readouterr().out
    refitted = load_predictor(old, threads=THREADS, resolution=RESOLUTION)
    arch = _arch("litemla", 2)
    assert refitted.predict(arch).ms == pytest.approx(predictor.predict(arch).ms)  # same samples, same fit
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**data, "samples": []}))
    assert "no calibration samples" in _refused(["--refit", "--predictor", str(empty)], capsys)


def test_predict_cli_and_json(calibrated: tuple[Predictor, Path], tmp_path: Path) -> None:
    predictor, root = calibrated
    arch = _arch("mbconv", 2)
    arch.save(tmp_path / "arch.yaml")
    env = {**os.environ, "VITNAS_LATENCY_CACHE": str(root / "latency.sqlite")}
    out = subprocess.run([sys.executable, "-m", "nas.latency", "--arch", str(tmp_path / "arch.yaml"), "--predict",
                          "--json", "--threads", str(THREADS), "--resolution", str(RESOLUTION)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["predicted_ms"] == pytest.approx(predictor.predict(arch).ms)
    assert data["threads"] == THREADS and data["machine"] == predictor.machine


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run_cli(latency_main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_predictor_files_exit_2(calibrated: tuple[Predictor, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, root = calibrated
    monkeypatch.setenv("VITNAS_LATENCY_CACHE", str(root / "latency.sqlite"))
    base = ["--preset", "efficientvit_b0", "--predict", "--threads", str(THREADS)]
    # no calibration at this resolution
    assert "no latency predictor calibrated" in _refused([*base, "--resolution", "48"], capsys)
    good = predictor_path(threads=THREADS, resolution=RESOLUTION, precision="fp32")
    # corrupt: truncated JSON
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(good.read_text()[:100])
    assert "not a usable predictor file" in _refused([*base, "--resolution", "32", "--predictor", str(corrupt)],
                                                     capsys)
    # another runtime, another machine, other threads
    for field, value in (("runtime_version", "2020.1"), ("machine", "0123456789"), ("threads", 7)):
        data = json.loads(good.read_text())
        data[field] = value
        foreign = tmp_path / f"{field}.json"
        foreign.write_text(json.dumps(data))
        message = _refused([*base, "--resolution", "32", "--predictor", str(foreign)], capsys)
        assert field in message and "recalibrate" in message


def test_search_predictor_auto_ignores_and_explicit_refuses(calibrated: tuple[Predictor, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.search.cli import search_predictor

    predictor, root = calibrated
    monkeypatch.setenv("VITNAS_LATENCY_CACHE", str(root / "latency.sqlite"))
    assert search_predictor("off", "openvino", THREADS, RESOLUTION, "fp32", False) is None
    assert search_predictor("auto", "openvino", THREADS, RESOLUTION, "fp32", True).unit_ms == predictor.unit_ms
    assert search_predictor("auto", "openvino", THREADS + 1, RESOLUTION, "fp32", False) is None  # other threads
    assert "predictor not used" in capsys.readouterr().err
    data = predictor.to_dict()
    data["runtime_version"] = "2020.1"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(data))
    with pytest.raises(PredictorError):
        search_predictor(str(foreign), "openvino", THREADS, RESOLUTION, "fp32", False)
    with pytest.raises(UserError):
        load_predictor(tmp_path / "missing.json", threads=THREADS, resolution=RESOLUTION)


def test_search_rejects_a_huge_candidate_unbuilt(calibrated: tuple[Predictor, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.data import load_dataset
    from nas.objective import Objective, TrialSettings

    predictor, root = calibrated
    monkeypatch.setenv("VITNAS_LOCK", str(root / "machine.lock"))
    space = load_space_text(SPACE.replace("DEPTHS", "[1, 30]"))  # depth 30: the same units, 15x the blocks
    splits = load_dataset(None, RESOLUTION, limit=200)
    huge = dataclasses.replace(_arch("mbconv", 30), num_classes=splits.num_classes)  # as the search decodes it
    # the budget a third under what the predictor lets through for it (32 px units read a few us each:
    # their regressions say little; the rejection is what this test is about)
    budget = predictor.predict(huge).ms / (1 + predictor.margin) / 1.5
    settings = TrialSettings(budget_ms=budget, target_resolution=RESOLUTION, backend="openvino", threads=THREADS,
                             epochs=1, batch_size=16, lr=1e-3, seed=0, checkpoints=tmp_path / "ckpt",
                             latency_settings=MeasureSettings.quick())
    cache = LatencyCache(tmp_path / "cache.sqlite")
    objective = Objective(space, splits, settings, cache, predictor=predictor)
    study = optuna.create_study(directions=["maximize", "minimize"])
    params, exact = space.encode(huge)
    assert exact
    study.enqueue_trial(params)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    attrs = trial.user_attrs
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert attrs["stop_reason"].startswith("rejected by prediction") and attrs["rejected_by_prediction"] is True
    assert attrs["predicted_ms"] == pytest.approx(predictor.predict(Arch.from_dict(attrs["arch"])).ms)
    assert attrs["predicted_ms"] > budget * (1 + predictor.margin)
    assert trial.values[1] == pytest.approx(attrs["predicted_ms"]) and attrs["trained"] is False
    assert "params_m" not in attrs and "latency" not in attrs  # never built, never measured
    assert attrs["seconds"] < 0.5
    assert len(cache) == 0


def test_unit_labels_from_fused_layer_names() -> None:
    """A compiled node names the torch modules it fused; the first module path decides its unit."""
    from nas.latency._incontext import unit_label

    assert unit_label("Multiply_15729,__module.stem.0.2/aten::hardswish/HSwish") == "stem"
    assert unit_label("__module.stages.2.1.0.mixer.qkv/aten::_convolution/Convolution") == "body2"
    assert unit_label("Multiply_1,__module.stages.3.0.0.0/aten::_convolution/Convolution") == "down3"
    assert unit_label("__module.stages.12.1/aten::add/Add") == "body12"
    assert unit_label("__module.head.fc/aten::linear/Add") == "head"
    assert unit_label("Multiply_15764") is None and unit_label("") is None


@pytest.mark.slow
def test_int8_calibration_is_its_own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INT8 calibrates on NNCF-quantized networks and is keyed by precision: the fp32 file is another."""
    monkeypatch.setenv("VITNAS_LATENCY_CACHE", str(tmp_path / "latency.sqlite"))
    monkeypatch.setenv("VITNAS_LOCK", str(tmp_path / "machine.lock"))
    space = load_space_text(SPACE.replace("DEPTHS", "[1]"))
    predictor, timed = calibrate([space], threads=THREADS, resolution=RESOLUTION, precision="int8", archs=2,
                                 arch_settings=MeasureSettings.quick(), progress=False)
    assert predictor.precision == "int8" and len(timed) == 2
    predictor.save(predictor_path(threads=THREADS, resolution=RESOLUTION, precision="int8"))
    loaded = load_predictor(threads=THREADS, resolution=RESOLUTION, precision="int8")
    assert loaded.predict(timed[0]).ms == pytest.approx(predictor.predict(timed[0]).ms)
    assert predictor.predict(timed[0]).ms > 0
    with pytest.raises(PredictorError, match="no latency predictor calibrated for openvino fp32"):
        load_predictor(threads=THREADS, resolution=RESOLUTION, precision="fp32")


def test_bench_scores_against_anchor_rows(calibrated: tuple[Predictor, Path]) -> None:
    """bench.predictor_bench: with settings.anchor_rows = 4, the first four rows of a space anchor the
    predictor and are left out of both the raw and the anchored metrics (a common 1.3x drift of the
    measured times: the raw predictions miss, the anchored ones match)."""
    from bench.predictor_bench import score

    predictor, _ = calibrated
    archs = sample_archs(load_space_text(SPACE.replace("DEPTHS", "[1, 2, 3]")), 6, 0)
    archs.sort(key=lambda a: a.hash not in predictor.archs)  # the 4 calibration archs anchor; 2 held out are scored
    rows = [{"space": "default", "arch_hash": a.hash, "all_attention": False, "arch": a.to_dict(),
             "runs": [{"ms": 1.3 * predictor.predict(a).ms, "loaded": False, "others_cpu": 0.0}]} for a in archs]
    section = {"settings": {"anchor_rows": 4}, "rows": rows}
    score(section, predictor)
    summary = section["summary"]
    assert [r["anchor"] for r in rows] == [True] * 4 + [False] * 2
    assert summary["default"]["archs"] == 2 and summary["default"]["within_10"] == 0.0
    assert summary["anchored"]["default"]["archs"] == 2 and summary["anchored"]["default"]["within_10"] == 1.0
    assert summary["anchored"]["anchor"]["factor"] == pytest.approx(1.25)  # 1.3 clamped to ANCHOR_BOUNDS


def test_bench_reference_rule() -> None:
    """bench.predictor_bench: a row's reference is its fastest quiet run ("fastest", new sections) or
    their mean ("mean", sections made before the option); loaded runs count only when all are loaded."""
    from bench.predictor_bench import _reference

    runs = [{"ms": 1.2, "loaded": False}, {"ms": 0.8, "loaded": True}, {"ms": 1.0, "loaded": False}]
    fastest, mean = {"runs": runs}, {"runs": runs}
    _reference(fastest, "fastest")
    _reference(mean, "mean")
    assert (fastest["measured_ms"], fastest["loaded"]) == (1.0, False)
    assert mean["measured_ms"] == pytest.approx(1.1)
    all_loaded = {"runs": [{"ms": 1.2, "loaded": True}, {"ms": 0.9, "loaded": True}]}
    _reference(all_loaded, "fastest")
    assert (all_loaded["measured_ms"], all_loaded["loaded"]) == (0.9, True)


def test_reference_bench_halves() -> None:
    """bench.reference_bench: with the sentinel steady, the sentinel-corrected estimators equal the plain
    ones; an arch whose second half runs 1.5x slow in every round moves by 50% under `fastest`, and a
    sentinel slowed alike cancels it."""
    from bench.reference_bench import SENTINEL, halves_agreement

    def trace(second_half: float) -> list[dict[str, Any]]:
        """Four rounds of sentinel, arch, sentinel; the last two rounds all `second_half` x slower."""
        steps = []
        for r in range(4):
            slow = second_half if r >= 2 else 1.0
            steps += [{"name": SENTINEL, "ms": 2.0 * slow}, {"name": 0, "ms": (1.0 + 0.01 * r) * slow},
                      {"name": SENTINEL, "ms": 2.0 * slow}]
        return steps

    steady = halves_agreement(trace(1.0))
    assert steady["fastest"]["median_abs"] == pytest.approx(steady["sentinel_fastest"]["median_abs"]) \
        == pytest.approx(0.02 / 1.0)
    phase = halves_agreement(trace(1.5))
    assert phase["fastest"]["median_abs"] == pytest.approx(1.5 * 1.02 - 1.0)
    assert phase["sentinel_fastest"]["median_abs"] == pytest.approx(0.02)
