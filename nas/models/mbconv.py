"""MBConv stages (MobileNetV2 inverted residuals, as in EfficientViT's conv stages)."""

from __future__ import annotations

from torch import nn

from nas.arch import StageSpec
from nas.models.blocks import MBConv, Residual
from nas.models.registry import register_mixer


# Pruning: the expanded (hidden) channels; MBConv-only stages also their residual width.
# Quantization: rules in nas/quant_rules.yaml (mbconv).
@register_mixer("mbconv")
def mbconv_stage(spec: StageSpec) -> nn.Module:
    return nn.Sequential(*(Residual(MBConv(spec.width, spec.width, expand=spec.expand)) for _ in range(spec.depth)))
