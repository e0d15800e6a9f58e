"""Every file is written through nas.atomic: a writer that fails leaves the old file whole and no
temporary file behind; an OpenVINO IR pair replaces its .bin before its .xml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nas.atomic import atomic_ir, atomic_path, atomic_write


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write(target, '{"old": 1}')
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".metrics.json.")
        tmp.write_text('{"half')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # the mode a plain open() gives, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_ir_pair_replaces_bin_then_xml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from nas.export import convert_openvino, save_openvino
    from nas.latency import ov_read

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    ov_model = convert_openvino(model, 8)
    replaced: list[str] = []
    real_replace = os.replace

    def recording_replace(src: str | Path, dst: str | Path) -> None:
        replaced.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    save_openvino(ov_model, tmp_path / "model.xml")
    assert replaced == ["model.bin", "model.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    assert ov_read(tmp_path / "model.xml").inputs[0].get_shape() == [1, 3, 8, 8]
    # A writer that fails half-way leaves the previous pair as it was.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RuntimeError), atomic_ir(tmp_path / "model.xml") as tmp:
        tmp.with_suffix(".bin").write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
