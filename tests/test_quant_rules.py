"""INT8 rules as data (nas/quant_rules.yaml): loading, one-line errors, and the real NNCF output.

The float ops the rules name are checked on the INT8 graph NNCF actually writes: an op kept float
has no FakeQuantize at its inputs, every other conv / weighted MatMul has one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from nas.arch import Arch, StageSpec
from nas.errors import UserError, run_cli
from nas.export import convert_openvino
from nas.models import build_model
from nas.quant_rules import RULES_FILE, load_rules, parse_rules
from nas.quantization import float_ops, mixers_of, module_paths, quantize_openvino

RESOLUTION = 32


def hybrid() -> Arch:
    return Arch(stages=(StageSpec("mbconv", 1, 16, expand=2, downsample="mbconv"),
                        StageSpec("catm", 1, 24, expand=2, downsample="conv"),
                        StageSpec("litemla", 1, 32, expand=2, downsample="none", head_dim=8),
                        StageSpec("glsra", 1, 32, expand=2, downsample="none", head_dim=8, fusion_tokens=2)),
                stem_kind="dsconv", stem_width=8, stem_depth=1, head_kind="evit", head_widths=(32, 48),
                num_classes=10, name="tiny-hybrid")


def write_rules(path: Path, families: dict) -> Path:
    path.write_text(yaml.safe_dump({"families": families}))
    return path


def test_rules_load_from_the_data_file() -> None:
    rules = load_rules()
    assert set(rules.families) == {"glsra", "litemla", "catm", "mbconv", "head"}
    assert set(yaml.safe_load(RULES_FILE.read_text())["families"]) == set(rules.families)
    assert "TopK" in rules.family("glsra").float_types and "Divide" in rules.family("litemla").float_types
    # a hybrid takes its NNCF settings from the first family of the file it contains
    assert rules.lead(["mbconv", "catm", "litemla"]) is rules.family("litemla")
    assert rules.lead(["mbconv"]) is rules.family("mbconv")


@pytest.mark.parametrize(("families", "expected"), [
    ({"litemla": {"float_types": ["Divide", "Softmaxx"]}}, "families.litemla.float_types[1]: unknown OpenVINO op "
                                                           "type 'Softmaxx'"),
    ({"litemla": {"float_typo": ["Divide"]}}, "families.litemla.float_typo: unknown key"),
    ({"transformr": {}}, "unknown family (mixer) 'transformr'"),
    ({"catm": {"model_type": "rnn"}}, "families.catm.model_type"),
    ({"catm": {"smooth_quant_alpha": 2.0}}, "smooth_quant_alpha must be in [0, 1] or -1"),
    ({"glsra": {"float_patterns": ["(unclosed"]}}, "bad regular expression"),
])
def test_bad_rules_are_one_line_errors_naming_file_and_entry(tmp_path: Path, families: dict, expected: str) -> None:
    path = write_rules(tmp_path / "rules.yaml", families)
    with pytest.raises(UserError) as info:
        load_rules(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message


def test_bad_rules_file_exits_2_from_a_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """INT8 latency reads the rules: a bad file is one line on stderr and exit 2, before any timing."""
    from nas.latency.__main__ import main

    arch_file = tmp_path / "arch.yaml"
    hybrid().save(arch_file)
    bad = write_rules(tmp_path / "bad.yaml", {"litemla": {"float_types": ["Softmaxx"]}})
    monkeypatch.setenv("VITNAS_QUANT_RULES", str(bad))
    code = run_cli(main, ["--arch", str(arch_file), "--precision", "int8", "--resolution", str(RESOLUTION),
                          "--threads", "1", "--quick", "--no-cache", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Softmaxx" in err and str(bad) in err, err


def _fq_inputs(op) -> bool:
    """A FakeQuantize feeds this op, directly or through a Convert/Reshape/Transpose."""
    for port in op.inputs():
        node = port.get_source_output().get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose") and node.inputs():
            node = node.inputs()[0].get_source_output().get_node()
        if node.get_type_name() == "FakeQuantize":
            return True
    return False


def _quantized(families: dict | None, tmp_path: Path):
    arch = hybrid()
    model = build_model(arch).eval()
    fp32 = convert_openvino(model, RESOLUTION)
    rules = load_rules() if families is None else load_rules(write_rules(tmp_path / "rules.yaml", families))
    calibration = [np.random.default_rng(i).standard_normal((1, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
                   for i in range(4)]
    ignored = float_ops(fp32, mixers_of(model), rules)
    int8 = quantize_openvino(fp32, calibration, mixers=mixers_of(model), rules=rules)
    return {op.get_friendly_name(): op for op in int8.get_ordered_ops()}, set(ignored), fp32, mixers_of(model)


def test_int8_model_keeps_exactly_the_rules_float_ops(tmp_path: Path) -> None:
    ops, ignored, _, _ = _quantized(None, tmp_path)
    assert ignored and all(name in ops for name in ignored)
    kinds = {ops[name].get_type_name() for name in ignored}
    # every float op the rules name: a glsra TopK/Softmax/Divide, the litemla Divide, attention MatMuls
    assert {"TopK", "Softmax", "Divide", "MatMul"} <= kinds, kinds
    for name in ignored:
        assert not _fq_inputs(ops[name]), f"{name} ({ops[name].get_type_name()}) was quantized"
    compute = [op for name, op in ops.items() if op.get_type_name() in ("Convolution", "GroupConvolution")
               and name not in ignored]
    assert compute and all(_fq_inputs(op) for op in compute), [op.get_friendly_name() for op in compute
                                                                if not _fq_inputs(op)]
    # each rule is scoped to its family's stages: no catm (stage 1) op is kept float by litemla's Divide
    assert not [n for n in ignored if "__module.stages.1." in n]


def test_residual_add_and_stem_rules(tmp_path: Path) -> None:
    """Residual adds float in catm stages only; a `stem` entry keeps the stem's convs float, including
    those named after the BatchNorm constant they absorbed (attributed through their consumers)."""
    families = {name: r.model_dump() for name, r in load_rules().families.items()}
    families["catm"]["quantize_residual_adds"] = False
    families["stem"] = {"float_patterns": [".*"]}
    ops, ignored, fp32, mixers = _quantized(families, tmp_path)
    by_file = set(float_ops(fp32, mixers))  # the same graph (generated op names differ between conversions)
    paths = module_paths(fp32)
    stem = {n for n in ignored - by_file if paths[n].startswith("__module.stem")}
    stem_convs = [n for n in stem if ops[n].get_type_name() in ("Convolution", "GroupConvolution")]
    assert stem_convs and any("__module." not in n for n in stem_convs), stem_convs
    for name in stem_convs:
        assert not _fq_inputs(ops[name]), name
    first_stage_conv = [n for n, op in ops.items() if op.get_type_name() == "Convolution"
                        and paths.get(n, "").startswith("__module.stages.0.")]
    assert first_stage_conv and all(_fq_inputs(ops[n]) for n in first_stage_conv)
    ignored -= stem
    adds = sorted(ignored - by_file)  # what the changed rule adds to the float ops: catm's residual adds only
    assert adds and all(ops[n].get_type_name() == "Add" and "__module.stages.1." in n for n in adds), adds
    assert {"__module.stages.1.1.0/aten::add/Add", "__module.stages.1.1.0/aten::add/Add_1"} <= set(adds)
    for name in adds:
        assert not _fq_inputs(ops[name])


def test_head_entry_keeps_the_classifier_linear_float(tmp_path: Path) -> None:
    """The committed `head` entry (chosen by bench/int8_amx.py): the classifier Linear (EfficientViT head:
    fc2) keeps no FakeQuantize, the wide fc1 before it and the stages' convs are still quantized."""
    ops, ignored, fp32, _ = _quantized(None, tmp_path)
    paths = module_paths(fp32)
    head = [n for n in ignored if paths.get(n, "").startswith("__module.head")]
    assert head and all(n.startswith("__module.head.fc2/") for n in head), head
    matmuls = {n: op for n, op in ops.items() if op.get_type_name() == "MatMul" and n.startswith("__module.head.")}
    fc1 = [n for n in matmuls if n.startswith("__module.head.fc1")]
    fc2 = [n for n in matmuls if n.startswith("__module.head.fc2")]
    assert fc1 and fc2, sorted(matmuls)
    assert all(_fq_inputs(matmuls[n]) for n in fc1) and not any(_fq_inputs(matmuls[n]) for n in fc2)
    without = {name: r.model_dump() for name, r in load_rules().families.items() if name != "head"}
    _, ignored_without, fp32_without, _ = _quantized(without, tmp_path)
    assert not [n for n in ignored_without if module_paths(fp32_without).get(n, "").startswith("__module.head")]


