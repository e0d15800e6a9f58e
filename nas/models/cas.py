"""CAS-ViT: AdditiveBlock with the Convolutional Additive Token Mixer (CATM).

Faithful to the published reference layout: BatchNorm pre-norms, a 1-channel ReLU spatial
gate, an SE-like channel gate with no bottleneck, a depthwise 3x3 output projection, a
LocalIntegration branch first, no layer-scale. No matmul, no softmax.
"""

from __future__ import annotations

from torch import Tensor, nn

from nas.arch import StageSpec
from nas.models.blocks import ConvBN
from nas.models.registry import Channels, PruningRule, register_mixer


class SpatialGate(nn.Module):
    """z * sigmoid(1x1 C->1 (ReLU(BN(DW3x3 z)))): one gate value per position, broadcast over C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBN(dim, dim, 3, groups=dim, bias=True, act="relu"),
            nn.Conv2d(dim, 1, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return z * self.body(z)


class ChannelGate(nn.Module):
    """z * sigmoid(1x1 C->C (GAP z)): one dense CxC matrix, no bottleneck, no hidden activation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        return z * self.fc(z.mean((2, 3), keepdim=True)).sigmoid()


class CATM(nn.Module):
    """out = DW3x3( DW3x3(Phi_q(q) + Phi_k(k)) * v ), Phi = channel gate after spatial gate."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.q_gate = nn.Sequential(SpatialGate(dim), ChannelGate(dim))
        self.k_gate = nn.Sequential(SpatialGate(dim), ChannelGate(dim))
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        similarity = self.dwc(self.q_gate(q) + self.k_gate(k))
        return self.proj(similarity * v)


class LocalIntegration(nn.Module):
    """1x1 -> BN -> DW3x3 -> GELU -> 1x1, all with bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ConvMlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float) -> None:
        hidden = round(dim * ratio)
        super().__init__(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))


class AdditiveBlock(nn.Module):
    """x += Local(x); x += CATM(BN1(x)); x += MLP(BN2(x))."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.local = LocalIntegration(dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.mixer = CATM(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.local(x)
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# Pruning: torch-pruning traces `z * gate(z)` (a C->1 gate broadcast over C) and the q/k/v chunk
# wrongly (it splits the q/k gates off the residual), so the mixer is one unit of its dependency graph:
# its input is the qkv conv's input, its output channel i is q/k/v channel i through the gates, the
# dense channel gate, the DW convs and the DW projection. That prunes the stage width (the residual
# it adds to); LocalIntegration and MLP hidden channels are pruned by the graph as usual.
CATM_PRUNING = PruningRule(
    CATM,
    unit_in=(Channels("qkv", "in"),),
    unit_out=(Channels("qkv", "out", span=3), Channels("?_gate.0.body.0.*"), Channels("?_gate.0.body.1", "in"),
              Channels("?_gate.1.fc"), Channels("?_gate.1.fc", "in"), Channels("dwc"), Channels("proj")),
)
# Quantization: rules in nas/quant_rules.yaml (catm: no activation-by-activation MatMul, division or softmax).
@register_mixer("catm", pruning=(CATM_PRUNING,))
def catm_stage(spec: StageSpec) -> nn.Module:
    return nn.Sequential(*(AdditiveBlock(spec.width, spec.expand) for _ in range(spec.depth)))
