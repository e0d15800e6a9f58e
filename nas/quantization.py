"""INT8 rules shared by INT8 latency (nas.latency) and the shipped INT8 model (compress.quantize).

NNCF post-training quantization of an OpenVINO model (`ModelType.TRANSFORMER`), with the ops below
left in float. Both paths use `quantize_openvino`, so the INT8 latency a search or benchmark sees is
that of the graph compress.quantize ships.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# Ops left in float: the LiteMLA core multiplies activations by activations (k^T v sums over all N
# tokens, so its range is wide and resolution-dependent) and divides two activations; the CageViT
# selection (TopK, gathers, scatters) moves indices, not values, and ties flip under INT8; its
# softmaxes are probability maps a coarse grid flattens. The convs and Linears, where the MACs
# are, are quantized. `keep_float=False` measures the cost of this choice.
KEEP_FLOAT_TYPES = ("Divide", "Softmax", "TopK", "GatherElements", "Gather", "ScatterElementsUpdate",
                    "ScatterUpdate", "ScatterNDUpdate")
# The CageViT CAM guide decides which tokens are selected; INT8 noise in its scores flips the TopK
# order, so the whole guide (its 1x1 conv included) stays float.
GUIDE_PATTERN = re.compile(r".*\.guide[/.].*")
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
    """The IgnoredScope for the ops above, and the names of the ops it matches in this model."""
    import nncf

    names = activation_matmuls(ov_model)
    matched = names + [op.get_friendly_name() for op in ov_model.get_ordered_ops()
                       if op.get_type_name() in KEEP_FLOAT_TYPES]
    guide = [op.get_friendly_name() for op in ov_model.get_ordered_ops()
             if GUIDE_PATTERN.match(op.get_friendly_name()) and op.get_type_name() != "Constant"]
    # validate=False: a pure-conv model has none of these types, which is fine, not an error.
    return (nncf.IgnoredScope(names=names, types=list(KEEP_FLOAT_TYPES), patterns=[GUIDE_PATTERN.pattern],
                              validate=False), matched + guide)


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
