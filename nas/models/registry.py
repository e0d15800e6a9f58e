"""Mixer registry (timm style): each family file registers its stage builder and its compression rules.

    @register_mixer("catm", pruning=(PruningRule(CATM, frozen=("*",)),))
    def catm_stage(spec: StageSpec) -> nn.Module: ...

The name must be in the torch-free catalogue (`nas.mixers`); a new mixer passes its `MixerInfo`
instead of a name and is declared there too. The pruning rules are data (NNCF style) that
compress.prune reads, so it never reaches into a family's modules itself; the INT8 rules are data
too, per family in nas/quant_rules.yaml (nas.quant_rules, read by nas.quantization).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from nas.arch import StageSpec
from nas.mixers import MixerInfo, declare, forget, mixer_info, mixer_names

StageBuilder = Callable[[StageSpec], nn.Module]


@dataclass(frozen=True)
class Channels:
    """Where a channel set lives inside a module: in the layers (or bare parameters) whose names, relative
    to the module, match the glob `layers`, on their output (`side="out"`), input (`"in"`) or, for a bare
    parameter, tensor dim `side` (an int).

    Unit channels (`PruningRule.unit_in/unit_out`): the set appears `span` times back to back (q|k|v
    chunks of one 1x1 conv: span=3). Inner blocks (`Inner`): block b owns `span` x block consecutive
    channels of the layer, and that pattern repeats over the layer's width (a projection reading the
    heads of several scales, concatenated).
    """

    layers: str
    side: str | int = "out"
    span: int = 1


@dataclass(frozen=True)
class Inner:
    """A channel set inside a unit that nothing outside it sees (attention heads, an MLP's hidden width).

    Pruned by L2 magnitude at the pruning step's ratio, in whole blocks: `block` channels, or the value
    of the module attribute it names (a head: `"head_dim"`), so whole heads go. `scope` (a glob) applies
    the group separately to each submodule it matches ("" : the unit itself), `channels` relative to it.
    Blocks are rounded like torch-pruning's round_to when `block` is 1.
    """

    channels: tuple[Channels, ...]
    block: int | str = 1
    scope: str = ""
    min_blocks: int = 1


@dataclass(frozen=True)
class PruningRule:
    """torch-pruning rules for every instance of one module class.

    The leaf layers inside it whose names (relative to the instance) match a `frozen` glob keep
    their output channels, unless they also match a `prunable` glob; `frozen=("*",)` freezes the
    whole module. `unwrapped` names bare parameters (not inside a layer) and the dim that holds their
    channels, so torch-pruning can follow them.

    A *unit* (`unit_out` given): torch-pruning's dependency graph treats every instance as one node (a
    customized pruner) instead of tracing through ops it cannot follow (a C->1 gate broadcast over C,
    chunks into q/k/v, reshapes into heads, token gathers). Its input channels live where `unit_in`
    says, its output channels where `unit_out` says; `coupled=True`: input and output are the same
    channel set (a stage whose output is its input plus updates). `channel_groups` names the attribute
    holding the number of equal channel groups (heads reshaped from contiguous blocks), so the width is
    pruned by the same amount in every head. `inner` groups (heads, MLP hidden) are pruned too.
    """

    module: type[nn.Module]
    frozen: tuple[str, ...] = ()
    prunable: tuple[str, ...] = ()
    unwrapped: tuple[tuple[str, int], ...] = ()
    unit_in: tuple[Channels, ...] = ()
    unit_out: tuple[Channels, ...] = ()
    coupled: bool = False
    channel_groups: str | None = None
    inner: tuple[Inner, ...] = ()

    @property
    def is_unit(self) -> bool:
        return bool(self.unit_out)

    def frozen_layers(self, module: nn.Module) -> list[nn.Module]:
        def matches(name: str, globs: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(name, glob) for glob in globs)

        return [layer for name, layer in module.named_modules()
                if name and not any(True for _ in layer.children())
                and matches(name, self.frozen) and not matches(name, self.prunable)]

    def unwrapped_parameters(self, module: nn.Module) -> list[tuple[nn.Parameter, int]]:
        return [(module.get_parameter(name), dim) for name, dim in self.unwrapped]


@dataclass(frozen=True)
class Family:
    info: MixerInfo
    build: StageBuilder
    pruning: tuple[PruningRule, ...] = ()


_FAMILIES: dict[str, Family] = {}


def register_mixer(mixer: str | MixerInfo, *,
                   pruning: tuple[PruningRule, ...] = ()) -> Callable[[StageBuilder], StageBuilder]:
    """Decorator: register a stage builder (StageSpec -> module) under a catalogue name or a new MixerInfo."""
    if isinstance(mixer, MixerInfo):
        declare(mixer)
        info = mixer
    else:
        info = mixer_info(mixer)

    def decorate(builder: StageBuilder) -> StageBuilder:
        if info.name in _FAMILIES:
            raise ValueError(f"mixer {info.name!r} registered twice")
        _FAMILIES[info.name] = Family(info, builder, tuple(pruning))
        return builder

    return decorate


def unregister_mixer(name: str) -> None:
    """Remove a mixer registered with its own MixerInfo (from here and from the catalogue)."""
    forget(name)
    _FAMILIES.pop(name, None)


def mixer_builder(name: str) -> StageBuilder:
    try:
        return _FAMILIES[name].build
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; registered: {sorted(_FAMILIES)}") from None


def registered_mixers() -> list[str]:
    return sorted(_FAMILIES)


def families() -> Iterator[Family]:
    return iter(tuple(_FAMILIES.values()))


def check_catalogue() -> None:
    """Every catalogue name has a builder (raised at import of nas.models, not at first use)."""
    missing = [name for name in mixer_names() if name not in _FAMILIES]
    if missing:
        raise RuntimeError(f"mixers {missing} are in nas.mixers but no file in nas/models registers them")


def pruning_rules() -> list[PruningRule]:
    return [rule for family in families() for rule in family.pruning]

