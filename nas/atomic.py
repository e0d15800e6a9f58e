"""Atomic file writes: every file the project writes goes to a temporary name in the same directory
and is renamed over the final name (os.replace), so a killed process never leaves half a file.

    atomic_write(path, text_or_bytes)          # content in hand
    with atomic_path(path) as tmp: save(tmp)   # a writer that takes a path (torch.save, savefig, ONNX)
    with atomic_ir(path) as tmp: ov.save_model(model, tmp)   # an OpenVINO IR pair: .bin, then .xml

Temporary names are `.<name>.<random><suffix>` (hidden, same suffix, as some writers choose the
format from it); a writer that fails or is interrupted leaves only such a name behind, never a
final one. No module imports here: `nas.arch` uses it too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _file_mode() -> int:
    umask = os.umask(0o022)  # mkstemp creates 0600: give files the mode a plain open() would
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _file_mode()


def _temporary(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, _MODE)
    return Path(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) for the caller to write; it replaces `path` when
    the block ends normally and is removed when it raises."""
    path = Path(path)
    tmp = _temporary(path, path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


@contextmanager
def atomic_ir(xml: str | Path) -> Iterator[Path]:
    """A temporary .xml path beside `xml` for an OpenVINO IR pair (the writer puts the .bin beside it).

    The .bin replaces the old one first, then the .xml (the .xml is what readers open and what
    commands check for): a new .xml never points into an old .bin. A kill between the two renames
    leaves the old .xml beside the new .bin; running the command again rewrites both."""
    xml = Path(xml)
    tmp = _temporary(xml, ".xml")
    tmp_bin = tmp.with_suffix(".bin")
    try:
        yield tmp
        if tmp_bin.exists():
            os.replace(tmp_bin, xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_bin.unlink(missing_ok=True)
