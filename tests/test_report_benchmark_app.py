"""compress.report: OpenVINO's benchmark_app beside our clock, per exported IR row (real benchmark_app)."""

from __future__ import annotations

import json
from pathlib import Path

from compress.report import render_markdown, time_benchmark_app, winner_entry
from nas.export import convert_openvino, save_openvino
from nas.latency import supported_precisions
from nas.models import build_model
from tests.conftest import tiny_arch


def _row(path: Path, precision: str, latency_ms: float) -> dict:
    return {"path": str(path), "bytes": path.stat().st_size, "precision": precision, "accuracy": 0.5,
            "val_accuracy": 0.5, "max_abs_diff": 0.0, "top1_agreement": 1.0,
            "latency": {"estimate_ms": latency_ms, "median_ms": latency_ms, "cv": 0.01}}


def test_benchmark_app_rows_beside_our_clock(tmp_path: Path) -> None:
    winner = tmp_path / "1-abc"
    ir = save_openvino(convert_openvino(build_model(tiny_arch("mbconv")).eval(), 32), winner / "export" / "fp32.xml")
    files = {"xml": _row(ir, "fp32", 0.2)}
    if "bf16" in supported_precisions("openvino"):
        files["xml@bf16"] = _row(ir, "bf16", 0.1)
    (winner / "export" / "metrics.json").write_text(json.dumps(
        {"resolution": 32, "test_images": 10, "val_images": 10, "variants": {
            "fp32": {"files": files, "macs": 1, "params": 1}}}))
    record = time_benchmark_app(winner, threads=1, seconds=1)
    assert set(record["rows"]) == {"fp32"} | ({"fp32 @bf16"} if "xml@bf16" in files else set())
    assert all(row["median_ms"] > 0 and row["count"] > 0 for row in record["rows"].values())
    assert record["rows"]["fp32"]["infer_precision"] == "f32"
    entry = winner_entry(winner)
    assert entry["variants"]["fp32"]["benchmark_app_ms"] == record["rows"]["fp32"]["median_ms"]
    if "xml@bf16" in files:
        assert entry["speedups_benchmark_app"]["fp32/fp32 @bf16"] > 0
    markdown = render_markdown({"run": "r", "threads": 1, "winners": {winner.name: entry}})
    assert "benchmark_app ms" in markdown and f"{record['rows']['fp32']['median_ms']:.3f}" in markdown
