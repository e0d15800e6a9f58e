"""The compression report of a run: <run>/compress/report.json and report.md, one entry per winner.

Built only from the metrics files the other commands wrote, so it can be rewritten at any time.
Accuracy and latency per variant are those of its OpenVINO IR at the target resolution, one row per
precision it ran at: `fp32` (pinned f32), `fp32 @bf16` (the same IR with OpenVINO's bf16 hint, where
the CPU has it), `pruned`, `int8`. Speed-ups compare INT8 with both fp32 and bf16. Latency by two
clocks side by side: ours (nas.latency, written by compress.export) and OpenVINO's `benchmark_app`
(sync, 1 stream, the run's threads, the row's precision pinned; the invocation and parsing of
bench/latency_bench.py), which `python -m compress.report --benchmark-app` (or
`compress.quantize --benchmark-app`) runs on every exported IR into <winner>/export/benchmark_app.json.

    python -m compress.report [--run R] [--benchmark-app] [--seconds 5]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from compress._target import Target, read_json, write_json
from nas.cli import installed_command
from nas.errors import UserError, run_cli
from nas.runs import atomic_write

VARIANTS = ("fp32", "pruned", "int8")
BENCHMARK_APP_FILE = "benchmark_app.json"  # under <winner>/export/


def _benchmark_app() -> Any:
    """bench.latency_bench.run_benchmark_app (one invocation and parser for the whole project)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "latency_bench.py").is_file():
        raise UserError("benchmark_app timing needs the source checkout's bench/latency_bench.py")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.latency_bench import run_benchmark_app

    if installed_command("benchmark_app") is None:
        raise UserError("benchmark_app not found (pip's openvino installs it next to python)")

    return run_benchmark_app


def time_benchmark_app(directory: Path, threads: int, seconds: int = 5) -> dict[str, Any]:
    """benchmark_app on every IR row of one winner's export (its precision pinned); writes and returns
    <winner>/export/benchmark_app.json: {row name: {median_ms, average_ms, min_ms, count, others_cpu}}."""
    from nas.latency import describe_machine
    from nas.latency._precision import openvino_precision_config

    export = read_json(directory / "export" / "metrics.json")
    if export is None:
        raise UserError(f"{directory / 'export' / 'metrics.json'}: missing; run python -m compress.export first")
    run = _benchmark_app()
    rows: dict[str, Any] = {}
    for name in VARIANTS:
        for label, ir in export["variants"].get(name, {}).get("files", {}).items():
            if label.startswith("xml"):
                hint = openvino_precision_config(ir.get("precision", "fp32"))["INFERENCE_PRECISION_HINT"]
                row_name = name if label == "xml" else f"{name} @{label.split('@', 1)[1]}"
                rows[row_name] = {"precision": ir.get("precision", "fp32"), "infer_precision": hint,
                                  **run(Path(ir["path"]), threads, seconds, hint)}
    record = {"flags": f"-hint none -nstreams 1 -nthreads {threads} -nireq 1 -api sync -t {seconds} "
                       "-infer_precision <row>", "machine": describe_machine(), "loadavg": os.getloadavg(),
              "rows": rows}
    write_json(directory / "export" / BENCHMARK_APP_FILE, record)
    return record


