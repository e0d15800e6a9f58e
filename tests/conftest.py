"""Shared fixtures: tiny architectures of every mixer family (real models, tiny sizes)."""

from __future__ import annotations

import os
import warnings

import pytest

from nas.arch import Arch, StageSpec

MIXERS = ("catm", "litemla", "glsra", "mbconv")

os.environ.setdefault("VITNAS_LOCK", os.path.join(os.environ.get("TMPDIR", "/tmp"), "vitnas-test.lock"))
warnings.filterwarnings("ignore", category=Warning, module="torch.onnx")


def tiny_arch(mixer: str, num_classes: int = 10, head: str = "evit") -> Arch:
    """Two small stages: a conv stage, then the mixer under test (a few thousand parameters)."""
    return Arch(
        stages=(
            StageSpec("mbconv", 1, 16, expand=2, downsample="mbconv"),
            StageSpec(mixer, 2, 32, expand=2, downsample="conv", head_dim=8, fusion_tokens=2),
        ),
        stem_kind="dsconv",
        stem_width=8,
        stem_depth=1,
        head_kind=head,
        head_widths=(32, 48) if head == "evit" else (),
        num_classes=num_classes,
        name=f"tiny-{mixer}",
    )


@pytest.fixture(params=MIXERS)
def mixer(request: pytest.FixtureRequest) -> str:
    return request.param
