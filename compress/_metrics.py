"""Model size measures: parameters and MACs (the project counter, nas.models.counting), bytes on disk."""

from __future__ import annotations

from pathlib import Path

from nas.models.counting import count_macs, count_params

__all__ = ["count_macs", "count_params", "size_on_disk"]


def size_on_disk(*paths: Path) -> int:
    """Bytes of a model file plus its companions (.bin next to an OpenVINO .xml)."""
    total = 0
    for path in paths:
        path = Path(path)
        for part in (path, path.with_suffix(".bin") if path.suffix == ".xml" else None):
            if part is not None and part.is_file():
                total += part.stat().st_size
    return total
