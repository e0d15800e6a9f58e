"""Proxy-training throughput: which CPU settings make the search's short trainings fastest?

Measures training images/s (forward, backward, AdamW step, batch assembly from the in-memory
split: exactly `nas.train`'s step) of the three family baselines at the search's proxy settings,
for each variant below, every variant in its own fresh process (thread pools and OpenMP
environment variables only take effect at start-up), in interleaved rounds so that drifting
machine load hits every variant alike. Reports the best round (the least disturbed) and the median.

    python -m bench.train_throughput                 # -> bench/results/train_throughput_<cpu>.json
    python -m bench.train_throughput --rounds 2 --seconds 4

Variants: `eager` (today's default: NCHW, the run's threads), `channels_last` (model and batches),
`compile` (torch.compile, default mode; its one-off compile time is reported separately, since
every trial trains a new model and pays it again), `threads1` (one intra-op thread),
`omp_passive` / `omp_active` (OMP_WAIT_POLICY), `res32` / `res48` (a smaller proxy resolution
for small native images such as MNIST's 28 px; what that does to accuracy is measured by
`--accuracy`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/train_throughput.py`: make `nas` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.cli import Parser
from nas.errors import run_cli

RESULTS = Path(__file__).resolve().parent / "results"
FAMILY_SCALES = {"casvit": 0.75, "efficientvit": 0.375, "cagevit": 0.25}  # the default run's rungs at 5 ms
VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "threads1": {"threads": 1},
    "omp_passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "omp_active": {"env": {"OMP_WAIT_POLICY": "ACTIVE"}},
    "res48": {"resolution": 48},
    "res32": {"resolution": 32},
    "channels_last_res32": {"channels_last": True, "resolution": 32},
}


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: train each family for `seconds` and return images/s per family."""
    import torch

    from nas.data import load_dataset

    torch.set_num_threads(spec.get("threads", 2))
    splits = load_dataset("mnist", spec.get("resolution", 64))
    return {family: _family_rate(family, scale, splits, spec) for family, scale in FAMILY_SCALES.items()}


def _family_rate(family: str, scale: float, splits: Any, spec: dict[str, Any]) -> dict[str, float]:
    import torch

    from nas.baselines import FAMILIES
    from nas.data import batches
    from nas.models import build_model
    from nas.train import make_optimizer, seed_everything

    seed_everything(0)
    memory = torch.channels_last if spec.get("channels_last") else torch.contiguous_format
    model = build_model(FAMILIES[family](scale, splits.num_classes)).train().to(memory_format=memory)
    optimizer = make_optimizer(model, 2e-3, 0.05)
    step_model: Any = torch.compile(model) if spec.get("compile") else model
    batch_size = spec.get("batch_size", 64)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        logits = step_model(images.contiguous(memory_format=memory))
        loss = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0, foreach=True)
        optimizer.step()

    def endless() -> Any:
        epoch = 0
        while True:
            yield from batches(splits.train, batch_size, shuffle=True, seed=epoch, drop_last=True)
            epoch += 1

    loader = endless()
    start = time.perf_counter()
    step(*next(loader))  # the first step: torch.compile's compile time (eager: primitive creation)
    compile_s = time.perf_counter() - start if spec.get("compile") else 0.0
    for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
        step(*next(loader))
    images_done, start = 0, time.perf_counter()
    while time.perf_counter() - start < spec["seconds"]:
        images, labels = next(loader)
        step(images, labels)
        images_done += len(labels)
    return {"images_per_s": images_done / (time.perf_counter() - start), "compile_s": compile_s}


