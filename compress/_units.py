"""Pruning of the families' *units*: modules torch-pruning's dependency graph treats as one node.

A unit's `PruningRule` (nas.models.registry) says, as data, where its input and output channels live
inside it (`unit_in`, `unit_out`) and which inner channel sets it has (`inner`: attention heads, MLP
hidden widths). `UnitPruner` is the torch-pruning customized pruner built from such a rule: the
dependency graph couples the unit's input/output channels with the rest of the network (the stage's
residual width) and calls it with the indices to remove; it applies them to the declared layers with
torch-pruning's own layer pruners. `prune_inner` removes the lowest-L2 blocks (whole heads) of the
inner sets, which nothing outside the unit sees.
"""

from __future__ import annotations

import contextlib
import fnmatch
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.models.registry import Channels, Inner, PruningRule


def _named(module: nn.Module, glob: str) -> Iterator[tuple[str, nn.Module]]:
    return ((name, sub) for name, sub in module.named_modules() if name and fnmatch.fnmatchcase(name, glob))


def _has_weights(layer: nn.Module) -> bool:
    """A leaf layer with parameters (conv, linear, norm), not a container or an activation."""
    return not any(True for _ in layer.children()) and any(True for _ in layer.parameters(recurse=False))


def _layer_pruner(layer: nn.Module):  # noqa: ANN202 - a torch-pruning BasePruningFunc
    import torch_pruning as tp

    return tp.pruner.function.PrunerBox[tp.ops.module2type(layer)]


def _targets(module: nn.Module, spec: Channels) -> list[tuple[str, nn.Module | nn.Parameter]]:
    if isinstance(spec.side, int):
        return [(name, p) for name, p in module.named_parameters() if fnmatch.fnmatchcase(name, spec.layers)]
    return [(name, layer) for name, layer in _named(module, spec.layers) if _has_weights(layer)]


def _width(target: nn.Module | nn.Parameter, side: str | int) -> int:
    if isinstance(target, nn.Parameter):
        return int(target.shape[int(side)])
    pruner = _layer_pruner(target)
    return int(pruner.get_out_channels(target) if side == "out" else pruner.get_in_channels(target))


def _remove(module: nn.Module, name: str, target: nn.Module | nn.Parameter, side: str | int,
            idxs: Sequence[int]) -> None:
    """Remove channels `idxs` of one layer (torch-pruning's layer pruner) or bare parameter."""
    idxs = sorted(set(int(i) for i in idxs))
    if not idxs:
        return
    if isinstance(target, nn.Parameter):
        keep = [i for i in range(target.shape[int(side)]) if i not in set(idxs)]
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        kept = torch.index_select(target.data, int(side), torch.tensor(keep, device=target.device))
        setattr(owner, attr, nn.Parameter(kept, requires_grad=target.requires_grad))
        return
    grouped = isinstance(target, nn.Conv2d) and 1 < target.groups < target.out_channels
    if grouped and side == "in":
        raise ValueError(f"{name}: prune a grouped conv by its output side (whole groups)")
    per_group = target.out_channels // target.groups if grouped else 0
    pruner = _layer_pruner(target)
    (pruner.prune_out_channels if side == "out" else pruner.prune_in_channels)(target, idxs)
    if grouped:  # whole groups went (heads): torch-pruning leaves `groups` as it was
        if target.out_channels % per_group:
            raise ValueError(f"{name}: pruning must remove whole groups of {per_group} channels")
        target.groups = target.out_channels // per_group
        target.in_channels = target.groups * target.weight.shape[1]


def _unit_width(module: nn.Module, specs: tuple[Channels, ...]) -> int:
    for spec in specs:
        for _, target in _targets(module, spec):
            return _width(target, spec.side) // spec.span
    raise ValueError(f"{type(module).__name__}: no layer matches {[s.layers for s in specs]}")


def _prune_unit_channels(module: nn.Module, specs: tuple[Channels, ...], idxs: Sequence[int]) -> None:
    width = _unit_width(module, specs)
    for spec in specs:
        expanded = [i + s * width for s in range(spec.span) for i in idxs]
        for name, target in _targets(module, spec):
            _remove(module, name, target, spec.side, expanded)


