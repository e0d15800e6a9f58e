"""Where INT8 time goes: per-op and per-block time of FP32, BF16 and INT8 IRs, op by op.

For the default run's winner, the three family baselines (at the run's scale) and CAS-ViT-XS /
EfficientViT-B0 (random weights: latency only), at 224 px, batch 1, sync, 1 stream, fixed threads:
  profile  OpenVINO's per-layer counters (PERF_COUNT=YES, `get_profiling_info()`): per executed node
           its type, kernel (`exec_type`: the precision it really ran in, e.g. brgconv_avx512_amx_I8,
           jit_avx512_f32) and time (median over iterations), summed per op type, per precision run
           and per block kind (stem, downsample, each mixer, head: from the torch module path in
           the node name, `__module.stages.<i>.<0 downsample | 1 body>`; a node named after a folded
           constant inherits the block of the node before it);
  latency  the same IR without counters by our clock (nas.latency.measure_ir) and by `benchmark_app`
           (bench.latency_bench.run_benchmark_app: sync, 1 stream, the threads, pinned precision).
Every IR is held --rounds times, interleaved (order reversed every other round); per IR the profile of
its fastest-profiled hold is kept with the best benchmark_app / our-clock figures over its holds, and
every hold's totals are recorded: on a host with slow phases one hold per IR compares phases, not IRs.
Precisions: fp32 (hint f32), bf16 (hint bf16, where the CPU has it) and int8 (the NNCF IR built by
nas.quantization from the rules data, float parts at the project's INT8 hint: bf16 where the CPU has it,
nas.latency._precision.int8_float_hint; `int8@f32` repeats it with f32 float parts there). With --avx2
the same runs repeat with ONEDNN_MAX_CPU_ISA=AVX2 (set before OpenVINO loads, in a child process):
oneDNN's kernels are capped at AVX2, which the exec_type strings verify; OpenVINO's own jit nodes
(eltwise subgraphs, reduces) may still use AVX-512. That is AVX2 *emulated* on an AVX-512 CPU, not an
AVX2-only CPU.

    nice -n 19 python -m bench.int8_profile --run DIR --prepare-only   # export + quantize (CPU heavy)
    python -m bench.int8_profile --run DIR --avx2                      # time (under the quiet lock)

Writes bench/results/int8_profile_<cpu>.json and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.cli import Parser, positive_int
from nas.errors import run_cli

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("casvit_xs", "efficientvit_b0")
COMPUTE = {"Convolution", "GroupConvolution", "MatMul", "FullyConnected", "Deconvolution"}
_BLOCK = re.compile(r"__module\.(stem|head|stages\.(\d+)\.(\d+))")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- models ------------------------------------------------------------------------------------

def run_baselines(run: Path) -> dict[str, Any]:
    """The family baselines the run enqueued, at the scale it measured (matched by arch hash)."""
    from nas.baselines import FAMILIES, WIDTH_LADDER

    wanted = {}
    with open(run / "trials.csv") as handle:
        for row in csv.DictReader(handle):
            if row.get("baseline"):
                wanted.setdefault(row["baseline"], set()).add(row["arch_hash"])
    num_classes = winner_arch(run, None)[1].num_classes
    out = {}
    for family, make in FAMILIES.items():
        for scale in WIDTH_LADDER:  # the largest scale the run recorded
            arch = make(scale, num_classes)
            if arch.hash in wanted.get(family, ()):
                out[f"{family}_baseline"] = arch
                break
        else:
            out[f"{family}_baseline"] = make(1.0, num_classes)
    return out


def run_winner(run: Path, trial: int | None) -> tuple[str, Any]:
    """(its name in the bench reports, the nas.runs Winner) of the run's winner of `trial` (default: the
    best on the front); found by nas.runs, so a missing run or winner is a one-line error."""
    from nas.runs import get_winner, resolve_run

    winner = get_winner(resolve_run(run), trial)
    return f"winner_{winner.trial}", winner


def winner_arch(run: Path, trial: int | None) -> tuple[str, Any]:
    name, winner = run_winner(run, trial)
    return name, winner.arch


def model_archs(run: Path, trial: int | None, presets: tuple[str, ...]) -> dict[str, Any]:
    from nas.presets import load_preset

    name, arch = winner_arch(run, trial)
    return {name: arch, **run_baselines(run), **{p: load_preset(p) for p in presets}}


def prepare(archs: dict[str, Any], workdir: Path, resolution: int, calibration: int) -> dict[str, Any]:
    """FP32 and INT8 IRs of every model (reused when the arch and the rules are unchanged)."""
    from nas.export import convert_openvino, save_openvino
    from nas.latency import count_fake_quantize
    from nas.latency._backends import _synthetic_calibration
    from nas.models import build_model
    from nas.quantization import quantize_openvino, rules_digest

    digest = rules_digest()
    manifest: dict[str, Any] = {}
    for name, arch in archs.items():
        stem = workdir / f"{name}-{arch.hash}-{resolution}"
        fp32, int8 = stem.with_suffix(".fp32.xml"), Path(f"{stem}.int8-{digest}.xml")
        mixers = [s.mixer for s in arch.stages]
        if not (fp32.exists() and int8.exists()):
            start = time.perf_counter()
            ov_model = convert_openvino(build_model(arch).eval(), resolution)
            save_openvino(ov_model, fp32)
            save_openvino(quantize_openvino(ov_model, _synthetic_calibration(resolution, calibration),
                                            mixers=mixers), int8)
            log(f"{name}: FP32 + INT8 IRs in {time.perf_counter() - start:.0f} s")
        from nas.latency import ov_read

        manifest[name] = {"arch_hash": arch.hash, "mixers": mixers, "arch": arch.to_dict(),
                          "fp32_ir": str(fp32), "int8_ir": str(int8), "rules_digest": digest,
                          "fake_quantize_ops": count_fake_quantize(ov_read(int8))}
    return manifest


# --- the profiling worker (a child process: the ISA cap must be set before OpenVINO loads) -------

def precision_of(exec_type: str) -> str:
    low = exec_type.lower()
    for tag, name in (("i8", "int8"), ("u8", "int8"), ("bf16", "bf16"), ("f16", "f16"), ("f32", "f32")):
        if low.endswith(tag) or f"_{tag}" in low:
            return name
    return "other"


def block_of(path: str, mixers: list[str]) -> tuple[str, str]:
    """(block kind, part) of a torch module path; '?' when there is none."""
    match = _BLOCK.search(path)
    if not match:
        return "?", "?"
    if match[1] in ("stem", "head"):
        return match[1], match[1]
    stage, sub = int(match[2]), int(match[3])
    kind = "downsample" if sub == 0 else mixers[stage]
    rest = path[match.end():].lstrip(".").split("/", 1)[0].split(".")
    part = next((p for p in rest if not p.isdigit()), kind) if sub else "downsample"
    return kind, part


def profile_ir(path: str, hint: str, threads: int, iters: int, mixers: list[str]) -> dict[str, Any]:
    import numpy as np

    from nas.latency import ov_core
    from nas.quantization import module_paths

    core = ov_core()
    ov_model = core.read_model(path)
    paths = module_paths(ov_model)  # folded-constant names (a conv named Multiply_12) -> their module
    compiled = core.compile_model(ov_model, "CPU", {
        "PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    data = np.random.default_rng(0).standard_normal(tuple(compiled.inputs[0].shape)).astype(np.float32)
    for _ in range(5):
        request.infer({0: data})
    per_node: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, tuple[str, str, bool]] = {}
    order: list[str] = []  # every node, executed or fused away (NOT_RUN ones still carry module paths)
    for _ in range(iters):
        request.infer({0: data})
        for info in request.get_profiling_info():
            if info.node_name not in meta:
                order.append(info.node_name)
                meta[info.node_name] = (info.node_type, info.exec_type, str(info.status).endswith(".EXECUTED"))
            per_node[info.node_name].append(info.real_time.total_seconds() * 1e3)
    known = [paths.get(n) or (n if "__module." in n else "") for n in order]
    nodes = []
    for i, name in enumerate(order):
        node_type, exec_type, executed = meta[name]
        if not executed:
            continue
        # a fused/renamed node (reorder, FakeQuantize subgraph): the next node with a path, else the last
        where = known[i] or next((k for k in known[i:] if k), "") or next((k for k in reversed(known[:i]) if k), "")
        block, part = block_of(where, mixers)
        nodes.append({"name": name, "type": node_type, "exec_type": exec_type,
                      "precision": precision_of(exec_type), "block": block, "part": part,
                      "ms": statistics.median(per_node[name])})
    return summarize(nodes)


def summarize(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    def total(key: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for node in nodes:
            out[node[key]] += node["ms"]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    by_part: dict[str, float] = defaultdict(float)
    for node in nodes:
        by_part[f"{node['block']}.{node['part']}"] += node["ms"]
    # quantize/convert overhead: FakeQuantize, Convert, Reorder nodes and eltwise subgraphs whose only
    # job is a fused FakeQuantize (NNCF names them .../fq_output_N, .../fq_input_N)
    overhead = [n for n in nodes if n["type"] in ("FakeQuantize", "Convert", "Reorder")
                or (n["type"] in ("Subgraph", "Eltwise") and "/fq_" in n["name"])]
    float_compute = [n for n in nodes if n["type"] in COMPUTE and n["precision"] not in ("int8",)]
    return {"total_ms": sum(n["ms"] for n in nodes), "nodes_executed": len(nodes),
            "by_type": total("type"), "by_precision": total("precision"), "by_block": total("block"),
            "by_block_part": dict(sorted(by_part.items(), key=lambda kv: -kv[1])),
            "by_exec_type": total("exec_type"),
            "quantize_overhead_ms": sum(n["ms"] for n in overhead),
            "quantize_overhead_by_type": _sum_by(overhead, "type"),
            "float_compute_ops": [{k: n[k] for k in ("name", "type", "exec_type", "block", "ms")}
                                  for n in float_compute],
            "top_nodes": sorted(nodes, key=lambda n: -n["ms"])[:12]}


def _sum_by(nodes: list[dict[str, Any]], key: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for node in nodes:
        out[node[key]] += node["ms"]
    return dict(out)


def profile_row(ir: str, hint: str, precision: str, island: str, threads: int, iters: int,
                bench_seconds: int, mixers: list[str]) -> dict[str, Any]:
    """One hold of one IR at one hint: its per-node profile, our clock (not for island hints) and
    benchmark_app; a failure (e.g. bf16 under the AVX2 cap) is recorded, not raised."""
    from bench.latency_bench import run_benchmark_app
    from nas.latency import MeasureSettings, measure_ir

    row: dict[str, Any] = {"ir": ir, "hint": hint}
    try:
        row["profile"] = profile_ir(ir, hint, threads, iters, mixers)
        if not island:
            stats = measure_ir(ir, "openvino", threads, precision=precision,
                               settings=MeasureSettings(passes=5, max_wait_seconds=30.0))
            row["ours"] = {"estimate_ms": stats.estimate_ms, "median_ms": stats.median_ms,
                           "pass_cv": stats.pass_cv, "others_cpu": stats.others_cpu}
        row["benchmark_app"] = run_benchmark_app(Path(ir), threads, bench_seconds, hint)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"
    return row


def fastest_hold(holds: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one IR's holds (one per round), the profile of the fastest-profiled hold and the best
    benchmark_app / our-clock figures over all holds; every hold's totals are kept. On a host with
    slow phases the fastest hold is the repeatable one (bench/reference_bench.py)."""
    ok = [h for h in holds if "error" not in h]
    if not ok:
        return holds[-1]
    row = dict(min(ok, key=lambda h: h["profile"]["total_ms"]))
    row["benchmark_app"] = min((h["benchmark_app"] for h in ok), key=lambda b: b["median_ms"])
    if "ours" in row:
        row["ours"] = min((h["ours"] for h in ok), key=lambda o: o["estimate_ms"])
    row["rounds"] = {"profiled_ms": [h["profile"]["total_ms"] for h in ok],
                     "benchmark_app_ms": [h["benchmark_app"]["median_ms"] for h in ok],
                     **({"ours_ms": [h["ours"]["estimate_ms"] for h in ok]} if "ours" in row else {})}
    return row


