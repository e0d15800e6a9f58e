"""Conversion cost of a search candidate: OpenVINO's default torch conversion vs nas.export.convert_openvino.

Every trial converts its candidate to OpenVINO before timing it. `convert_openvino` builds OpenVINO's
own TorchScript decoder without the tracer's self-check (`torch.jit.trace(check_trace=False)`);
this bench times both paths interleaved on architectures drawn from the default space at the width
multiplier the search fits on such a machine, checks the IRs are identical (weights byte for byte,
XML op for op once OpenVINO's auto-numbered names are normalised), and reports the ratio.

    python -m bench.convert_bench            # -> bench/results/convert_<cpu>.json
    python -m bench.convert_bench --archs 4 --rounds 1
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/convert_bench.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.cli import Parser
from nas.errors import run_cli

RESULTS = Path(__file__).resolve().parent / "results"


def default_path(model: Any, resolution: int) -> Any:
    """OpenVINO's conversion as its documentation shows it (traces with torch.jit.trace's check on)."""
    import openvino as ov
    import torch

    from nas.export import example_input

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(model.eval(), example_input=example_input(resolution),
                                input=[(1, 3, resolution, resolution)])


def ir_signature(ov_model: Any) -> tuple[str, bytes]:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.xml"
        ov.save_model(ov_model, str(path), compress_to_fp16=False)
        xml = re.sub(r'\bid="\d+"', 'id=""', path.read_text())
        xml = re.sub(r"_\d+\b", "_N", re.sub(r'name="Model\d+"', 'name="M"', xml))
        return xml, path.with_suffix(".bin").read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.convert_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--width", type=float, default=2.24,
                        help="width multiplier of the default space (the search's fit on a 2-core Xeon: 2.24)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from bench.precision_bench import cpu_slug
    from nas.export import convert_openvino
    from nas.latency import describe_machine, machine_line
    from nas.latency._predictor import sample_archs
    from nas.models import build_model
    from nas.space import DEFAULT_SPACE, load_space

    torch.set_num_threads(os.cpu_count() or 1)
    archs = sample_archs(load_space(DEFAULT_SPACE).scaled(args.width), args.archs, seed=0, num_classes=10)
    paths = {"openvino_default": default_path, "convert_openvino": convert_openvino}
    seconds: dict[str, list[list[float]]] = {name: [[] for _ in archs] for name in paths}
    identical = []
    load_start = os.getloadavg()
    for round_number in range(args.rounds):
        for i, arch in enumerate(archs):
            model = build_model(arch).eval()
            converted: dict[str, Any] = {}
            order = list(paths.items())  # alternate which path goes first (the first pays cold caches)
            for name, convert in order if (round_number + i) % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                converted[name] = convert(model, args.resolution)
                seconds[name][i].append(time.perf_counter() - started)
            if round_number == 0:
                signatures = [ir_signature(ov_model) for ov_model in converted.values()]
                identical.append(signatures[0] == signatures[1])
            print(f"round {round_number + 1} arch {i + 1}/{len(archs)}: "
                  + ", ".join(f"{n} {s[i][-1]:.2f} s" for n, s in seconds.items()), file=sys.stderr)
    best = {name: [min(per_arch) for per_arch in s] for name, s in seconds.items()}
    totals = {name: sum(values) for name, values in best.items()}
    ratio = totals["convert_openvino"] / totals["openvino_default"]
    machine = describe_machine()
    result: dict[str, Any] = {
        "what": __doc__.splitlines()[0],
        "machine": machine_line(), "load_average_start_end": [load_start, os.getloadavg()],
        "settings": {"archs": len(archs), "rounds": args.rounds, "width": args.width, "resolution": args.resolution,
                     "threads": torch.get_num_threads()},
        "seconds_best_of_rounds": best, "total_s": totals, "ratio_fast_over_default": round(ratio, 3),
        "median_per_arch_s": {name: statistics.median(values) for name, values in best.items()},
        "ir_identical": identical, "all_identical": all(identical),
        "architectures": [str(a) for a in archs],
    }
    print(f"{len(archs)} archs: default {totals['openvino_default']:.1f} s, convert_openvino "
          f"{totals['convert_openvino']:.1f} s: ratio {ratio:.2f}; IR identical: {sum(identical)}/{len(identical)}")
    out = args.out or RESULTS / f"convert_{cpu_slug(machine)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from nas.atomic import atomic_write

    atomic_write(out, json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")
    return 0 if all(identical) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
