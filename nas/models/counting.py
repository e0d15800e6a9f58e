"""The project's one MAC counter: thop's module hooks plus the tensor products written as functions.

thop counts what leaf modules do (convs, Linears, norms, pooling) and nothing written inline in a
`forward`. Attention is written inline (`q @ k.T`, `softmax @ v`, einsum, gates `z * g(z)`), so a
torch-function mode counts those alongside: a matmul/einsum/SDPA as its multiply-accumulates, a
product of two activations as one multiply per output element. Used by `python -m nas.models`,
compress (metrics) and nas.latency (roofline).
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

    def __init__(self, products_only: bool) -> None:
        super().__init__()
        self.products_only = products_only
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
        elif (func in _MULTIPLIES and not self.products_only and len(args) == 2
              and all(isinstance(a, Tensor) and a.numel() > 1 and not isinstance(a, nn.Parameter) for a in args)):
            self.macs += out.numel()
        return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int, *, products_only: bool = False) -> int:
    """Multiply-accumulates of one batch-1 eval forward pass at `resolution` x `resolution`.

    `products_only`: only convolutions, Linears and matmuls/einsums, i.e. what torch's
    FlopCounterMode counts (as 2 FLOPs per MAC); the default adds thop's norm, softmax and pooling
    counts and the products of two activations.
    """
    with warnings.catch_warnings():  # thop 0.1 uses distutils' LooseVersion
        warnings.simplefilter("ignore", DeprecationWarning)
        from thop import profile
        from thop.profile import register_hooks
        from thop.vision.basic_hooks import count_convNd, count_linear, zero_ops

    custom_ops = {kind: zero_ops for kind, hook in register_hooks.items()
                  if hook not in (count_convNd, count_linear)} if products_only else {}
    clone = copy.deepcopy(model).eval()  # thop adds buffers to every module: keep the caller's clean
    functional = _FunctionalMacs(products_only)
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), functional:
        macs, _ = profile(clone, inputs=(x,), custom_ops=custom_ops, verbose=False)
    return int(macs) + functional.macs