def worker(manifest_path: Path, out_path: Path, precisions: list[str], threads: int, iters: int,
           bench_seconds: int, rounds: int) -> None:
    from nas.atomic import atomic_write
    from nas.latency._precision import openvino_precision_config

    manifest = json.loads(manifest_path.read_text())
    jobs = []
    for name, entry in manifest.items():
        for precision in precisions:
            # int8@f32 / int8@bf16: the INT8 IR with its float parts at that hint (no nas.latency precision)
            base, _, island = precision.partition("@")
            ir = entry["int8_ir" if base == "int8" else "fp32_ir"]
            hint = island or openvino_precision_config(base)["INFERENCE_PRECISION_HINT"]
            jobs.append((name, precision, ir, hint, island, entry["mixers"]))
    holds: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in range(rounds):  # every IR once per round, the order reversed every other round
        for name, precision, ir, hint, island, mixers in (jobs if r % 2 == 0 else jobs[::-1]):
            row = profile_row(ir, hint, precision, island, threads, iters, bench_seconds, mixers)
            holds[(name, precision)].append(row)
            log(f"  [{r + 1}/{rounds}] {name} {precision}: "
                + (row.get("error") or f"ours {row.get('ours', {}).get('estimate_ms', float('nan')):.3f} ms, "
                   f"benchmark_app {row['benchmark_app']['median_ms']:.3f} ms, "
                   f"profiled {row['profile']['total_ms']:.3f} ms"))
    out: dict[str, Any] = {}
    for name, precision, *_ in jobs:
        out.setdefault(name, {})[precision] = fastest_hold(holds[(name, precision)])
    atomic_write(out_path, json.dumps(out, indent=1))


