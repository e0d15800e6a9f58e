"""The mixer catalogue: every mixer name and what the search space needs to know about it, as data.

This is the one place mixer names live. It imports no torch, so validating a space YAML stays
cheap; `nas.models.registry` pairs each entry with its stage builder and checks that the two agree.
A mixer added in its own file under `nas/models/` declares its entry there, through
`nas.models.registry.register_mixer(MixerInfo(...))`; `mixer_info` finds such a mixer by importing
`nas.models` (and so torch) only when a name is not in the catalogue yet.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

# StageSpec fields beyond mixer/depth/width/expand/downsample that a mixer may read.
OPTIONAL_KNOBS = ("head_dim", "keep_ratio", "fusion_tokens", "pool_size")


@dataclass(frozen=True)
class MixerInfo:
    """One mixer: its name in the YAML, its family, the stage knobs it reads, its constraints."""

    name: str
    family: str
    attention: bool = False  # splits the width into heads: head_dim must divide width
    knobs: tuple[str, ...] = ()  # OPTIONAL_KNOBS it reads; the others keep their StageSpec defaults
    min_side: int = 1  # smallest feature-map side it works on
    # An mbconv downsampling into this stage keeps all its BNs (EfficientViT's full MBConv before
    # MBConv stages) rather than the fewer-norm variant it uses before its attention stages.
    full_norm_downsample: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.knobs) - set(OPTIONAL_KNOBS)
        if unknown:
            raise ValueError(f"mixer {self.name!r}: unknown knobs {sorted(unknown)}; allowed: {list(OPTIONAL_KNOBS)}")
        if self.attention != ("head_dim" in self.knobs):
            raise ValueError(f"mixer {self.name!r}: an attention mixer reads head_dim, and only it does")


_CATALOGUE: dict[str, MixerInfo] = {
    info.name: info
    for info in (
        MixerInfo("catm", "CAS-ViT"),
        MixerInfo("litemla", "EfficientViT", attention=True, knobs=("head_dim",)),
        MixerInfo("glsra", "CageViT", attention=True, knobs=OPTIONAL_KNOBS, min_side=2),
        MixerInfo("mbconv", "MobileNetV2/EfficientViT", full_norm_downsample=True),
    )
}


def declare(info: MixerInfo) -> None:
    """Add a mixer to the catalogue (nas.models.registry does this for mixers declared in their own file)."""
    if _CATALOGUE.get(info.name, info) != info:
        raise ValueError(f"mixer {info.name!r} declared twice, differently")
    _CATALOGUE[info.name] = info


def forget(name: str) -> None:
    """Remove a declared mixer (the built-in ones cannot be removed)."""
    if name in _BUILTIN:
        raise ValueError(f"mixer {name!r} is built in")
    _CATALOGUE.pop(name, None)


def mixer_names() -> tuple[str, ...]:
    """Every declared mixer, the built-in ones first, in catalogue order."""
    return tuple(_CATALOGUE)


def mixer_info(name: str) -> MixerInfo:
    """The catalogue entry of `name`; an unknown name first loads the mixer files of nas.models."""
    if name not in _CATALOGUE and "nas.models" not in sys.modules:
        importlib.import_module("nas.models")  # registers every nas/models/*.py family file
    try:
        return _CATALOGUE[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; known: {', '.join(map(repr, _CATALOGUE))}") from None


_BUILTIN = frozenset(_CATALOGUE)
