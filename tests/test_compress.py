"""compress: prune, quantize and export a tiny model of every block kind, end to end, for real.

Real torch-pruning, NNCF, OpenVINO and ONNX Runtime; tiny models at 32 px; quick latency settings.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from compress._metrics import count_params
from compress._runtime import compare, onnx_logits, openvino_logits, torch_logits
from compress._target import Target, load_module, load_target, read_json
from compress.export import export_files, export_target
from compress.prune import ROUND_TO, prune_model, prune_target
from compress.quantize import quantize_target
from nas.arch import Arch, StageSpec
from nas.data import load_dataset
from nas.latency import MeasureSettings, count_fake_quantize, supported_precisions
from nas.models import build_model
from nas.runs import save_winner
from nas.train import train_proxy
from tests.conftest import MIXERS, tiny_arch

RESOLUTION = 32
QUICK = MeasureSettings.quick()
ROOT = Path(__file__).resolve().parent.parent


def make_run(directory: Path, arch: Arch, train: bool = True) -> Path:
    """A search-run directory with one winner: a tiny arch, briefly trained on bundled MNIST."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"data": None, "seed": 0, "limit": 800, "proxy_resolution": RESOLUTION,
              "target_resolution": RESOLUTION, "backend": "openvino", "threads": 2, "num_classes": 10, "budget_ms": 5}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    model = build_model(arch)
    accuracy = 0.0
    if train:
        # small batches: enough steps for clear logit margins, so INT8-vs-FP32 agreement means something
        accuracy = train_proxy(model, load_dataset(None, RESOLUTION, limit=800), epochs=2, batch_size=16, lr=3e-3,
                               threads=1).accuracy
    save_winner(directory, 1, arch, model.state_dict(), {"accuracy": accuracy})
    return directory