def run_worker(isa: str | None, manifest_path: Path, precisions: list[str], args: argparse.Namespace) -> dict:
    out = manifest_path.with_name(f"profile_{isa or 'native'}.json")
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    cmd = [sys.executable, "-m", "bench.int8_profile", "--worker", str(manifest_path), "--worker-out", str(out),
           "--threads", str(args.threads), "--iters", str(args.iters), "--bench-seconds", str(args.bench_seconds),
           "--rounds", str(args.rounds), "--precisions", *precisions]
    subprocess.run(cmd, env=env, check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.read_text())


# --- report ------------------------------------------------------------------------------------

def isa_check(results: dict[str, Any]) -> dict[str, Any]:
    """Kernel families seen (time-weighted): does the AVX2 cap hold, and where not."""
    seen: dict[str, float] = defaultdict(float)
    for per_model in results.values():
        for row in per_model.values():
            for exec_type, ms in row.get("profile", {}).get("by_exec_type", {}).items():
                family = "amx" if "amx" in exec_type else "avx512" if "avx512" in exec_type else \
                    "avx2" if "avx2" in exec_type else "other (uni/ref/gemm)"
                seen[family] += ms
    return dict(seen)


# the CPU plugin's names for an op type in an INT8 graph -> its float name
_TYPE_ALIASES = {"FullyConnectedQuantizedLegacy": "FullyConnected", "FullyConnectedQuantized": "FullyConnected"}


