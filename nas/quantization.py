"""INT8 rules shared by INT8 latency (nas.latency) and the shipped INT8 model (compress.quantize).

NNCF post-training quantization of an OpenVINO model (`ModelType.TRANSFORMER`), with float islands:
every MatMul of two activations (attention: its range is wide and data-dependent), plus the op
types and name patterns each model family declares with its mixer (nas/models/<family>.py,
`QuantizationRules`). The convs and Linears, where the MACs are, are quantized. `keep_float=False`
measures the cost of this choice. Both paths use `quantize_openvino`, so the INT8 latency a search
or benchmark sees is that of the graph compress.quantize ships.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_PASS_THROUGH = {"Convert", "Transpose", "Reshape", "Unsqueeze", "Squeeze"}


def _is_constant(node: Any) -> bool:
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    return kind in _PASS_THROUGH and all(_is_constant(i.get_source_output().get_node()) for i in node.inputs())


def activation_matmuls(ov_model: Any) -> list[str]:
    """Names of MatMuls whose two inputs are both activations (a Linear's MatMul has a constant)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() == "MatMul"
            and not any(_is_constant(i.get_source_output().get_node()) for i in op.inputs())]


def keep_float_scope(ov_model: Any) -> tuple[Any, list[str]]:
    """The IgnoredScope for the float islands, and the names of the ops it matches in this model."""
    import nncf

    from nas.models.registry import float_islands

    rules = float_islands()  # every registered family's: an op type absent from this graph matches nothing
    patterns = [re.compile(p) for p in rules.patterns]
    ops = [op for op in ov_model.get_ordered_ops() if op.get_type_name() != "Constant"]
    names = activation_matmuls(ov_model)
    matched = names + [op.get_friendly_name() for op in ops if op.get_type_name() in rules.types]
    matched += [op.get_friendly_name() for op in ops if any(p.match(op.get_friendly_name()) for p in patterns)]
    # validate=False: a pure-conv model has none of these types, which is fine, not an error.
    return (nncf.IgnoredScope(names=names, types=list(rules.types), patterns=list(rules.patterns), validate=False),
            matched)


def quantize_options(ov_model: Any, subset_size: int, keep_float: bool = True) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments for nncf.quantize / quantize_with_accuracy_control, and the ops kept float."""
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lists every op it skips
    scope, ignored = keep_float_scope(ov_model) if keep_float else (None, [])
    return dict(model_type=nncf.ModelType.TRANSFORMER, ignored_scope=scope, subset_size=subset_size), ignored


def quantize_openvino(ov_model: Any, calibration: Sequence[np.ndarray], keep_float: bool = True) -> Any:
    """NNCF INT8 of an OpenVINO model calibrated on `calibration` (batch-1 NCHW arrays)."""
    import nncf

    options, _ = quantize_options(ov_model, len(calibration), keep_float)
    return nncf.quantize(ov_model, nncf.Dataset(list(calibration)), **options)
