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
class PruningRule:
    """torch-pruning rules for every instance of one module class.

    The leaf layers inside it whose names (relative to the instance) match a `frozen` glob keep
    their output channels, unless they also match a `prunable` glob; `frozen=("*",)` freezes the
    whole module. `unwrapped` names bare parameters (not inside a layer) and the dim that holds their
    channels, so torch-pruning can follow them.
    """

    module: type[nn.Module]
    frozen: tuple[str, ...] = ()
    prunable: tuple[str, ...] = ()
    unwrapped: tuple[tuple[str, int], ...] = ()

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

