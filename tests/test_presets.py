import subprocess
import sys

import pytest
import torch

from nas.arch import Arch
from nas.models import build_model, count_macs
from nas.presets import list_presets, load_preset, published_counts
from tests.export_check import assert_close, onnx_logits, openvino_logits, torch_logits

PRESETS = list_presets()
DEFAULT_RUN = {"casvit_xs", "efficientvit_b0", "cagevit"}  # the smallest of each family; the rest: -m slow
BY_FAMILY = [n if n in DEFAULT_RUN else pytest.param(n, marks=pytest.mark.slow) for n in PRESETS]
EXPECTED = {"casvit_xs", "casvit_s", "casvit_m", "casvit_t", "efficientvit_b0", "efficientvit_b1",
            "efficientvit_b2", "cagevit"}


def test_all_published_variants_are_there() -> None:
    assert set(PRESETS) == EXPECTED


@pytest.mark.parametrize("name", PRESETS)
def test_parameter_count_matches_publication(name: str) -> None:
    published = published_counts()
    tolerance = published["tolerance"]
    model = build_model(load_preset(name))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(published[name]["params_m"], rel=tolerance["params"])
    if "macs_g" in published[name]:
        assert count_macs(model, 224) / 1e9 == pytest.approx(published[name]["macs_g"], rel=tolerance["macs"])


@pytest.mark.parametrize("name", BY_FAMILY)
def test_forward_backward_two_resolutions(name: str) -> None:
    model = build_model(load_preset(name, num_classes=10)).train()
    for resolution in (64, 96):
        out = model(torch.randn(2, 3, resolution, resolution))
        assert out.shape == (2, 10)
        out.sum().backward()
        model.zero_grad()


@pytest.mark.parametrize("name", BY_FAMILY)
def test_preset_exports_to_onnx_and_openvino(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(load_preset(name))
    reference = torch_logits(model, 224)
    assert_close(onnx_logits(model, 224, tmp_path), reference)
    assert_close(openvino_logits(model, 224), reference)


def test_preset_round_trips_yaml() -> None:
    arch = load_preset("efficientvit_b1")
    assert Arch.from_yaml(arch.to_yaml()) == arch


def test_models_cli_prints_params_and_macs() -> None:
    out = subprocess.run([sys.executable, "-m", "nas.models", "--preset", "efficientvit_b0"],
                         capture_output=True, text=True, check=True)
    assert "3.41" in out.stdout and "params" in out.stdout and "MACs" in out.stdout


def test_models_cli_unknown_preset_is_one_line_exit_2() -> None:
    out = subprocess.run([sys.executable, "-m", "nas.models", "--preset", "nope"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "unknown preset 'nope'" in out.stderr and "efficientvit_b0" in out.stderr
