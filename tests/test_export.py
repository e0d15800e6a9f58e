"""nas.export.convert_openvino skips the tracer's self-check for speed; its IR must be OpenVINO's default one."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import openvino as ov
import torch

from nas.export import convert_openvino, example_input
from nas.models import build_model
from tests.conftest import tiny_arch

RES = 32


def _ir_text(ov_model: ov.Model, path: Path) -> tuple[str, bytes]:
    """The IR's XML with OpenVINO's auto-numbered names and ids normalised, and its weights."""
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    xml = path.read_text()
    xml = re.sub(r'\bid="\d+"', 'id=""', xml)
    xml = re.sub(r"_\d+\b", "_N", re.sub(r'name="Model\d+"', 'name="M"', xml))
    return xml, path.with_suffix(".bin").read_bytes()


def test_fast_conversion_gives_the_default_ir(mixer: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_arch(mixer)).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = ov.convert_model(model, example_input=example_input(RES), input=[(1, 3, RES, RES)])
    fast = convert_openvino(model, RES)
    default_xml, default_bin = _ir_text(default, tmp_path / "default.xml")
    fast_xml, fast_bin = _ir_text(fast, tmp_path / "fast.xml")
    assert fast_bin == default_bin
    assert fast_xml == default_xml
    assert [tuple(i.get_partial_shape().to_shape()) for i in fast.inputs] == [(1, 3, RES, RES)]


def test_reusing_conversions_traces_a_model_once_per_resolution(tmp_path: Path) -> None:
    from nas.export import reusing_conversions

    model = build_model(tiny_arch("catm")).eval()
    traces = []
    model.register_forward_hook(lambda *_: traces.append(1))
    with reusing_conversions():
        first = convert_openvino(model, RES)
        second = convert_openvino(model, RES)
        assert len(traces) == 1 and second is not first
        assert _ir_text(second, tmp_path / "b.xml") == _ir_text(first, tmp_path / "a.xml")
        convert_openvino(model, RES + 8)  # another resolution is another graph
        assert len(traces) == 2
    convert_openvino(model, RES)  # outside the block every call converts
    assert len(traces) == 3
