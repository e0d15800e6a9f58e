"""Assemble stem, stages (one mixer family per stage, each with its own downsampling) and head.

The stage bodies come from the mixer registry; the family files register themselves.
"""

from __future__ import annotations

from torch import Tensor, nn

from nas.arch import STEM_STRIDES, Arch, StageSpec
from nas.mixers import mixer_info
from nas.models.blocks import CasHead, ConvBN, EfficientViTHead, MBConv, VitHead, build_stem
from nas.models.registry import mixer_builder


def build_downsample(spec: StageSpec, cin: int) -> nn.Module:
    """The stride-2 entry of a stage.

    conv:   CAS-ViT, 3x3 s2 conv (bias) + BN, no activation.
    mbconv: EfficientViT, MBConv s2 without residual; fewer-norm unless the mixer asks for full
            norm (`MixerInfo.full_norm_downsample`, as EfficientViT before its MBConv stages).
    none:   no resolution change (a 1x1 conv-BN if the width changes).
    """
    if spec.downsample == "conv":
        return ConvBN(cin, spec.width, 3, 2, bias=True)
    if spec.downsample == "mbconv":
        fewer_norm = not mixer_info(spec.mixer).full_norm_downsample
        return MBConv(cin, spec.width, stride=2, expand=spec.expand, fewer_norm=fewer_norm)
    if spec.downsample == "none":
        return nn.Identity() if cin == spec.width else ConvBN(cin, spec.width, 1)
    raise ValueError(f"unknown downsample {spec.downsample!r}")


def build_head(arch: Arch, cin: int) -> nn.Module:
    if arch.head_kind == "cas":
        return CasHead(cin, arch.num_classes)
    if arch.head_kind == "evit":
        return EfficientViTHead(cin, (arch.head_widths[0], arch.head_widths[1]), arch.num_classes)
    if arch.head_kind == "vit":
        return VitHead(cin, arch.num_classes)
    raise ValueError(f"unknown head kind {arch.head_kind!r}")


class Backbone(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        self.stem = build_stem(arch.stem_kind, arch.stem_width, arch.stem_depth)
        stages: list[nn.Module] = []
        width = arch.stem_width
        for spec in arch.stages:
            stages.append(nn.Sequential(build_downsample(spec, width), mixer_builder(spec.mixer)(spec)))
            width = spec.width
        self.stages = nn.Sequential(*stages)
        self.head = build_head(arch, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def build_model(arch: Arch) -> Backbone:
    return Backbone(arch)


def total_stride(arch: Arch) -> int:
    return STEM_STRIDES[arch.stem_kind] * 2 ** sum(spec.downsample in ("conv", "mbconv") for spec in arch.stages)