def test_parse_rules_accepts_every_documented_key() -> None:
    rules = parse_rules({"families": {"catm": {
        "float_types": ["Add"], "float_patterns": [".*mlp.*"], "float_activation_matmuls": False,
        "quantize_residual_adds": False, "model_type": "cnn", "preset": "performance", "smooth_quant_alpha": -1,
        "fast_bias_correction": False, "note": "why"}}}, "inline")
    assert rules.family("catm").settings() == {"model_type": "cnn", "preset": "performance",
                                               "smooth_quant_alpha": -1, "fast_bias_correction": False}


def test_int8_latency_cache_keys_follow_the_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An INT8 latency cached under one rule set is not served under another (the INT8 model differs);
    float precisions do not depend on the rules."""
    from nas.latency._measure import _model_key

    committed = _model_key("arch", 224, "openvino", 2, "int8")
    fp32 = _model_key("arch", 224, "openvino", 2, "fp32")
    data = yaml.safe_load(RULES_FILE.read_text())
    same, changed = tmp_path / "same.yaml", tmp_path / "changed.yaml"
    same.write_bytes(RULES_FILE.read_bytes())
    data["families"]["litemla"]["preset"] = "mixed"
    changed.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("VITNAS_QUANT_RULES", str(same))
    assert _model_key("arch", 224, "openvino", 2, "int8") == committed
    monkeypatch.setenv("VITNAS_QUANT_RULES", str(changed))
    assert _model_key("arch", 224, "openvino", 2, "int8") != committed
    assert _model_key("arch", 224, "openvino", 2, "fp32") == fp32
