"""MBConv stages (MobileNetV2 inverted residuals, as in EfficientViT's conv stages)."""

from __future__ import annotations

from torch import nn

from nas.arch import StageSpec
from nas.models.blocks import MBConv, Residual
from nas.models.registry import register_mixer


# Pruning: torch-pruning's graph follows MBConv as is (no rule): the expanded (hidden) channels and the
# stage's residual width.
# Quantization: rules in nas/quant_rules.yaml (mbconv).
@register_mixer("mbconv")
def mbconv_stage(spec: StageSpec) -> nn.Module:
    return nn.Sequential(*(Residual(MBConv(spec.width, spec.width, expand=spec.expand)) for _ in range(spec.depth)))
