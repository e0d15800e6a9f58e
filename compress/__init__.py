"""Compression of search winners: structured pruning, INT8 quantization, verified exports, report.

    python -m compress.prune      torch-pruning + fine-tuning, to a measured latency or a ratio
    python -m compress.quantize   NNCF INT8 of the OpenVINO model (accuracy control as fallback)
    python -m compress.export     IR + ONNX of every variant, verified against PyTorch and timed
"""

from compress._target import Target, load_target
from compress.export import export_target
from compress.prune import prune_model, prune_target
from compress.quantize import quantize_model, quantize_target
from compress.report import write_report

__all__ = ["Target", "export_target", "load_target", "prune_model", "prune_target", "quantize_model",
           "quantize_target", "write_report"]
