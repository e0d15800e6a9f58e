"""Pruning of every block kind: MBConv expansions, CATM stage widths, LiteMLA heads, GLSRA stage widths.

Real torch-pruning on tiny models (32 px); each pruned model is exported to ONNX and OpenVINO and
checked against PyTorch; the LiteMLA head bookkeeping is checked against the tensors and numerically.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from compress._metrics import count_params
from compress._units import prune_inner
from compress.prune import ROUND_TO, block_params, prune_model
from nas.models import build_model
from nas.models.cage import CageStage
from nas.models.cas import CATM
from nas.models.efficientvit import LITEMLA_PRUNING, LiteMLA
from tests.conftest import tiny_arch
from tests.export_check import assert_close, onnx_logits, openvino_logits, torch_logits

RESOLUTION = 32


def _of(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def _mixer_stage_hidden(model: nn.Module) -> list[int]:
    """Expanded widths of the MBConvs of the mixer stage (the tiny arch's second stage)."""
    return [m.out_channels for name, m in model.stages[1].named_modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels and m.kernel_size == (3, 3)]


def check_litemla_bookkeeping(attn: LiteMLA) -> None:
    """Heads x head_dim match every tensor of the module."""
    heads, d = attn.heads, attn.head_dim
    assert attn.qkv.out_channels == 3 * heads * d == attn.qkv.weight.shape[0]
    for dw, grouped in attn.aggregators:
        assert dw.out_channels == dw.in_channels == dw.groups == 3 * heads * d == dw.weight.shape[0]
        assert grouped.groups == 3 * heads and grouped.in_channels == grouped.out_channels == 3 * heads * d
        assert grouped.weight.shape == (3 * heads * d, d, 1, 1)
    assert attn.proj[0].in_channels == heads * d * (1 + len(attn.aggregators)) == attn.proj[0].weight.shape[1]


def check_exports(model: nn.Module, tmp: Path) -> None:
    reference = torch_logits(model, RESOLUTION)
    assert_close(openvino_logits(model, RESOLUTION), reference)
    assert_close(onnx_logits(model, RESOLUTION, tmp), reference)


@pytest.mark.parametrize("mixer", ["mbconv", "catm", "litemla", "glsra"])
def test_each_block_kind_is_pruned_exported_and_verified(mixer: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = build_model(tiny_arch(mixer)).eval()
    model = copy.deepcopy(original)
    prune_model(model, RESOLUTION, ratio=0.5)
    assert count_params(model) < count_params(original)
    before, after = block_params(original), block_params(model)
    assert after["stages.1"]["params"] < before["stages.1"]["params"]
    assert after["stages.0"]["params"] < before["stages.0"]["params"]  # the conv stage before it too

    if mixer == "mbconv":
        assert all(a < b for a, b in zip(_mixer_stage_hidden(model), _mixer_stage_hidden(original), strict=True))
    elif mixer == "catm":
        for pruned, whole in zip(_of(model, CATM), _of(original, CATM), strict=True):
            width = pruned.proj.out_channels
            assert width < whole.proj.out_channels and width % ROUND_TO == 0
            assert pruned.qkv.out_channels == 3 * width and pruned.dwc.out_channels == width
            assert pruned.q_gate[1].fc.weight.shape[:2] == (width, width)
    elif mixer == "litemla":
        for pruned, whole in zip(_of(model, LiteMLA), _of(original, LiteMLA), strict=True):
            assert pruned.heads < whole.heads and pruned.head_dim == whole.head_dim  # whole heads removed
            assert pruned.proj[0].out_channels < whole.proj[0].out_channels  # and the stage width
            check_litemla_bookkeeping(pruned)
        assert all(row["heads"] == 2 for row in after.values() if row.get("kind") == "LiteMLA")
    else:
        for pruned, whole in zip(_of(model, CageStage), _of(original, CageStage), strict=True):
            width, heads = pruned.pos.out_channels, pruned.fusion.heads
            assert width < whole.pos.out_channels and width % ROUND_TO == 0 and width % heads == 0
            assert pruned.fusion.queries.shape[1] == pruned.fusion.embedding.shape[2] == width
            for block, whole_block in zip(pruned.blocks, whole.blocks, strict=True):
                assert block.attn.kv.out_features == 2 * width and block.attn.scale == (width // heads) ** -0.5
                assert block.mlp[0].out_features < whole_block.mlp[0].out_features

    for resolution in (48, 64):  # other resolutions still run
        assert model(torch.randn(1, 3, resolution, resolution)).shape == (1, 10)
    check_exports(model, tmp_path)


def test_litemla_head_removal_is_the_head_zeroed() -> None:
    """Removing head 1 = the unpruned module with head 1's inputs to the projection zeroed."""
    torch.manual_seed(0)
    attn = LiteMLA(32, head_dim=8).eval()  # 4 heads, one aggregation scale
    with torch.no_grad():
        attn.qkv.weight[24:48] *= 1e-3  # head 1 (channels 24..47 of qkv) is the weakest
        attn.proj[1].running_mean.normal_()
        attn.proj[1].running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(attn)
    with torch.no_grad():
        for segment in range(2):  # its d channels in the plain and in the aggregated part
            reference.proj[0].weight[:, segment * 32 + 8: segment * 32 + 16] = 0
    prune_inner(attn, LITEMLA_PRUNING.inner[0], 0.75, {}, ROUND_TO)
    assert attn.heads == 3
    check_litemla_bookkeeping(attn)
    x = torch.randn(2, 32, 7, 9)
    torch.testing.assert_close(attn(x), reference(x), rtol=1e-4, atol=1e-5)


def test_latency_target_prunes_heads_step_by_step() -> None:
    """--target-ms's loop with the new kinds: each step removes more heads/widths until under the target."""
    model = build_model(tiny_arch("litemla")).eval()
    start = count_params(model)
    history = prune_model(model, RESOLUTION, target_ms=0.5, latency=lambda m: count_params(m) / start,
                          step_ratio=0.2)
    assert 1 < len(history) < 5 and history[-1].latency_ms <= 0.5
    assert [h.params for h in history] == sorted((h.params for h in history), reverse=True)
    assert all(attn.heads < 4 for attn in _of(model, LiteMLA))
    for attn in _of(model, LiteMLA):
        check_litemla_bookkeeping(attn)