def unit_pruner(rule: PruningRule):  # noqa: ANN201 - a torch-pruning BasePruningFunc
    """The torch-pruning customized pruner of a unit rule (input and output one function when coupled)."""
    import torch_pruning as tp

    class UnitPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = None

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            _prune_unit_channels(layer, rule.unit_out, idxs)
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            _prune_unit_channels(layer, rule.unit_in, idxs)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return _unit_width(layer, rule.unit_out)

        def get_in_channels(self, layer: nn.Module) -> int:
            return _unit_width(layer, rule.unit_in)

        def get_out_channel_groups(self, layer: nn.Module) -> int:
            return int(operator.attrgetter(rule.channel_groups)(layer)) if rule.channel_groups else 1

        get_in_channel_groups = get_out_channel_groups

    class CoupledUnitPruner(UnitPruner):
        # torch-pruning's convention for an intra-layer dependency: the same function for both sides
        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            _prune_unit_channels(layer, rule.unit_out, idxs)
            return layer

        prune_in_channels = prune_out_channels

        def get_in_channels(self, layer: nn.Module) -> int:
            return _unit_width(layer, rule.unit_out)

    return (CoupledUnitPruner if rule.coupled else UnitPruner)()


@contextlib.contextmanager
def opaque_units(model: nn.Module, pruners: dict[type, Any]) -> Iterator[None]:
    """While torch-pruning traces `model`, each unit computes a 1x1 conv of its input with constant zeros
    (same output shape): the graph then links the unit's output to its input and sees none of the ops
    inside it, which its own pruner handles (else the trace walks through them and couples channels
    wrongly)."""
    patched = []
    for unit in model.modules():
        pruner = pruners.get(type(unit))
        if pruner is None:
            continue
        shape = (pruner.get_out_channels(unit), pruner.get_in_channels(unit), 1, 1)

        def stub(x: torch.Tensor, *_: Any, shape: tuple[int, ...] = shape) -> torch.Tensor:
            return F.conv2d(x, x.new_zeros(shape))

        unit.forward = stub
        patched.append(unit)
    try:
        yield
    finally:
        for unit in patched:
            del unit.forward


# ---- inner sets: heads, hidden widths ---------------------------------------------------------------

def _scopes(unit: nn.Module, inner: Inner) -> list[nn.Module]:
    return [unit] if not inner.scope else [sub for _, sub in _named(unit, inner.scope)]


def _block(scope: nn.Module, inner: Inner) -> int:
    return int(getattr(scope, inner.block)) if isinstance(inner.block, str) else inner.block


def count_blocks(scope: nn.Module, inner: Inner) -> int:
    """Blocks (heads, or channels when block is 1) the first declared layer holds now."""
    spec = inner.channels[0]
    for _, target in _targets(scope, spec):
        return _width(target, spec.side) // (spec.span * _block(scope, inner))
    raise ValueError(f"{type(scope).__name__}: no layer matches {spec.layers!r}")


def _block_indices(width: int, blocks: int, size: int, span: int, chosen: Sequence[int]) -> list[int]:
    per_segment = blocks * span * size
    if width % per_segment:
        raise ValueError(f"width {width} is not a whole number of {blocks} blocks of {span} x {size}")
    return [seg * per_segment + b * span * size + j
            for seg in range(width // per_segment) for b in chosen for j in range(span * size)]


def _importance(scope: nn.Module, inner: Inner, blocks: int, size: int) -> torch.Tensor:
    """L2 magnitude per block over every declared weight (torch-pruning's group magnitude, p=2)."""
    total = torch.zeros(blocks)
    for spec in inner.channels:
        for _, target in _targets(scope, spec):
            weight = target if isinstance(target, nn.Parameter) else getattr(target, "weight", None)
            if weight is None:
                continue
            dim = int(spec.side) if isinstance(spec.side, int) else (0 if spec.side == "out" else 1)
            if isinstance(target, nn.Conv2d) and spec.side == "in" and target.groups > 1:
                continue  # a grouped conv's input side is not a plain dim of its weight
            if weight.dim() == 1 and dim != 0:
                continue
            width = weight.shape[dim]
            squares = weight.detach().float().pow(2).transpose(0, dim).reshape(width, -1).sum(1)
            for b in range(blocks):
                total[b] += squares[_block_indices(width, blocks, size, spec.span, [b])].sum()
    return total.sqrt()


def prune_inner(unit: nn.Module, inner: Inner, keep_share: float, initial: dict[int, int], round_to: int) -> None:
    """Keep the `keep_share` best blocks (of each scope's initial count) of one inner set of one unit."""
    for scope in _scopes(unit, inner):
        size = _block(scope, inner)
        blocks = count_blocks(scope, inner)
        start = initial.setdefault(id(scope), blocks)
        keep = int(start * keep_share)
        if size == 1 and round_to > 1 and keep > round_to:
            keep -= keep % round_to
        keep = min(blocks, max(inner.min_blocks, keep))
        if keep == blocks:
            continue
        order = torch.argsort(_importance(scope, inner, blocks, size))
        drop = sorted(int(b) for b in order[: blocks - keep])
        for spec in inner.channels:
            for name, target in _targets(scope, spec):
                width = _width(target, spec.side)
                _remove(scope, name, target, spec.side, _block_indices(width, blocks, size, spec.span, drop))