def winner_entry(directory: Path) -> dict[str, Any]:
    """Summary of one winner's compression from its pruned/, int8/ and export/ metrics."""
    export = read_json(directory / "export" / "metrics.json") or {"variants": {}}
    rows: dict[str, Any] = {}
    for name in VARIANTS:
        record = export["variants"].get(name)
        if record is None:
            continue
        onnx = record["files"].get("onnx", {})
        for label, ir in record["files"].items():
            if not label.startswith("xml"):
                continue
            latency = ir.get("latency", {})
            row_name = name if label == "xml" else f"{name} @{label.split('@', 1)[1]}"
            rows[row_name] = {
                "precision": ir.get("precision", "fp32"), "accuracy": ir["accuracy"],
                "val_accuracy": ir.get("val_accuracy"),
                "latency_ms": latency.get("estimate_ms"), "latency_median_ms": latency.get("median_ms"),
                "latency_cv": latency.get("cv"),
                "onnx_latency_ms": onnx.get("latency", {}).get("estimate_ms") if label == "xml" else None,
                "ir_bytes": ir["bytes"], "onnx_bytes": onnx.get("bytes"), "macs": record["macs"],
                "params": record["params"], "max_abs_diff": ir["max_abs_diff"], "top1_agreement": ir["top1_agreement"],
            }
    bench = (read_json(directory / "export" / BENCHMARK_APP_FILE) or {}).get("rows", {})
    for row_name, row in rows.items():  # benchmark_app beside our clock, where it has run on this export
        row["benchmark_app_ms"] = bench.get(row_name, {}).get("median_ms")
    fp32_test = rows.get("fp32", {}).get("accuracy")
    for row in rows.values():  # points lost on the test split against the FP32 IR at fp32
        row["drop_points"] = None if fp32_test is None else 100.0 * (fp32_test - row["accuracy"])
    return {"resolution": export.get("resolution"), "test_images": export.get("test_images"),
            "val_images": export.get("val_images"), "weights": export.get("weights", "proxy"),
            "machine": export.get("machine"), "precisions": export.get("precisions"),
            "variants": rows, "speedups": _speedups(rows),
            "speedups_benchmark_app": _speedups(rows, "benchmark_app_ms"),
            "prune": read_json(directory / "pruned" / "metrics.json"),
            "quantize": read_json(directory / "int8" / "metrics.json")}


def _block_changes(prune: dict[str, Any]) -> str:
    """Per-block parameter counts (and unit widths/heads) before -> after pruning, one line."""
    before, after = prune["before"].get("blocks") or {}, prune["after"].get("blocks") or {}
    parts = []
    for name, row in before.items():
        new = after.get(name, {})
        kind = row.get("mixer") or row.get("kind")
        text = f"{name}{f' ({kind})' if kind else ''} {row['params'] / 1e3:.1f}k -> {new.get('params', 0) / 1e3:.1f}k"
        for key in ("width", "heads"):
            if key in row:
                text += f", {key} {row[key]} -> {new.get(key)}"
        parts.append(text)
    return "; ".join(parts)


def _speedups(rows: dict[str, Any], clock: str = "latency_ms") -> dict[str, float]:
    """Latency ratios (baseline / variant, > 1 is faster) between the variants present, by one clock."""
    out = {}
    pairs = [("fp32", "pruned"), ("fp32", "int8"), ("pruned", "int8"), ("fp32", "fp32 @bf16"),
             ("fp32 @bf16", "int8"), ("pruned @bf16", "int8"), ("fp32", "fp32 @fp16"), ("fp32 @fp16", "int8")]
    for base, other in pairs:
        a, b = rows.get(base, {}).get(clock), rows.get(other, {}).get(clock)
        if a and b:
            out[f"{base}/{other}"] = a / b
    return out


