"""Hand-designed, pure-family baselines, scaled to the latency budget.

Each family has a base layout (the published small variant); a width ladder shrinks it until the
measured latency fits the budget. These run as enqueued trials in every search, so the Pareto plot
always compares searched hybrids with the three hand designs.
"""

from __future__ import annotations

from collections.abc import Callable

from nas.arch import Arch, StageSpec

WIDTH_LADDER = (1.0, 0.75, 0.5, 0.375, 0.25)


def _round(value: float, multiple: int = 8) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def casvit_like(scale: float, num_classes: int) -> Arch:
    """CAS-ViT-XS layout, all CATM stages, widths scaled."""
    widths = [_round(w * scale) for w in (48, 56, 112, 220)]
    stages = tuple(StageSpec("catm", d, w, 4.0, "none" if i == 0 else "conv")
                   for i, (d, w) in enumerate(zip((2, 2, 4, 2), widths, strict=True)))
    return Arch(stages=stages, stem_kind="conv2", stem_width=widths[0], stem_depth=0, head_kind="cas",
                num_classes=num_classes, name=f"CAS-ViT-style x{scale:g}")


def efficientvit_like(scale: float, num_classes: int) -> Arch:
    """EfficientViT-B1 layout (MBConv stages, then LiteMLA), widths and head scaled."""
    # attention stages need whole 16-channel heads
    widths = [_round(w * scale, 16 if i >= 3 else 8) for i, w in enumerate((16, 32, 64, 128, 256))]
    stages = (
        StageSpec("mbconv", 1, widths[1], 4.0, "mbconv"),
        StageSpec("mbconv", 2, widths[2], 4.0, "mbconv"),
        StageSpec("litemla", 3, widths[3], 4.0, "mbconv", head_dim=16),
        StageSpec("litemla", 4, widths[4], 4.0, "mbconv", head_dim=16),
    )
    head = (_round(1536 * scale), _round(1600 * scale))
    return Arch(stages=stages, stem_kind="dsconv", stem_width=widths[0], stem_depth=1, head_kind="evit",
                head_widths=head, num_classes=num_classes, name=f"EfficientViT-style x{scale:g}")


def cagevit_like(scale: float, num_classes: int) -> Arch:
    """CageViT reconstruction (plain ViT trunk, GLSRA), width and depth scaled."""
    # the preset's 9 heads of 56 at full width; 32-channel heads when narrowed
    width, head_dim = (504, 56) if scale == 1.0 else (_round(504 * scale, 32), 32)
    depth = max(2, round(12 * scale))
    stage = StageSpec("glsra", depth, width, 4.0, "none", head_dim=head_dim, keep_ratio=0.5,
                      fusion_tokens=8, pool_size=7)
    return Arch(stages=(stage,), stem_kind="patch", stem_width=width, stem_depth=0, head_kind="vit",
                num_classes=num_classes, name=f"CageViT-style x{scale:g}")


FAMILIES: dict[str, Callable[[float, int], Arch]] = {
    "casvit": casvit_like,
    "efficientvit": efficientvit_like,
    "cagevit": cagevit_like,
}


def scale_to_budget(family: str, num_classes: int, budget_ms: float,
                    latency_ms: Callable[[Arch], float]) -> tuple[Arch, float]:
    """The widest rung of the ladder within budget (else the narrowest), with its latency.

    Latency grows with width, so a bisection over the ladder finds that rung in ceil(log2(n + 1))
    measurements (3 for 5 rungs) instead of walking it rung by rung.
    """
    build = FAMILIES[family]
    ladder = sorted(WIDTH_LADDER)
    measured: dict[float, tuple[Arch, float]] = {}

    def timed(scale: float) -> tuple[Arch, float]:
        if scale not in measured:
            arch = build(scale, num_classes)
            measured[scale] = (arch, latency_ms(arch))
        return measured[scale]

    low, high = 0, len(ladder) - 1  # invariant: rungs below `low` fit, rungs above `high` do not
    while low <= high:
        middle = (low + high) // 2
        if timed(ladder[middle])[1] <= budget_ms:
            low = middle + 1
        else:
            high = middle - 1
    return timed(ladder[high]) if high >= 0 else timed(ladder[0])
