"""README's "Adding a mixer", followed literally: its code block registers a toy mixer, which then goes
through the whole pipeline (space YAML, decode, build, forward, MACs, OpenVINO latency, pruning, INT8).
"""

from __future__ import annotations

import copy
import re
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compress.prune import prune_model
from nas.errors import ConfigError
from nas.export import convert_openvino
from nas.latency import MeasureSettings, count_fake_quantize, measure
from nas.mixers import MixerInfo, mixer_info, mixer_names
from nas.models import build_model, count_macs, registered_mixers
from nas.models.registry import unregister_mixer
from nas.quantization import quantize_openvino
from nas.space import load_space

README = Path(__file__).resolve().parent.parent / "README.md"
RESOLUTION = 32


def readme_mixer_code() -> str:
    section = README.read_text().split("## Adding a mixer", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section shows exactly one mixer file"
    return blocks[0]


@pytest.fixture(scope="module")
def dwmix() -> Iterator[types.ModuleType]:
    """The README's nas/models/dwmix.py, run as a module; unregistered afterwards."""
    module = types.ModuleType("dwmix")
    exec(compile(readme_mixer_code(), "README.md:dwmix.py", "exec"), module.__dict__)
    yield module
    unregister_mixer("dwmix")


def space_with(tmp_path: Path, mixers: list[str]) -> Path:
    space = {
        "name": "toy",
        "resolution": {"proxy": RESOLUTION, "target": RESOLUTION},
        "stem": {"kind": "dsconv", "width": 8, "depth": 1},
        "stages": [{"mixer": "mbconv", "depth": 1, "width": 16, "expand": 2, "downsample": "mbconv"},
                   {"mixer": mixers, "depth": {"low": 1, "high": 2}, "width": [16, 24], "expand": 2,
                    "downsample": "conv"}],
        "head": {"kind": "evit", "widths": [[32, 48]]},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_toy_mixer_through_the_pipeline(dwmix: types.ModuleType, tmp_path: Path) -> None:
    assert "dwmix" in mixer_names() and "dwmix" in registered_mixers()
    space = load_space(space_with(tmp_path, ["mbconv", "dwmix"]))
    params = {name: values[-1] for name, values in space.knobs().items()}  # dwmix, depth 2, width 24
    arch = space.decode(params, num_classes=10)
    assert arch.stages[1].mixer == "dwmix"
    model = build_model(arch).eval()
    assert sum(isinstance(m, dwmix.DWMixer) for m in model.modules()) == 2
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    assert model(images).shape == (2, 10)

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images[:1])
    assert count_macs(model, RESOLUTION) == counter.get_total_flops() // 2 > 0  # no gates in this mixer
    stats = measure(model, RESOLUTION, "openvino", threads=1, settings=MeasureSettings.quick())
    # timed by OpenVINO itself: real samples, and the estimate is the fastest pass's median
    assert stats.backend == "openvino" and stats.resolution == RESOLUTION and stats.samples >= 5
    assert stats.min_ms <= stats.ms == min(stats.pass_medians_ms) <= stats.p90_ms

    pruned = copy.deepcopy(model)
    prune_model(pruned, RESOLUTION, ratio=0.5)
    for before, after in zip(model.modules(), pruned.modules(), strict=True):
        if isinstance(before, dwmix.DWMixer):  # the rule: depthwise width kept, MLP hidden pruned
            assert after[0][0].out_channels == before[0][0].out_channels == 24
            assert after[1][0].out_channels < before[1][0].out_channels
    assert pruned(images).shape == (2, 10)

    calibration = [np.random.default_rng(0).standard_normal((1, 3, RESOLUTION, RESOLUTION), dtype=np.float32)]
    assert count_fake_quantize(quantize_openvino(convert_openvino(pruned, RESOLUTION), calibration)) > 0


def test_unknown_mixer_is_a_one_line_config_error(dwmix: types.ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stages\[1\]\.mixer\[1\]: unknown mixer 'dwmixx'; known: 'catm', .*'dwmix'"):
        load_space(space_with(tmp_path, ["mbconv", "dwmixx"]))


def test_a_mixer_name_cannot_be_taken_twice(dwmix: types.ModuleType) -> None:
    with pytest.raises(ValueError, match="declared twice"):
        dwmix.register_mixer(MixerInfo("catm", family="another"))
    with pytest.raises(ValueError, match="registered twice"):
        dwmix.register_mixer(mixer_info("dwmix"))(lambda spec: nn.Identity())
    with pytest.raises(ValueError, match="built in"):
        unregister_mixer("catm")


def test_mixer_info_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown knobs"):
        MixerInfo("x", "y", knobs=("kernel",))
    with pytest.raises(ValueError, match="head_dim"):
        MixerInfo("x", "y", attention=True)
