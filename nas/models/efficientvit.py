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
from nas.models.registry import Channels, Inner, PruningRule, register_mixer

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

    @property
    def heads(self) -> int:
        """From the tensors (whole heads may have been pruned): qkv holds 3 x head_dim channels a head."""
        return self.qkv.out_channels // (3 * self.head_dim)

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


# Pruning: the attention core is one unit of torch-pruning's dependency graph (it cannot follow the
# reshape of the multi-scale concat into (heads, 3d, N) and the matmuls): its input (qkv conv input)
# and output (proj) are the stage's residual width. Inside, whole heads go: head h owns 3d consecutive
# channels of qkv and of every aggregator (DW 5x5, grouped 1x1 with groups 3h, whose groups shrink by
# 3 a head) and d channels of proj's input in each scale's part; the head count is read from the
# tensors in forward. The MBConv FFN hidden channels are pruned by the graph as usual.
LITEMLA_PRUNING = PruningRule(
    LiteMLA,
    unit_in=(Channels("qkv", "in"),),
    unit_out=(Channels("proj.*"),),
    inner=(Inner((Channels("qkv", "out", span=3), Channels("aggregators.*", "out", span=3), Channels("proj.0", "in")),
                 block="head_dim"),),
)
# Quantization: rules in nas/quant_rules.yaml (litemla).
@register_mixer("litemla", pruning=(LITEMLA_PRUNING,))
def litemla_stage(spec: StageSpec) -> nn.Module:
    return nn.Sequential(*(EfficientViTBlock(spec.width, spec.head_dim, spec.expand) for _ in range(spec.depth)))
