import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.mixers import mixer_names
from nas.models import build_model, count_macs, registered_mixers
from nas.presets import list_presets, load_preset
from tests.conftest import MIXERS, tiny_arch
from tests.export_check import assert_close, onnx_logits, openvino_logits, torch_logits


def test_every_catalogue_mixer_is_registered() -> None:
    assert set(registered_mixers()) == set(mixer_names()) >= set(MIXERS)


# Tiny models at 32 px, presets at 64 px (the share of each op kind barely depends on resolution).
MAC_CASES = [(f"tiny-{m}", m, 32) for m in MIXERS] + [(p, p, 64) for p in list_presets()]
MAC_GATES_SHARE = 0.02  # measured at most 0.8% (tiny-catm), 0.5% for the presets (casvit_xs)


@pytest.mark.parametrize(("case", "source", "resolution"), MAC_CASES, ids=[c[0] for c in MAC_CASES])
def test_mac_counter_agrees_with_flop_counter(case: str, source: str, resolution: int) -> None:
    """nas.models.counting (thop + inline products) against torch's FlopCounterMode.

    Convolutions, Linears and matmuls/einsums agree exactly (FlopCounterMode counts 2 FLOPs per MAC).
    The rest of the count is the gates, one multiply per element of a product of two activations,
    which FlopCounterMode does not see (it counts no elementwise op): in every gated or attention
    mixer, none in MBConv.
    """
    arch = tiny_arch(source) if case.startswith("tiny-") else load_preset(source)
    model = build_model(arch).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, resolution, resolution))
    reference = counter.get_total_flops() // 2
    assert count_macs(model, resolution, gates=False) == reference
    gates = count_macs(model, resolution) - reference
    assert (gates > 0) == (source != "mbconv")
    assert gates <= MAC_GATES_SHARE * reference, gates / reference


@pytest.mark.parametrize("resolution", [32, 64])
def test_forward_backward_and_shape(mixer: str, resolution: int) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_arch(mixer, num_classes=7)).train()
    x = torch.randn(2, 3, resolution, resolution)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_eval_output_is_deterministic(mixer: str) -> None:
    model = build_model(tiny_arch(mixer)).eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("resolution", [32, 64])
def test_onnx_runtime_matches_pytorch(mixer: str, resolution: int, tmp_path) -> None:
    torch.manual_seed(1)
    model = build_model(tiny_arch(mixer))
    assert_close(onnx_logits(model, resolution, tmp_path), torch_logits(model, resolution))


@pytest.mark.parametrize("resolution", [32, 64])
def test_openvino_matches_pytorch(mixer: str, resolution: int) -> None:
    torch.manual_seed(2)
    model = build_model(tiny_arch(mixer))
    assert_close(openvino_logits(model, resolution), torch_logits(model, resolution))


@pytest.mark.parametrize("head", ["cas", "vit"])
def test_other_heads(head: str) -> None:
    model = build_model(tiny_arch("catm", head=head))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_glsra_selection_survives_ties_in_export() -> None:
    """Zero-initialised guide: every score ties; all runtimes must still pick the same tokens."""
    torch.manual_seed(3)
    model = build_model(tiny_arch("glsra"))
    for module in model.modules():
        if module.__class__.__name__ == "CAMGuide":
            torch.nn.init.zeros_(module.cam.weight)
            torch.nn.init.zeros_(module.cam.bias)
    assert_close(openvino_logits(model, 64), torch_logits(model, 64))
