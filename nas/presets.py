"""Published architectures as fixed `Arch` values, read from search_spaces/presets/*.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from nas.arch import Arch
from nas.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "search_spaces" / "presets"
PUBLISHED_FILE = PRESET_DIR / "published.yaml"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p != PUBLISHED_FILE)


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if name not in list_presets():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return path


def load_preset(name: str, num_classes: int | None = None) -> Arch:
    """The published architecture; `num_classes` swaps the classifier for another dataset."""
    from nas.space import load_arch_file  # validation lives with the space

    arch = load_arch_file(preset_path(name))
    if num_classes is not None:
        arch = Arch.from_dict({**arch.to_dict(), "num_classes": num_classes})
    return arch


def published_counts() -> dict[str, dict]:
    """Published parameter counts (and their sources) for the faithfulness check."""
    return yaml.safe_load(PUBLISHED_FILE.read_text())