def type_bound(fp32: dict[str, float], int8: dict[str, float]) -> dict[str, Any]:
    """What INT8 rules choosing float or INT8 per op type could reach at best: every op type the two
    profiles share at its faster precision, fp32-only types at fp32, INT8-only types (quantize
    subgraphs, converts) dropped; no conversion cost. A lower bound for rules kept as op types."""
    def norm(by_type: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for kind, ms in by_type.items():
            out[_TYPE_ALIASES.get(kind, kind)] += ms
        return out

    f, i = norm(fp32), norm(int8)
    best = {kind: ("int8" if kind in i and i[kind] < ms else "fp32") for kind, ms in f.items()}
    bound = sum(min(ms, i.get(kind, ms)) for kind, ms in f.items())
    total = sum(f.values())
    return {"bound_ms": bound, "fp32_ms": total, "int8_ms": sum(i.values()), "bound/fp32": bound / total,
            "int8/fp32": sum(i.values()) / total, "faster_in": best}


def type_bounds(results: dict[str, Any]) -> dict[str, Any]:
    return {name: type_bound(rows["fp32"]["profile"]["by_type"], rows["int8"]["profile"]["by_type"])
            for name, rows in results.items() if all("profile" in rows.get(p, {}) for p in ("fp32", "int8"))}


def mixer_table(results: dict[str, Any]) -> dict[str, Any]:
    """Per block kind, summed over all models: profiled ms per precision and INT8 ratios (issue 14)."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for per_model in results.values():
        if not all("profile" in per_model.get(p, {}) for p in ("fp32", "int8")):
            continue
        for precision, row in per_model.items():
            for block, ms in row.get("profile", {}).get("by_block", {}).items():
                table[block][precision] += ms
    out = {}
    for block, row in table.items():
        entry = dict(row)
        if row.get("fp32") and row.get("int8"):
            entry["int8/fp32"] = row["int8"] / row["fp32"]
        if row.get("bf16") and row.get("int8"):
            entry["int8/bf16"] = row["int8"] / row["bf16"]
        if row.get("bf16") and row.get("int8@f32"):
            entry["int8@f32/bf16"] = row["int8@f32"] / row["bf16"]
        out[block] = entry
    return out


def print_tables(report: dict[str, Any]) -> None:
    for label, results in report["runs"].items():
        print(f"\n== {label} ==  ({report['isa_labels'][label]})")
        print(f"{'model':22s} {'prec':9s} {'ours ms':>8s} {'b_app ms':>8s} {'prof ms':>8s} {'FQ/Reorder':>10s} "
              f"{'float ops':>9s}  int8 / fp32, int8 / bf16 (benchmark_app)")
        for name, per_model in results.items():
            for precision, row in per_model.items():
                if "error" in row:
                    print(f"{name:22s} {precision:9s} {row['error'][:70]}")
                    continue
                p = row["profile"]
                ratio = ""
                if precision.startswith("int8"):
                    b = {k: v.get("benchmark_app", {}).get("median_ms") for k, v in per_model.items()}
                    ratio = "  " + ", ".join(f"{b[precision] / b[k]:.2f}" for k in ("fp32", "bf16") if b.get(k))
                print(f"{name:22s} {precision:9s} {row.get('ours', {}).get('estimate_ms', float('nan')):8.3f} "
                      f"{row['benchmark_app']['median_ms']:8.3f} {p['total_ms']:8.3f} "
                      f"{p['quantize_overhead_ms']:10.3f} {len(p['float_compute_ops']):9d}{ratio}")
        print(f"\nper block kind, all models summed (profiled ms)  [{label}]")
        for block, row in sorted(report["mixer_tables"][label].items()):
            cells = "  ".join(f"{k} {v:.3f}" for k, v in row.items())
            print(f"  {block:12s} {cells}")
        print(f"kernel families (ms): {report['isa_seen'][label]}")
        print(f"per-op-type bound (each op type at its faster precision, no conversions)  [{label}]")
        for name, b in report.get("type_bounds", {}).get(label, {}).items():
            fp32_faster = ", ".join(k for k, v in b["faster_in"].items() if v == "fp32") or "-"
            print(f"  {name:22s} int8/fp32 {b['int8/fp32']:.2f}  bound/fp32 {b['bound/fp32']:.2f}  "
                  f"faster in fp32: {fp32_faster}")


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.int8_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None, help="a fitted search run (winners/, trials.csv)")
    p.add_argument("--winner", type=int, default=None, help="winner trial (default: the best on the front)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=40, help="profiled inferences per IR and precision")
    p.add_argument("--bench-seconds", type=int, default=5)
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="holds per IR, interleaved; the fastest-profiled hold is kept (slow host phases)")
    p.add_argument("--calibration", type=int, default=16, help="synthetic calibration images (latency only)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/vitnas-int8-profile"))
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--avx2", action="store_true", help="also profile with ONEDNN_MAX_CPU_ISA=AVX2")
    p.add_argument("--only-avx2", action="store_true", help="profile only with the AVX2 cap (merge into the JSON)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="", help="timing conditions to record (e.g. other work running niced)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--precisions", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.worker_out, args.precisions, args.threads, args.iters, args.bench_seconds,
               args.rounds)
        return 0
    if args.run is None:
        p.error("--run is required")

    from bench.precision_bench import cpu_slug
    from nas.atomic import atomic_write
    from nas.latency import describe_machine, runtime_version, supported_precisions
    from nas.latency._precision import int8_float_hint

    args.workdir.mkdir(parents=True, exist_ok=True)
    manifest = prepare(model_archs(args.run, args.winner, PRESETS), args.workdir, args.resolution,
                       args.calibration)
    manifest_path = args.workdir / "manifest.json"
    atomic_write(manifest_path, json.dumps(manifest, indent=1))
    if args.prepare_only:
        return 0
    machine = describe_machine()
    out_path = args.out or RESULTS / f"int8_profile_{cpu_slug(machine)}.json"
    report = json.loads(out_path.read_text()) if args.only_avx2 and out_path.exists() else {
        "runs": {}, "isa_labels": {}, "isa_seen": {}, "mixer_tables": {}, "type_bounds": {}, "load": {}}
    float_native = [p for p in ("fp32", "bf16") if p in supported_precisions("openvino")]
    island = ["int8@f32"] if int8_float_hint() != "f32" else []  # the float parts as before issue 15
    plan = ([] if args.only_avx2 else [("native", None, [*float_native, "int8", *island])]) + \
        ([("avx2_emulated", "AVX2", ["fp32", "int8"])] if args.avx2 or args.only_avx2 else [])
    labels = {"native": f"native ISA of {machine['cpu']}",
              "avx2_emulated": f"AVX2 emulated on {machine['cpu']} (ONEDNN_MAX_CPU_ISA=AVX2: oneDNN kernels "
                               "capped; OpenVINO's own jit nodes may still use AVX-512), not an AVX2-only CPU"}
    for label, isa, precisions in plan:
        load_before = os.getloadavg()
        log(f"profiling ({label}) ...")
        results = run_worker(isa, manifest_path, precisions, args)
        report["runs"][label] = results
        report["isa_labels"][label] = labels[label]
        report["isa_seen"][label] = isa_check(results)
        report["mixer_tables"][label] = mixer_table(results)
        report.setdefault("type_bounds", {})[label] = type_bounds(results)
        report["load"][label] = {"loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    report["conditions"] = {"note": args.note, "machine_lock": os.environ.get("VITNAS_LOCK", "project default")}
    report.update(machine=machine, runtime=runtime_version("openvino"), resolution=args.resolution,
                  threads=args.threads, batch=1, iters=args.iters, rounds=args.rounds,
                  models={k: {kk: v[kk] for kk in ("arch_hash", "mixers", "rules_digest", "fake_quantize_ops")}
                          for k, v in manifest.items()},
                  settings={"profile": "PERF_COUNT=YES, median real_time per node over the iterations; per IR the "
                                       f"fastest-profiled of {args.rounds} interleaved holds",
                            "benchmark_app": f"-hint none -nstreams 1 -nthreads {args.threads} -nireq 1 -api sync "
                                             f"-t {args.bench_seconds} -infer_precision <hint>; the best median "
                                             "over the holds",
                            "int8": "nas.quantization (rules from data), synthetic calibration: latency only"})
    atomic_write(out_path, json.dumps(report, indent=1))
    print_tables(report)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