def write_report(target: Target) -> Path:
    root = target.run_dir / "compress"
    entries = {d.name: winner_entry(d) for d in sorted(root.iterdir()) if d.is_dir() and (d / "export").is_dir()}
    from nas.latency import describe_machine

    report = {"run": str(target.run_dir), "backend": "openvino (IR) / onnxruntime (ONNX)",
              "threads": target.threads, "machine": describe_machine(), "winners": entries}
    write_json(root / "report.json", report)
    atomic_write(root / "report.md", render_markdown(report))
    return root / "report.md"


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def render_markdown(report: dict[str, Any]) -> str:
    from nas.latency import machine_line

    lines = [f"# Compression report: {report['run']}", ""]
    if report.get("machine"):
        lines += [f"Measured on {machine_line(report['machine'])}.", ""]
    for name, entry in report["winners"].items():
        lines += [f"## {name}", "",
                  f"OpenVINO IR at {entry['resolution']} px from the **{entry['weights']}** weights"
                  + ("" if entry["weights"] == "final" else " (no final training at this resolution: accuracies "
                     "are not meaningful; run `python -m nas.train` first)")
                  + f"; top-1 on the run's {entry['test_images']} test images (val: {entry['val_images']} images); "
                  f"threads {report['threads'] or 'all'}; latency = min of pass medians (median, CV alongside). "
                  "Precision is pinned per row: `fp32` runs the FP32 IR with OpenVINO's hint f32, `@bf16` the same "
                  "IR with hint bf16, `int8` the NNCF IR with its float ops in f32. Agreement and max abs diff: "
                  "against the PyTorch model the row was made from (INT8: the model it was quantized from).", "",
                  "| variant | precision | test top-1 % | val top-1 % | drop vs fp32 (points) | latency ms | median ms "
                  "| CV % | benchmark_app ms | ONNX RT ms | IR MB | MMACs | params k | max abs diff | top-1 agree % |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for variant, row in entry["variants"].items():
            lines.append(
                f"| {variant} | {row.get('precision', 'fp32')} | "
                f"{_fmt(row['accuracy'], '.2f', 100)} | {_fmt(row.get('val_accuracy'), '.2f', 100)} | "
                f"{_fmt(row.get('drop_points'), '.2f')} | {_fmt(row['latency_ms'], '.3f')} | "
                f"{_fmt(row['latency_median_ms'], '.3f')} | {_fmt(row['latency_cv'], '.1f', 100)} | "
                f"{_fmt(row.get('benchmark_app_ms'), '.3f')} | {_fmt(row['onnx_latency_ms'], '.3f')} | "
                f"{_fmt(row['ir_bytes'], '.2f', 1e-6)} | "
                f"{_fmt(row['macs'], '.1f', 1e-6)} | {_fmt(row['params'], '.1f', 1e-3)} | "
                f"{_fmt(row['max_abs_diff'], '.2e')} | {_fmt(row['top1_agreement'], '.1f', 100)} |")
        if entry["speedups"]:
            lines += ["", "Speed-ups (latency ratio, >1 = faster), our clock: "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in entry["speedups"].items())]
        if entry.get("speedups_benchmark_app"):
            lines += ["", "Speed-ups by benchmark_app (sync, 1 stream, the run's threads; median): "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in entry["speedups_benchmark_app"].items())]
        if entry["quantize"]:
            q = entry["quantize"]
            lines += ["", f"INT8: {q['method']} of the {q['source']} model, {q['fake_quantize_ops']} FakeQuantize ops, "
                      f"{len(q['ignored_ops'])} ops kept float, val drop {q['drop_points']:.2f} points "
                      f"against its source (limit {q.get('int8_budget_points', q['max_drop_points']):.2f}"
                      + (f" = --max-drop {q['max_drop_points']} minus pruning's {q['pruning_cost_points']:.2f}"
                         if "pruning_cost_points" in q else "") + ")."]
            if q.get("pruned_skipped"):
                lines.append(f"The pruned model was not quantized: pruning alone cost {q['pruning_cost_points']:.2f} "
                             f"points of val top-1 (--max-drop {q['max_drop_points']}).")
        if entry["prune"]:
            p = entry["prune"]
            lines += ["", f"Pruning: channel ratio {p['ratio']:.2f} in {p['steps']} step(s), "
                      f"{p['fine_tune_epochs']} fine-tune epoch(s){' with distillation' if p['distill'] else ''}; "
                      f"val top-1 at {p.get('accuracy_resolution', '?')} px {100 * p['before']['accuracy']:.2f}% -> "
                      f"{100 * p['after']['accuracy']:.2f}% ({p.get('weights', 'proxy')} weights)."]
            if blocks := _block_changes(p):
                lines.append(f"Parameters per block, before -> after: {blocks}.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from compress._target import load_target
    from nas.cli import Parser, positive_int

    parser = Parser(prog="python -m compress.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="search run directory (default: the latest)")
    parser.add_argument("--benchmark-app", action="store_true",
                        help="time every exported IR with OpenVINO's benchmark_app first (sync, 1 stream, the "
                             "run's threads)")
    parser.add_argument("--seconds", type=positive_int, default=5, help="benchmark_app -t per IR (default 5)")
    args = parser.parse_args(argv)
    target = load_target(args.run, None)
    if args.benchmark_app:
        for directory in sorted((target.run_dir / "compress").iterdir()):
            if (directory / "export" / "metrics.json").is_file():
                time_benchmark_app(directory, target.threads or 2, args.seconds)
    print(f"report: {write_report(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
