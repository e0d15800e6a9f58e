"""Precision is a setting: pinned fp32 on every CPU, bf16 checked where the CPU has it, int8 explicit,
the precision and the machine in every record and cache key, one-line errors for what cannot run.

The bf16 tolerances come from a measurement (`python -m bench.precision_bench`, its "numerics"
part, in bench/results/precision_intel-xeon-0b7928.json, Intel Xeon with AMX): over the tiny
models of every mixer (32 and 64 px, 16 inputs) and every preset (224 px), OpenVINO at bf16
differed from PyTorch fp32 by at most 6.3e-3 of the logits' scale for convolution / CATM /
LiteMLA models and 3.5e-2 for models with CageViT token selection (bf16 noise in the CAM scores
changes which tokens are picked), with top-1 agreement 1.0 and 0.75 (random-init GLSRA,
near-tied logits). The limits below are about 3x those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from nas.errors import BackendUnavailable, UserError
from nas.export import convert_openvino, example_input, save_openvino
from nas.latency import (
    CacheKey,
    LatencyCache,
    MeasureSettings,
    check_precision,
    compile_openvino,
    describe_machine,
    lookup,
    measure,
    measure_ir,
    supported_precisions,
)
from nas.models import build_model
from nas.quantization import quantize_openvino
from tests.conftest import MIXERS, tiny_arch

REPO = Path(__file__).resolve().parent.parent
FAST = MeasureSettings.quick()
HAS_BF16 = "bf16" in supported_precisions("openvino")
NO_BF16 = "this CPU has no bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lack BF16): nothing to check"
BF16_RTOL = {"glsra": 0.1}  # measured max 3.5e-2: token selection flips under bf16
BF16_RTOL_DEFAULT = 0.02  # measured max 6.3e-3
BF16_MIN_AGREEMENT = {"glsra": 0.5}  # measured 0.75 on 16 inputs (random init, near-tied logits)
BF16_MIN_AGREEMENT_DEFAULT = 0.9  # measured 1.0


@pytest.fixture(autouse=True)
def _private_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("VITNAS_LOCK", str(tmp_path / "machine.lock"))
    monkeypatch.setenv("VITNAS_LATENCY_CACHE", str(tmp_path / "default-cache.jsonl"))


def _relative_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max()) / max(1.0, float(np.abs(expected).max()))


def _openvino_vs_torch(mixer: str, resolution: int, precision: str, n: int = 16) -> tuple[float, float]:
    torch.manual_seed(2)
    model = build_model(tiny_arch(mixer)).eval()
    images = torch.randn(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(images).numpy()
    compiled = compile_openvino(convert_openvino(model, resolution), threads=1, precision=precision)
    out = np.concatenate([compiled(image[None].numpy())[0] for image in images])
    return _relative_diff(out, reference), float((out.argmax(-1) == reference.argmax(-1)).mean())


def test_fp32_is_pinned_in_the_compiled_model() -> None:
    model = build_model(tiny_arch("mbconv"))
    compiled = compile_openvino(convert_openvino(model, 32))
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    if HAS_BF16:
        bf16 = compile_openvino(convert_openvino(model, 32), precision="bf16")
        assert str(bf16.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"


@pytest.mark.parametrize("mixer", MIXERS)
def test_fp32_matches_pytorch_on_every_cpu(mixer: str) -> None:
    diff, agreement = _openvino_vs_torch(mixer, 64, "fp32")
    assert diff <= 1e-4 and agreement == 1.0  # measured <= 3e-7 on both CPU kinds


@pytest.mark.skipif(not HAS_BF16, reason=NO_BF16)
@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("mixer", MIXERS)
def test_bf16_within_measured_tolerance(mixer: str, resolution: int) -> None:
    diff, agreement = _openvino_vs_torch(mixer, resolution, "bf16")
    assert diff <= BF16_RTOL.get(mixer, BF16_RTOL_DEFAULT), diff
    assert agreement >= BF16_MIN_AGREEMENT.get(mixer, BF16_MIN_AGREEMENT_DEFAULT), agreement
    assert diff > 1e-5, "bf16 gave fp32-exact outputs: the hint was not applied"


def test_unknown_and_unsupported_precisions_are_user_errors() -> None:
    with pytest.raises(UserError, match="allowed: fp32, bf16, fp16, int8"):
        check_precision("fp8", "openvino")
    with pytest.raises(BackendUnavailable, match="onnxruntime.*supported here: fp32"):
        check_precision("bf16", "onnxruntime")
    with pytest.raises(BackendUnavailable):
        check_precision("int8", "torch")
    assert supported_precisions("openvino")[0] == "fp32"


def test_cli_unsupported_precision_is_one_line_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "nas.latency", "--preset", "casvit_xs", "--backend",
                             "onnxruntime", "--precision", "bf16"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=os.environ)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "precision 'bf16' is not supported by backend 'onnxruntime'" in lines[0], lines


def test_precision_and_machine_are_part_of_the_record_and_the_key(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "cache.jsonl")
    model = build_model(tiny_arch("mbconv"))
    stats = measure(model, 32, threads=1, cache=cache, key="tiny", settings=FAST)
    assert stats.precision == "fp32" and stats.machine == describe_machine()["fingerprint"]
    assert lookup(cache, "tiny", 32, threads=1) == stats
    assert lookup(cache, "tiny", 32, threads=1, precision="int8") is None  # never shared across precisions
    base = CacheKey("k", "openvino", "cpu", 224, 2, "1", "fp32", "m1")
    assert base.as_str() != CacheKey("k", "openvino", "cpu", 224, 2, "1", "bf16", "m1").as_str()
    assert base.as_str() != CacheKey("k", "openvino", "cpu", 224, 2, "1", "fp32", "m2").as_str()


def test_int8_measurement_and_int8_files(tmp_path: Path) -> None:
    model = build_model(tiny_arch("catm")).eval()
    stats = measure(model, 32, threads=1, precision="int8", settings=FAST)
    assert stats.precision == "int8" and stats.ms > 0
    float_ir = save_openvino(convert_openvino(model, 32), tmp_path / "fp32.xml")
    calibration = [example_input(32, seed=s).numpy() for s in range(4)]
    int8_ir = save_openvino(quantize_openvino(convert_openvino(model, 32), calibration), tmp_path / "int8.xml")
    assert measure_ir(int8_ir, threads=1, precision="int8", settings=FAST).precision == "int8"
    with pytest.raises(UserError, match="an INT8 model .* --precision int8"):
        measure_ir(int8_ir, threads=1, settings=FAST)
    with pytest.raises(UserError, match="not an INT8 model"):
        measure_ir(float_ir, threads=1, precision="int8", settings=FAST)


def test_int8_float_parts_run_at_the_fastest_native_float_precision(tmp_path: Path) -> None:
    """An INT8 model's float parts run in bf16 where the plugin has BF16 (AMX: measured faster,
    bench/int8_amx.py), in f32 on CPUs without it (AVX2-only); the search's INT8 latency, an INT8 file's
    timing and compress's INT8 accuracy compile with that hint, and the INT8 cache keys name it."""
    from nas.latency._measure import _model_key
    from nas.latency._precision import int8_float_hint, openvino_precision_config

    assert int8_float_hint(("FP32", "BF16", "FP16", "INT8", "BIN", "EXPORT_IMPORT")) == "bf16"  # AMX Xeon
    assert int8_float_hint(("FP32", "FP16", "INT8", "BIN")) == "f32"  # AVX2-only (AMD EPYC): no BF16
    expected = "bf16" if HAS_BF16 else "f32"
    assert int8_float_hint() == expected
    assert openvino_precision_config("int8") == {"INFERENCE_PRECISION_HINT": expected}
    assert openvino_precision_config("fp32") == {"INFERENCE_PRECISION_HINT": "f32"}
    model = build_model(tiny_arch("catm")).eval()
    calibration = [example_input(32, seed=s).numpy() for s in range(4)]
    int8 = quantize_openvino(convert_openvino(model, 32), calibration)
    compiled = compile_openvino(int8, threads=1, precision="int8")
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == {
        "bf16": "<Type: 'bfloat16'>", "f32": "<Type: 'float32'>"}[expected]
    assert _model_key("arch", 224, "openvino", 2, "int8").key.endswith(f"+float-{expected}")
    assert "+float-" not in _model_key("arch", 224, "openvino", 2, "fp32").key
    cache = LatencyCache(tmp_path / "cache.jsonl")
    ir = save_openvino(int8, tmp_path / "int8.xml")
    stats = measure_ir(ir, threads=1, precision="int8", settings=FAST, cache=cache)
    assert stats.key.endswith(f"+float-{expected}")


