"""Do a search's winners meet its budget by OpenVINO's own clock? benchmark_app on each winner's IR.

    python -m bench.winners_benchmark_app --run RUN [--out FILE] [--seconds 10] [--calibration 64]

For every winner on the run's front (winners/<trial>-<hash>/), the model the search timed is built
from arch.yaml + weights.pt, converted to OpenVINO at the target resolution and, for a run searched at
`--precision int8`, quantized as compress.quantize ships it (nas.quantization's rules, the stage
mixers, `--calibration` class-stratified train images of the run's own split at the target
resolution). benchmark_app then times each IR (sync, 1 stream, the run's threads, the precision hint
the search pinned), beside the latency the search recorded. Run it on an idle machine (the JSON
records the load and each run's share of other processes' CPU).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/winners_benchmark_app.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.cli import Parser
from nas.errors import UserError, run_cli
from nas.runs import list_winners, read_config, resolve_run

RESULTS = Path(__file__).resolve().parent / "results"


def winner_ir(winner: Any, resolution: int, precision: str, calibration: list[Any], directory: Path) -> Path:
    """The winner's IR as the search timed it (INT8: quantized with the shipped rules)."""
    from nas.export import convert_openvino, save_openvino
    from nas.latency._backends import nncf_progress_hidden

    model = winner.model()
    ov_model = convert_openvino(model, resolution)
    if precision == "int8":
        from nas.quantization import mixers_of, quantize_openvino

        with nncf_progress_hidden():
            ov_model = quantize_openvino(ov_model, calibration, mixers=mixers_of(model))
    return save_openvino(ov_model, directory / f"{winner.trial}-{winner.arch.hash}.{precision}.xml")


def check_run(run_dir: Path, seconds: int, calibration_images: int) -> dict[str, Any]:
    from bench.latency_bench import run_benchmark_app
    from nas.final import run_splits
    from nas.latency import describe_machine, runtime_version
    from nas.latency._precision import openvino_precision_config
    from nas.report import describe

    config = read_config(run_dir)
    if (config.get("backend") or "openvino") != "openvino":
        raise UserError(f"{run_dir}: searched on {config.get('backend')}; benchmark_app times OpenVINO runs only")
    precision = config.get("precision") or "fp32"
    threads = int(config.get("threads") or os.cpu_count() or 1)
    budget = float(config["budget_ms"])
    winners = [w for w in list_winners(run_dir) if w.rank is not None]
    if not winners:
        raise UserError(f"{run_dir}/winners: no winners on the front")
    resolution = int(winners[0].metrics["latency"]["resolution"])
    calibration: list[Any] = []
    if precision == "int8":
        from nas.data import calibration_subset

        images = calibration_subset(run_splits(run_dir, resolution, config), calibration_images)
        calibration = [image[None].numpy() for image in images]
    rules = None
    if precision == "int8":  # the IR must be the graph the search timed: the same INT8 rules
        from nas.quantization import rules_digest

        rules = rules_digest()
        for winner in winners:
            key = winner.metrics["latency"].get("key", "")
            if not key.endswith(f"+rules-{rules}"):
                raise UserError(f"{winner.directory}: timed under other INT8 rules ({key}) than "
                                f"nas/quant_rules.yaml now ({rules})")
    hint = openvino_precision_config(precision)["INFERENCE_PRECISION_HINT"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitnas-winners-") as tmp:
        irs = [winner_ir(w, resolution, precision, calibration, Path(tmp)) for w in winners]
        load_before = os.getloadavg()
        for winner, ir in zip(winners, irs, strict=True):
            timed = run_benchmark_app(ir, threads, seconds, hint)
            searched = float(winner.metrics["latency_ms"])
            rows.append({"rank": winner.rank, "trial": winner.trial, "arch_hash": winner.arch.hash,
                         "architecture": describe(winner.arch), "accuracy": winner.metrics.get("accuracy"),
                         "search_ms": searched, "benchmark_app": timed,
                         "benchmark_app_over_search": timed["median_ms"] / searched,
                         "within_budget": timed["median_ms"] <= budget})
            print(f"rank {winner.rank} trial {winner.trial}: search {searched:.2f} ms, benchmark_app median "
                  f"{timed['median_ms']:.2f} ms ({'within' if rows[-1]['within_budget'] else 'OVER'} {budget:g} ms)")
        load_after = os.getloadavg()
    return {"run": str(run_dir), "budget_ms": budget, "precision": precision, "infer_precision": hint,
            "threads": threads, "resolution": resolution, "int8_rules_digest": rules,
            "calibration_images": calibration_images if precision == "int8" else None,
            "flags": f"-hint none -nstreams 1 -nthreads {threads} -nireq 1 -api sync -t {seconds} "
                     f"-infer_precision {hint}",
            "machine": describe_machine(), "runtime": runtime_version("openvino"),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "all_within_budget": all(r["within_budget"] for r in rows), "winners": rows}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.winners_benchmark_app", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="search run directory or name under results/")
    parser.add_argument("--seconds", type=int, default=10, help="benchmark_app -t per winner")
    parser.add_argument("--calibration", type=int, default=64, help="train images for INT8 calibration")
    parser.add_argument("--out", type=Path,
                        help="JSON path (default bench/results/winners_benchmark_app_<run>_<cpu>.json)")
    args = parser.parse_args(argv)
    import json

    from bench.precision_bench import cpu_slug
    from nas.atomic import atomic_write

    run_dir = resolve_run(args.run)
    record = check_run(run_dir, args.seconds, args.calibration)
    out = args.out or RESULTS / f"winners_benchmark_app_{run_dir.name}_{cpu_slug(record['machine'])}.json"
    atomic_write(out, json.dumps(record, indent=2) + "\n")
    print(f"{'all' if record['all_within_budget'] else 'NOT all'} winners within {record['budget_ms']:g} ms by "
          f"benchmark_app; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
