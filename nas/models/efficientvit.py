"""EfficientViT (MIT): LiteMLA, ReLU linear attention with multi-scale aggregation, + MBConv FFN.

Faithful to the published reference: per-head interleaved [q|k|v] layout, DW 5x5 + grouped 1x1 (groups=3h)
aggregation, ReLU kernel on q and k, no softmax and no sqrt(d) scale, 2C->C projection with BN,
no pre-norm. Two deliberate deviations, both numerically the same function:
- eps = 1e-5 (not 1e-15): tiny eps is dropped by ONNX optimisers and gives 0/0 NaNs.
- the denominator is phi(q) . sum_N phi(k) instead of padding v with a row of ones: no Pad op,
  friendlier to opset-pinned exporters and NPUs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nas.arch import StageSpec
from nas.models.blocks import ConvBN, MBConv, Residual
from nas.models.registry import PruningRule, register_mixer

LINEAR_ATTENTION_EPS = 1e-5


class LiteMLA(nn.Module):
    def __init__(self, dim: int, head_dim: int = 16, scales: tuple[int, ...] = (5,)) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not divisible by head_dim {head_dim}")
        self.head_dim = head_dim
        heads = dim // head_dim
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.aggregators = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * dim, 3 * dim, s, padding=s // 2, groups=3 * dim, bias=False),
                nn.Conv2d(3 * dim, 3 * dim, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvBN(dim * (1 + len(scales)), dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        qkv = self.qkv(x)
        multi = torch.cat([qkv] + [agg(qkv) for agg in self.aggregators], dim=1)
        d = self.head_dim
        multi = multi.reshape(batch, -1, 3 * d, height * width)  # (B, heads*(1+scales), 3d, N)
        out = self._linear_attention(multi[:, :, :d], multi[:, :, d : 2 * d], multi[:, :, 2 * d :])
        return self.proj(out.reshape(batch, -1, height, width))

    @staticmethod
    def _linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # fp32 island: k^T v sums over all tokens and overflows fp16/bf16 (efficientvit issue #15).
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = torch.relu(q).float(), torch.relu(k).float(), v.float()
            vk = v @ k.transpose(-1, -2)  # (B, H, d, d)
            numerator = vk @ q  # (B, H, d, N)
            denominator = (k.sum(-1, keepdim=True) * q).sum(2, keepdim=True)  # (B, H, 1, N)
            return numerator / (denominator + LINEAR_ATTENTION_EPS)


class EfficientViTBlock(nn.Module):
    """x += LiteMLA(x); x += MBConv_fewer_norm(x)."""

    def __init__(self, dim: int, head_dim: int = 16, expand: float = 4.0) -> None:
        super().__init__()
        self.context = Residual(LiteMLA(dim, head_dim))
        self.local = Residual(MBConv(dim, dim, expand=expand, act="hswish", fewer_norm=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.local(self.context(x))


# Pruning: the attention internals (qkv 1x1, the DW + grouped 1x1 aggregators with groups = 3h, the
# reshape to (heads, 3d, N)) keep their channels, so heads stay whole and the dependency graph never
# indexes through that reshape. The MBConv FFN hidden channels and the stage's residual width (qkv
# input, proj output) are pruned.
# Quantization: rules in nas/quant_rules.yaml (litemla).
@register_mixer("litemla", pruning=(PruningRule(LiteMLA, frozen=("qkv", "aggregators.*")),))
def litemla_stage(spec: StageSpec) -> nn.Module:
    return nn.Sequential(*(EfficientViTBlock(spec.width, spec.head_dim, spec.expand) for _ in range(spec.depth)))
