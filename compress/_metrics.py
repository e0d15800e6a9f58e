"""Model size measures: parameters, MACs (thop), bytes on disk."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import torch
from torch import nn

from nas.export import example_input


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int) -> int:
    """Multiply-accumulates of one batch-1 forward pass (thop; matmuls between activations excluded)."""
    from thop import profile

    clone = copy.deepcopy(model).eval()  # thop adds buffers to every module: keep the caller's clean
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        macs, _ = profile(clone, inputs=(example_input(resolution),), verbose=False)
    return int(macs)


def size_on_disk(*paths: Path) -> int:
    """Bytes of a model file plus its companions (.bin next to an OpenVINO .xml)."""
    total = 0
    for path in paths:
        path = Path(path)
        for part in (path, path.with_suffix(".bin") if path.suffix == ".xml" else None):
            if part is not None and part.is_file():
                total += part.stat().st_size
    return total