def test_an_isa_cap_takes_bf16_away_and_int8_still_runs(tmp_path: Path) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 (emulating an AVX2-only CPU): OpenVINO still lists BF16, but a bf16 hint
    no longer compiles; the project drops BF16 from the capabilities, times INT8 with f32 float parts,
    refuses --precision bf16 in one line, and the cap gives the machine another fingerprint."""
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump(tiny_arch("catm").to_dict()))
    env = {**os.environ, "VITNAS_LOCK": str(tmp_path / "lock"), "ONEDNN_MAX_CPU_ISA": "AVX2"}

    def latency(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nas.latency", "--arch", str(arch), "--resolution", "32",
                               "--quick", "--no-cache", "--threads", "1", "--json", *flags], cwd=REPO,
                              capture_output=True, text=True, timeout=300, env=env)

    result = latency("--precision", "int8")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    machine = record["machine_description"]
    assert record["precision"] == "int8" and record["estimate_ms"] > 0
    assert machine["onednn_isa_cap"] == "AVX2" and "BF16" not in machine["openvino_capabilities"]
    assert machine["fingerprint"] != describe_machine()["fingerprint"]
    assert record["key"].endswith("+float-f32")
    refused = latency("--precision", "bf16")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "bf16" in refused.stderr


def test_cli_states_precision_and_cpu(tmp_path: Path) -> None:
    model = build_model(tiny_arch("mbconv")).eval()
    ir = save_openvino(convert_openvino(model, 32), tmp_path / "m.xml")
    result = subprocess.run([sys.executable, "-m", "nas.latency", "--ir", str(ir), "--quick", "--no-cache",
                             "--threads", "1", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "VITNAS_LOCK": str(tmp_path / "lock")})
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["precision"] == "fp32"
    assert record["machine_description"]["cpu"] and "isa" in record["machine_description"]


def test_a_study_refuses_a_worker_on_another_machine() -> None:
    from nas.search import check_machine

    study = optuna.create_study(directions=["maximize", "minimize"])
    check_machine(study)  # first worker records its machine
    check_machine(study)  # same machine: fine
    other = {**describe_machine(), "cpu": "AMD EPYC 7B13", "isa": ["avx2", "fma"], "fingerprint": "0000000000"}
    study.set_user_attr("machine", other)
    with pytest.raises(UserError, match="AMD EPYC 7B13.*cannot share one front"):
        check_machine(study)


def test_resume_on_another_machine_or_precision_is_refused(tmp_path: Path) -> None:
    from nas.search import check_resume

    config = {"precision": "fp32", "machine": describe_machine()["fingerprint"], "budget_ms": 5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "machine": "0000000000"}))
    with pytest.raises(UserError, match="measured on another machine"):
        check_resume(tmp_path, config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "precision": "bf16"}))
    with pytest.raises(UserError, match="precision differs.*'bf16' -> 'fp32'"):
        check_resume(tmp_path, config)
