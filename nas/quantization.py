"""INT8 shared by INT8 latency (nas.latency) and the shipped INT8 model (compress.quantize).

NNCF post-training quantization of an OpenVINO model with the per-family rules kept as data in
nas/quant_rules.yaml (nas.quant_rules): the ops kept float (op types, name patterns, MatMuls of two
activations, residual adds) are resolved per stage, from the torch module path in each op's name
(`__module.stages.<i>.`) and the mixer of stage i; the NNCF settings (model type, preset,
SmoothQuant alpha, bias correction) come from the model's lead family. Without the stage mixers (a
model that is not a nas Backbone) every family's float rules apply to the whole graph.
`keep_float=False` quantizes every op (it measures the cost of the islands). Both paths use
`quantize_options`, so the INT8 latency a search or benchmark sees is that of the graph
compress.quantize ships.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.quant_rules import PSEUDO_FAMILIES, FamilyRules, RulesFile, load_rules

_PASS_THROUGH = {"Convert", "Transpose", "Reshape", "Unsqueeze", "Squeeze"}
_STAGE = re.compile(r"__module\.stages\.(\d+)\.")


def _is_constant(node: Any) -> bool:
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    return kind in _PASS_THROUGH and all(_is_constant(i.get_source_output().get_node()) for i in node.inputs())


def _activations_only(op: Any) -> bool:
    return not any(_is_constant(i.get_source_output().get_node()) for i in op.inputs())


def activation_matmuls(ov_model: Any) -> list[str]:
    """Names of MatMuls whose two inputs are both activations (a Linear's MatMul has a constant)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and _activations_only(op)]


def mixers_of(model: Any) -> list[str] | None:
    """The stage mixers of a nas Backbone (pruned ones keep their arch), else None."""
    arch = getattr(model, "arch", None)
    return None if arch is None else [stage.mixer for stage in arch.stages]


def rules_digest(rules: RulesFile | None = None) -> str:
    return (rules or load_rules()).digest()


def module_paths(ov_model: Any) -> dict[str, str]:
    """op name -> the torch module path it came from. Ops named after a folded constant (a conv that
    absorbed its BatchNorm is named `Multiply_123`) take the path of their first consumer that has one."""
    paths: dict[str, str] = {}
    for op in reversed(ov_model.get_ordered_ops()):
        name = op.get_friendly_name()
        if "__module." in name:
            paths[name] = name
            continue
        consumers = [t.get_node().get_friendly_name() for out in op.outputs() for t in out.get_target_inputs()]
        paths[name] = next((paths[c] for c in consumers if paths.get(c)), "")
    return paths


def _op_rules(path: str, mixers: list[str] | None, rules: RulesFile) -> list[FamilyRules]:
    """The rules that govern one op: the `stem`/`head` entry for their ops, else its stage's family
    (all families when the mixers are unknown); none for an op outside every scope."""
    for part in PSEUDO_FAMILIES:
        if f"__module.{part}" in path:
            return [rules.families[part]] if part in rules.families else []
    if mixers is None:
        return [r for name, r in rules.families.items() if name not in PSEUDO_FAMILIES]
    match = _STAGE.search(path)
    if match and int(match[1]) < len(mixers):
        return [rules.family(mixers[int(match[1])])]
    return []


def float_ops(ov_model: Any, mixers: list[str] | None = None, rules: RulesFile | None = None) -> list[str]:
    """Names of the ops the rules keep float in this graph."""
    rules = rules or load_rules()
    lead = rules.lead(mixers)
    paths = module_paths(ov_model)
    out = []
    for op in ov_model.get_ordered_ops():
        kind, name = op.get_type_name(), op.get_friendly_name()
        if kind in ("Constant", "Parameter", "Result"):
            continue
        governing = _op_rules(paths.get(name, ""), mixers, rules)
        matmul = kind == "MatMul" and _activations_only(op)
        if matmul and not governing:  # an attention MatMul outside any stage follows the lead family
            governing = [lead]
        for fam in governing:
            if (kind in fam.float_types or any(re.match(p, name) for p in fam.float_patterns)
                    or (matmul and fam.float_activation_matmuls)
                    or (kind == "Add" and not fam.quantize_residual_adds and _activations_only(op))):
                out.append(name)
                break
    return out


def quantize_options(ov_model: Any, subset_size: int, keep_float: bool = True, mixers: list[str] | None = None,
                     rules: RulesFile | None = None) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments for nncf.quantize / quantize_with_accuracy_control, and the ops kept float."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lists every op it skips
    rules = rules or load_rules()
    lead = rules.lead(mixers)
    ignored = float_ops(ov_model, mixers, rules) if keep_float else []
    options: dict[str, Any] = dict(
        model_type=nncf.ModelType.TRANSFORMER if lead.model_type == "transformer" else None,
        subset_size=subset_size, fast_bias_correction=lead.fast_bias_correction,
        # validate=False: a name list resolved on this very graph; empty is fine for a pure-conv model
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
    if lead.preset is not None:
        options["preset"] = nncf.QuantizationPreset(lead.preset)
    if lead.smooth_quant_alpha is not None:
        options["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=lead.smooth_quant_alpha))
    return options, ignored


def quantize_openvino(ov_model: Any, calibration: Sequence[np.ndarray], keep_float: bool = True,
                      mixers: list[str] | None = None, rules: RulesFile | None = None) -> Any:
    """NNCF INT8 of an OpenVINO model calibrated on `calibration` (batch-1 NCHW arrays)."""
    import nncf

    options, _ = quantize_options(ov_model, len(calibration), keep_float, mixers, rules)
    return nncf.quantize(ov_model, nncf.Dataset(list(calibration)), **options)