def _run_variant(name: str, seconds: float) -> dict[str, Any]:
    spec = dict(VARIANTS[name], seconds=seconds)
    env = dict(os.environ, **spec.pop("env", {}))
    proc = subprocess.run([sys.executable, "-m", "bench.train_throughput", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _accuracy(resolutions: list[int], epochs: int, archs: int) -> dict[str, Any]:
    """Proxy val accuracy of baselines + sampled archs at each resolution, and their rank agreement."""
    import optuna
    from scipy.stats import kendalltau

    from nas.baselines import FAMILIES
    from nas.data import load_dataset
    from nas.models import build_model
    from nas.space import load_space
    from nas.train import train_proxy

    space = load_space(None)
    candidates = [FAMILIES[f](s, 10) for f, s in FAMILY_SCALES.items() if f != "cagevit"]
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    for _ in range(archs):
        candidates.append(space.sample(study.ask(), 10))
    table: dict[int, list[float]] = {}
    seconds: dict[int, float] = {}
    for res in resolutions:
        splits = load_dataset("mnist", res)
        table[res], seconds[res] = [], 0.0
        for arch in candidates:
            result = train_proxy(build_model(arch), splits, epochs=epochs, threads=2, seed=0)
            table[res].append(result.accuracy)
            seconds[res] += result.seconds
            print(f"  {res}px {arch.name or 'sampled'}: val {result.accuracy:.4f} ({result.seconds:.1f} s)", flush=True)
    base = resolutions[-1]
    from nas.objective import describe

    return {"epochs": epochs, "architectures": [describe(a) for a in candidates],
            "val_accuracy": {str(r): v for r, v in table.items()},
            "train_seconds": {str(r): s for r, s in seconds.items()},
            "kendall_tau_vs": {str(r): float(kendalltau(table[r], table[base]).statistic) for r in resolutions
                               if r != base}, "reference_resolution": base}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.train_throughput", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="timed training seconds per family and variant")
    p.add_argument("--accuracy", action="store_true", help="also train at 32/48/64 px and compare val accuracy")
    p.add_argument("--accuracy-only", action="store_true",
                   help="only the accuracy part, merged into the existing output file")
    p.add_argument("--accuracy-archs", type=int, default=5, help="sampled architectures besides the baselines")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    from bench.precision_bench import cpu_slug
    from nas.atomic import atomic_write
    from nas.latency import describe_machine, machine_line

    machine = describe_machine()
    out = args.out or RESULTS / f"train_throughput_{cpu_slug(machine)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}  # one part reruns, the other stays
    if not args.accuracy_only:
        result.update(_throughput(args, machine, machine_line(machine)))
        atomic_write(out, json.dumps(result, indent=1))
        print(f"saved {out}")
    if args.accuracy or args.accuracy_only:
        load_before = os.getloadavg()
        result["accuracy"] = _accuracy([32, 48, 64], epochs=1, archs=args.accuracy_archs)
        result["accuracy"]["load_average_before_after"] = [load_before, os.getloadavg()]
        print(json.dumps(result["accuracy"]["kendall_tau_vs"]))
        atomic_write(out, json.dumps(result, indent=1))
        print(f"saved {out}")
    return 0


def _throughput(args: argparse.Namespace, machine: dict[str, Any], line: str) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for variant in args.variants:
            rounds[variant].append(_run_variant(variant, args.seconds))
            print(f"round {r + 1} {variant}: " + ", ".join(
                f"{f} {v['images_per_s']:.0f}/s" for f, v in rounds[variant][-1].items()), flush=True)
    load_after = os.getloadavg()
    summary: dict[str, Any] = {}
    for variant, runs in rounds.items():
        summary[variant] = {f: {"best_images_per_s": max(run[f]["images_per_s"] for run in runs),
                                "median_images_per_s": statistics.median(run[f]["images_per_s"] for run in runs),
                                "compile_s": statistics.median(run[f]["compile_s"] for run in runs)}
                            for f in FAMILY_SCALES}
    eager = summary.get("eager")
    print(f"\n{'variant':<14}" + "".join(f"{f:>22}" for f in FAMILY_SCALES))
    for variant, fams in summary.items():
        cells = []
        for f, v in fams.items():
            ratio = f" ({v['best_images_per_s'] / eager[f]['best_images_per_s']:.2f}x)" if eager else ""
            cells.append(f"{v['best_images_per_s']:>12.0f}/s{ratio}")
        print(f"{variant:<14}" + "".join(f"{c:>22}" for c in cells))
    result: dict[str, Any] = {
        "machine": machine, "machine_line": line, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"data": "mnist (bundled), 3500 train images", "batch_size": 64, "threads": 2,
                     "proxy_resolution": 64, "families": FAMILY_SCALES, "rounds": args.rounds,
                     "seconds_per_family": args.seconds},
        "load_average_before_after": [load_before, load_after], "rounds": rounds, "summary": summary,
    }
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
