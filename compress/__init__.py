"""Compression of search winners: structured pruning, INT8 quantization, verified exports, report.

    python -m compress.prune      torch-pruning + fine-tuning, to a measured latency or a ratio
    python -m compress.quantize   NNCF INT8 of the OpenVINO model (accuracy control as fallback)
    python -m compress.export     IR + ONNX of every variant, verified against PyTorch and timed

The public names below are imported lazily, so `python -m compress.X` does not import its own
module twice (runpy warns when a package __init__ imports the module it is about to run).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Target": "compress._target", "load_target": "compress._target",
    "prune_model": "compress.prune", "prune_target": "compress.prune",
    "quantize_model": "compress.quantize", "quantize_target": "compress.quantize",
    "export_target": "compress.export", "write_report": "compress.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'compress' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
