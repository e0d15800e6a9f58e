"""The architecture description: a frozen, hashable, YAML-serialisable value.

An `Arch` says what to build and nothing about how it is trained or timed. Its hash is a
SHA-1 of canonical JSON, so it is stable across processes and machines (unlike `hash()`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

STEM_KINDS = ("conv2", "dsconv", "patch")
STEM_STRIDES = {"conv2": 4, "dsconv": 2, "patch": 16}  # output stride of each stem (nas.models.blocks)
DOWNSAMPLE_KINDS = ("none", "conv", "mbconv")
HEAD_KINDS = ("cas", "evit", "vit")


@dataclass(frozen=True)
class StageSpec:
    """One stage: an optional stride-2 downsampling block, then `depth` blocks of one mixer."""

    mixer: str
    depth: int
    width: int
    expand: float = 4.0
    downsample: str = "conv"
    head_dim: int = 16  # attention mixers only (nas.mixers says which knobs each mixer reads)
    keep_ratio: float = 0.5  # glsra: share of tokens kept as major tokens
    fusion_tokens: int = 4  # glsra: number of fusion tokens the minor tokens are merged into
    pool_size: int = 7  # glsra: spatial-reduction grid side for keys/values

    def __post_init__(self) -> None:
        # YAML gives 4 where we mean 4.0: normalise so equal stages hash equally.
        for name, kind in (("expand", float), ("keep_ratio", float), ("depth", int), ("width", int),
                           ("head_dim", int), ("fusion_tokens", int), ("pool_size", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    @property
    def heads(self) -> int:
        return self.width // self.head_dim


@dataclass(frozen=True)
class Arch:
    """A whole network: stem, stages, head."""

    stages: tuple[StageSpec, ...]
    stem_kind: str = "dsconv"
    stem_width: int = 16
    stem_depth: int = 1
    head_kind: str = "evit"
    head_widths: tuple[int, ...] = ()
    num_classes: int = 1000
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "head_widths", tuple(int(w) for w in self.head_widths))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        data["head_widths"] = list(self.head_widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arch:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown arch keys {sorted(unknown)}; allowed: {sorted(known)}")
        stage_keys = {f.name for f in fields(StageSpec)}
        stages = []
        for i, stage in enumerate(data.get("stages", [])):
            bad = set(stage) - stage_keys
            if bad:
                raise ValueError(f"stages[{i}]: unknown keys {sorted(bad)}; allowed: {sorted(stage_keys)}")
            stages.append(StageSpec(**stage))
        rest = {k: v for k, v in data.items() if k != "stages"}
        if "head_widths" in rest:
            rest["head_widths"] = tuple(rest["head_widths"])
        return cls(stages=tuple(stages), **rest)

    def canonical_json(self) -> str:
        data = self.to_dict()
        data.pop("name")  # a label, not part of the network
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha1(self.canonical_json().encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Arch:
        return cls.from_dict(yaml.safe_load(text))

    def save(self, path: str | Path) -> None:
        from nas.atomic import atomic_write

        atomic_write(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        return cls.from_yaml(Path(path).read_text())