def layer_widths(model: nn.Module) -> dict[str, int]:
    return {name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def hybrid_arch() -> Arch:
    """All four block kinds in one tiny network, so one training run serves the end-to-end test."""
    return Arch(
        stages=(
            StageSpec("mbconv", 1, 16, expand=2, downsample="mbconv"),
            StageSpec("catm", 1, 24, expand=2, downsample="conv"),
            StageSpec("litemla", 1, 32, expand=2, downsample="none", head_dim=8),
            StageSpec("glsra", 1, 32, expand=2, downsample="none", head_dim=8, fusion_tokens=2),
        ),
        stem_kind="dsconv", stem_width=8, stem_depth=1, head_kind="evit", head_widths=(32, 48), num_classes=10,
        name="tiny-hybrid",
    )


@pytest.mark.parametrize("mixer", MIXERS)
def test_prune_each_block_kind(mixer: str) -> None:
    """Fewer params, pruned widths multiples of 8, classifier kept, still runs and exports to ONNX/IR."""
    original = build_model(tiny_arch(mixer)).eval()
    model = copy.deepcopy(original)
    prune_model(model, RESOLUTION, ratio=0.5)
    assert count_params(model) < count_params(original)
    before, after = layer_widths(original), layer_widths(model)
    changed = {name: width for name, width in after.items() if width != before[name]}
    assert changed and all(width % ROUND_TO == 0 for width in changed.values()), changed
    classifier = list(before)[-1]
    assert after[classifier] == before[classifier] == 10
    images = torch.randn(4, 3, RESOLUTION, RESOLUTION)
    reference = torch_logits(model, images)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_files(model, Path(tmp), "pruned", RESOLUTION)
        for logits in (openvino_logits(paths["xml"], images), onnx_logits(paths["onnx"], images)):
            assert compare(reference, logits)["max_abs_diff"] < 1e-3


def test_prune_quantize_export_end_to_end(tmp_path: Path) -> None:
    target: Target = load_target(make_run(tmp_path / "run", hybrid_arch()), None)
    original = target.fp32_model()

    pruned_metrics = prune_target(target, ratio=0.5, epochs=1, settings=QUICK, quiet=True)
    assert pruned_metrics["after"]["params"] < pruned_metrics["before"]["params"]
    assert pruned_metrics["after"]["macs"] < pruned_metrics["before"]["macs"]
    pruned = load_module(target.pruned_path())  # reloads as a whole module
    assert count_params(pruned) == pruned_metrics["after"]["params"] < count_params(original)

    # A generous --max-drop: this ~50%-accurate tiny model flips a point on 100 images by chance, and
    # accuracy control may then revert every op (quantize_target refuses that in one line); here the plain
    # NNCF path is under test.
    q = quantize_target(target, calibration=32, val_limit=100, max_drop=100.0, quiet=True)
    assert q["source"] == "pruned"
    # the drop budget counts from the unpruned model: pruning's val cost comes off --max-drop
    assert 0.0 <= q["pruning_cost_points"] <= 100.0 and 0.0 <= q["unpruned_fp32_accuracy"] <= 1.0
    assert q["int8_budget_points"] == pytest.approx(100.0 - q["pruning_cost_points"])
    import openvino as ov

    int8_ir = ov.Core().read_model(str(target.int8_dir / "model.xml"))
    assert count_fake_quantize(int8_ir) > 0
    # LiteMLA and GLSRA attention cores, CageViT selection stay float
    kept = " ".join(q["ignored_ops"])
    assert all(kind in kept for kind in ("MatMul", "Divide", "Softmax", "TopK", "GatherElements")), kept

    metrics = export_target(target, val_limit=64, rounds=1, settings=QUICK, quiet=True)
    variants = metrics["variants"]
    assert set(variants) == {"fp32", "pruned", "int8"}
    for name in ("fp32", "pruned"):
        for kind in ("xml", "onnx"):
            info = variants[name]["files"][kind]
            assert Path(info["path"]).is_file()
            assert info["finite"] and info["max_abs_diff"] < 1e-3, (name, kind, info)
            assert info["top1_agreement"] >= 0.98, (name, kind, info)
            assert info["latency"]["estimate_ms"] > 0
    # a ~40%-accurate 2-epoch model has small logit margins: measured 0.75-0.89 over runs (48-57 of 64
    # images); a broken quantization (wrong scales, a reverted input conversion) agrees near chance, 0.1
    assert variants["int8"]["files"]["xml"]["top1_agreement"] >= 0.6
    assert variants["pruned"]["params"] < variants["fp32"]["params"]

    assert variants["int8"]["files"]["xml"]["precision"] == "int8"
    assert variants["fp32"]["files"]["xml"]["latency"]["precision"] == "fp32"
    has_bf16 = "bf16" in supported_precisions("openvino")
    if has_bf16:  # the same FP32 IR again at bf16: agreement from measurement (bf16 top-1 agreement 1.0 there)
        info = variants["fp32"]["files"]["xml@bf16"]
        assert info["precision"] == "bf16" == info["latency"]["precision"]
        assert info["top1_agreement"] >= 0.9 and info["max_abs_diff"] > 1e-5, info

    report = read_json(target.run_dir / "compress" / "report.json")
    entry = report["winners"][target.winner.directory.name]
    expected = {"fp32", "pruned", "int8"} | ({"fp32 @bf16", "pruned @bf16"} if has_bf16 else set())
    assert set(entry["variants"]) == expected and "fp32/int8" in entry["speedups"]
    assert ("fp32 @bf16/int8" in entry["speedups"]) == has_bf16
    markdown = (target.run_dir / "compress" / "report.md").read_text()
    assert markdown.count("| int8 | int8 |") == 1 and report["machine"]["cpu"] in markdown


def test_prune_to_latency_target_stops_when_under() -> None:
    model = build_model(tiny_arch("mbconv")).eval()
    latencies = iter([3.0, 2.0, 1.0, 0.5])
    history = prune_model(model, RESOLUTION, target_ms=1.5, latency=lambda m: next(latencies), step_ratio=0.2)
    assert [h.step for h in history] == [1, 2, 3] and history[-1].latency_ms == 1.0
    assert history[0].params > history[-1].params


def _cli(module: str, *args: str, env_results: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VITNAS_RESULTS": str(env_results)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)


def _in_process(module: str, *args: str, capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    """The CLI's `main` under `run_cli`, as `python -m` runs it (start-up would dominate a real process)."""
    import importlib

    from nas.errors import run_cli

    capsys.readouterr()
    code = run_cli(importlib.import_module(module).main, list(args))
    return subprocess.CompletedProcess(module, code, "", capsys.readouterr().err)


@pytest.mark.parametrize("module", ["compress.prune", "compress.quantize", "compress.export"])
def test_cli_missing_run_is_one_line_exit_2(tmp_path: Path, module: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = _cli(module, env_results=tmp_path / "empty")  # the real process (its default results/ is empty)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no search run" in lines[0]
    result = _in_process(module, "--run", str(tmp_path / "nope"), capsys=capsys)
    assert result.returncode == 2 and "no such run" in result.stderr and result.stderr.count("\n") == 1


def test_cli_missing_winner_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", tiny_arch("mbconv"), train=False)
    result = _in_process("compress.quantize", "--run", str(run), "--winner", "7", capsys=capsys)
    assert result.returncode == 2 and "--winner 7" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text("data: null\n")
    result = _in_process("compress.prune", "--run", str(empty), "--ratio", "0.3", capsys=capsys)
    assert result.returncode == 2 and "no winners" in result.stderr
    result = _in_process("compress.prune", "--run", str(run), capsys=capsys)  # neither --ratio nor --target-ms
    assert result.returncode == 2 and "--ratio" in result.stderr
