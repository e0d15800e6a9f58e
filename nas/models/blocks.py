"""Conv building blocks shared by the families: ConvBN, DSConv, MBConv, residual wrapper, stems, heads."""

from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "hswish": nn.Hardswish,
}


def make_act(name: str | None) -> nn.Module:
    return nn.Identity() if name is None else ACTIVATIONS[name]()


class ConvBN(nn.Sequential):
    """Conv (same padding) -> optional BN -> optional activation (EfficientViT's ConvLayer)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: bool = True, act: str | None = None) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class DSConv(nn.Sequential):
    """Depthwise 3x3 -> BN -> act, then pointwise 1x1 -> BN (no act)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act: str = "hswish") -> None:
        super().__init__(
            ConvBN(cin, cin, 3, stride, groups=cin, act=act),
            ConvBN(cin, cout, 1),
        )


class MBConv(nn.Sequential):
    """Inverted residual body: 1x1 expand -> DW 3x3 -> 1x1 project.

    `fewer_norm=True` is EfficientViT's variant for attention stages: the first two convs carry a
    bias and no BN, only the projection has BN.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: float = 4.0,
                 act: str = "hswish", fewer_norm: bool = False) -> None:
        mid = round(cin * expand)
        super().__init__(
            ConvBN(cin, mid, 1, bias=fewer_norm, norm=not fewer_norm, act=act),
            ConvBN(mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm, act=act),
            ConvBN(mid, cout, 1),
        )


class Residual(nn.Module):
    """x + body(x)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def build_stem(kind: str, width: int, depth: int) -> nn.Module:
    """The input stem; its output stride is nas.arch.STEM_STRIDES[kind].

    conv2:  CAS-ViT, two 3x3 stride-2 conv-BN-ReLU, /4.
    dsconv: EfficientViT, 3x3 s2 conv-BN-Hardswish then `depth` residual DSConvs, /2.
    patch:  ViT/CageViT, one non-overlapping 16x16 patch-embedding conv, /16.
    """
    if kind == "conv2":
        stem = nn.Sequential(
            ConvBN(3, width // 2, 3, 2, bias=True, act="relu"),
            ConvBN(width // 2, width, 3, 2, bias=True, act="relu"),
        )
        return stem
    if kind == "dsconv":
        layers: list[nn.Module] = [ConvBN(3, width, 3, 2, act="hswish")]
        layers += [Residual(DSConv(width, width)) for _ in range(depth)]
        return nn.Sequential(*layers)
    if kind == "patch":
        return nn.Conv2d(3, width, 16, 16)
    raise ValueError(f"unknown stem kind {kind!r}")


class CasHead(nn.Module):
    """CAS-ViT head: BN on the 2-D map, global mean, Linear."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x).mean((2, 3)))


class EfficientViTHead(nn.Module):
    """EfficientViT head: 1x1 conv-BN-Hswish, GAP, Linear(no bias)-LN-Hswish, Dropout, Linear."""

    def __init__(self, cin: int, widths: tuple[int, int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        h1, h2 = widths
        self.conv = ConvBN(cin, h1, 1, act="hswish")
        self.fc1 = nn.Sequential(nn.Linear(h1, h2, bias=False), nn.LayerNorm(h2), nn.Hardswish())
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(h2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x).mean((2, 3))
        return self.fc2(self.dropout(self.fc1(x)))


class VitHead(nn.Module):
    """ViT-style head on a feature map: LayerNorm over channels, mean over tokens, Linear."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x.flatten(2).transpose(1, 2)).mean(1))
