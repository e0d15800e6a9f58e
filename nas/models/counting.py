"""The project's one MAC counter: thop's conv/Linear hooks plus the tensor products written inline.

A MAC is one multiply-accumulate of a convolution, a Linear or a matmul/einsum/attention, plus one
per output element of a product of two activations (gates such as z * sigmoid(g(z)), CATM's
similarity * v). thop counts only what leaf modules do, and attention is written inline (q @ k.T,
softmax @ v, einsum, gates), so a torch-function mode counts those. thop's own rules for norms,
pooling and softmax (2-4 "ops" per element) are switched off through `custom_ops`: none of them
multiply-accumulates, and BatchNorm folds into the preceding conv when deployed. This is the
count the published papers give (conv/Linear/matmul MACs) and what FlopCounterMode counts, as 2
FLOPs per MAC (tests/test_models.py), gates apart. Used by `python -m nas.models`, compress
(metrics) and nas.latency (roofline).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm, torch.mm,
            torch.Tensor.mm}
_MULTIPLIES = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}


def _einsum_macs(equation: str, operands: tuple[Tensor, ...], out: Tensor) -> int:
    """Output elements x the size of every summed-out index."""
    inputs, arrow, output = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for term, operand in zip(inputs.split(","), operands, strict=True):
        lead, _, trail = term.partition("...")
        pairs = list(zip(lead, operand.shape, strict=False))
        if trail:
            pairs += zip(trail, operand.shape[operand.dim() - len(trail):], strict=True)
        for index, size in pairs:
            sizes[index] = max(sizes.get(index, 1), size)  # broadcasting: 1 against n is n
    if not arrow:  # implicit output: the indices that appear once
        letters = inputs.replace(",", "").replace(".", "")
        output = "".join(c for c in letters if letters.count(c) == 1)
    return out.numel() * math.prod(size for index, size in sizes.items() if index not in output)


class _FunctionalMacs(TorchFunctionMode):
    """Counts the tensor products that run outside thop's module hooks."""

    def __init__(self, gates: bool) -> None:
        super().__init__()
        self.gates = gates
        self.macs = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _MATMULS:
            self.macs += out.numel() * args[0].shape[-1]
        elif func is torch.einsum:
            operands = tuple(args[1]) if len(args) == 2 and isinstance(args[1], list | tuple) else tuple(args[1:])
            self.macs += _einsum_macs(args[0], operands, out)
        elif func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = args[:3]
            scores = out.numel() // v.shape[-1] * k.shape[-2]  # (..., L, S)
            self.macs += scores * q.shape[-1] + scores * v.shape[-1]
        elif (func in _MULTIPLIES and self.gates and len(args) == 2
              and all(isinstance(a, Tensor) and a.numel() > 1 and not isinstance(a, nn.Parameter) for a in args)):
            self.macs += out.numel()
        return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int, *, gates: bool = True) -> int:
    """Multiply-accumulates of one batch-1 eval forward pass at `resolution` x `resolution`.

    `gates=False` leaves out the products of two activations: what FlopCounterMode counts (FLOPs/2).
    """
    with warnings.catch_warnings():  # thop 0.1 uses distutils' LooseVersion
        warnings.simplefilter("ignore", DeprecationWarning)
        from thop import profile
        from thop.profile import register_hooks
        from thop.vision.basic_hooks import count_convNd, count_linear, zero_ops

    not_macs = {kind: zero_ops for kind, hook in register_hooks.items() if hook not in (count_convNd, count_linear)}
    clone = copy.deepcopy(model).eval()  # thop adds buffers to every module: keep the caller's clean
    functional = _FunctionalMacs(gates)
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), functional:
        macs, _ = profile(clone, inputs=(x,), custom_ops=not_macs, verbose=False)
    return int(macs) + functional.macs
