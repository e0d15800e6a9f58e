"""Mixer registry: one stage builder per mixer name (timm-style `register` + lookup)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nas.arch import StageSpec

StageBuilder = Callable[[StageSpec], nn.Module]
_MIXERS: dict[str, StageBuilder] = {}


def register_mixer(name: str) -> Callable[[StageBuilder], StageBuilder]:
    def decorate(builder: StageBuilder) -> StageBuilder:
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} registered twice")
        _MIXERS[name] = builder
        return builder

    return decorate


def mixer_builder(name: str) -> StageBuilder:
    try:
        return _MIXERS[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; registered: {sorted(_MIXERS)}") from None


def registered_mixers() -> list[str]:
    return sorted(_MIXERS)
