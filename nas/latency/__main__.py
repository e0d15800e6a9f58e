"""python -m nas.latency: measure one architecture (preset or arch file) or an exported model file."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from nas.errors import ConfigError, UserError, run_cli
from nas.latency._backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    check_backend,
    check_model_file,
    default_threads,
    ir_precision,
)
from nas.latency._cache import LatencyCache, default_cache_path
from nas.latency._machine import describe_machine, machine_line
from nas.latency._measure import lookup, measure, measure_ir
from nas.latency._precision import DEFAULT_PRECISION, PRECISIONS, check_precision
from nas.latency._stats import LatencyStats
from nas.latency._timing import MeasureSettings, add_wait_hook, remove_wait_hook, wait_line

DEFAULT_PRESET = "efficientvit_b0"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line via run_cli, not usage + message
        raise UserError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nas.latency", description=__doc__)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--preset", help=f"published architecture by name (default: {DEFAULT_PRESET})")
    what.add_argument("--arch", type=Path, help="architecture YAML file")
    what.add_argument("--ir", type=Path, help="exported model file: OpenVINO IR .xml or .onnx")
    p.add_argument("--backend", default=DEFAULT_BACKEND,
                   help=f"one of: {', '.join(BACKENDS)} (default: {DEFAULT_BACKEND})")
    p.add_argument("--precision", default=None,
                   help=f"one of: {', '.join(PRECISIONS)} (default: {DEFAULT_PRECISION}; for --ir, the file's own: "
                        "int8 if it has FakeQuantize ops). int8 of --preset/--arch quantizes with NNCF first")
    p.add_argument("--threads", type=int, default=None,
                   help=f"inference threads (default: all cores, here {default_threads()})")
    p.add_argument("--resolution", type=int, default=None,
                   help="input side in pixels (default: 224; for --ir, the file's own)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", type=Path, default=None,
                       help=f"cache file (default: $VITNAS_LATENCY_CACHE or {default_cache_path()})")
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--refresh", action="store_true", help="re-measure even on a cache hit, then store")
    p.add_argument("--quick", action="store_true", help="short measurement (smoke tests; noisier)")
    p.add_argument("--passes", type=int, default=None, help="timed passes (default: 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--calibrate", action="store_true",
                      help="calibrate the latency predictor on this machine (<= 10 min; saved beside the cache)")
    mode.add_argument("--refit", action="store_true",
                      help="redo the predictor's fit from the samples its calibration file keeps (no timing; "
                           "brings a file of an earlier predictor version to the current model)")
    mode.add_argument("--predict", action="store_true",
                      help="predict the latency of --preset/--arch from the calibration, without building it")
    p.add_argument("--space", type=Path, action="append", default=None,
                   help="--calibrate: search space YAML whose units to time (repeatable; default: the default space)")
    p.add_argument("--widths", type=_widths, default=None,
                   help="--calibrate: width multipliers the spaces are drawn at, comma-separated (default: 1 with "
                        "--space; 1,1.5 for the default space, the range a search fits it to for 2-5 ms budgets)")
    p.add_argument("--predictor", type=Path, default=None,
                   help="predictor file (default: the calibration for these settings beside the cache)")
    return p


def _widths(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--widths takes comma-separated numbers, got {text!r}") from None
    if not values or any(not 0.25 <= v <= 4.0 for v in values):
        raise UserError(f"--widths must lie in [0.25, 4], got {text!r}")
    return values


def _load_arch(args: argparse.Namespace):
    """The Arch to build, with a UserError naming the file/preset and the allowed values."""
    if args.arch is not None:
        if not args.arch.is_file():
            raise UserError(f"arch file not found: {args.arch}")
        try:
            from nas.space import load_arch_file  # validates with key paths
        except ImportError:
            from nas.arch import Arch

            try:
                return Arch.load(args.arch)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{args.arch}: {exc}") from None
        return load_arch_file(args.arch)
    try:
        from nas.presets import list_presets, load_preset
    except ImportError as exc:
        raise UserError(f"presets are not available in this checkout ({exc}); use --arch or --ir") from None
    name = args.preset or DEFAULT_PRESET
    if name not in list_presets():
        raise UserError(f"unknown preset {name!r}; allowed: {', '.join(list_presets())}")
    return load_preset(name)


def _print(stats: LatencyStats, label: str, cache_note: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"model": label, **stats.to_dict(), "machine_description": describe_machine()}, indent=2))
        return
    print(f"{label}: {stats.backend} {stats.runtime_version} | {stats.precision} | {stats.threads} threads | "
          f"{stats.resolution}x{stats.resolution}{cache_note}")
    print(f"  machine {machine_line()}")
    print(f"  latency {stats.summary()}")


def _file_precision(path: Path) -> str:
    """The precision a model file is deployed at (int8 when quantized). Reading it (ov_read, .onnx too)
    makes a damaged file a one-line UserError before anything is printed."""
    precision = ir_precision(path)
    return precision if path.suffix.lower() == ".xml" else DEFAULT_PRECISION


def _say_wait(others: float, waited_s: float) -> None:
    print(wait_line(others, waited_s), file=sys.stderr)


def _predictor_command(args: argparse.Namespace, cache: LatencyCache | None) -> int:
    from nas.latency._predictor import calibrate_command, predict_command, refit_command

    precision = args.precision or DEFAULT_PRECISION
    if args.calibrate:
        return calibrate_command(args.space, backend=args.backend, threads=args.threads, resolution=args.resolution,
                                 precision=precision, cache=cache, quick=args.quick, path=args.predictor,
                                 quiet=args.quiet, widths=args.widths)
    if args.refit:
        return refit_command(args.predictor, backend=args.backend, threads=args.threads,
                             resolution=args.resolution or 224, precision=precision)
    if args.ir is not None:
        raise UserError("--predict takes --preset or --arch (the predictor reads the architecture, not a file)")
    arch = _load_arch(args)
    return predict_command(arch, f"{arch.name or args.preset or args.arch} ({arch.hash})", backend=args.backend,
                           threads=args.threads, resolution=args.resolution or 224, precision=precision,
                           path=args.predictor, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    check_backend(args.backend)  # before building anything: 'cuda' without a GPU fails fast
    if args.precision is not None:
        check_precision(args.precision, args.backend)
    settings = MeasureSettings.quick() if args.quick else MeasureSettings()
    if args.passes is not None:
        if args.passes < 1:
            raise UserError(f"--passes must be >= 1, got {args.passes}")
        settings = replace(settings, passes=args.passes)
    cache = None if args.no_cache else LatencyCache(args.cache)
    if args.calibrate or args.predict or args.refit:
        return _predictor_command(args, cache)
    hits_before = cache.hits if cache else 0
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    (remove_wait_hook if args.quiet else add_wait_hook)(_say_wait)  # other processes busy: say why it waits

    if args.ir is not None:
        label = str(args.ir)
        check_model_file(args.ir, args.backend)
        file_precision = _file_precision(args.ir)  # reads the file: a damaged one fails here, before any line
        precision = args.precision or file_precision
        say(f"timing {label} on {args.backend} at {precision} ...")
        stats = measure_ir(args.ir, args.backend, args.threads, precision=precision, resolution=args.resolution,
                           cache=cache, settings=settings, refresh=args.refresh)
    else:
        arch = _load_arch(args)
        label = f"{arch.name or args.preset or args.arch} ({arch.hash})"
        resolution = args.resolution or 224
        precision = args.precision or DEFAULT_PRECISION
        hit = None
        if cache is not None and not args.refresh:  # a hit needs no model built
            hit = lookup(cache, arch.hash, resolution, args.backend, args.threads, precision)
        if hit is not None:
            stats = hit
        else:
            from nas.models import build_model

            say(f"building and timing {label} on {args.backend} at {precision} ...")
            stats = measure(build_model(arch), resolution, args.backend, args.threads, precision=precision,
                            cache=cache, key=arch.hash, settings=settings, refresh=args.refresh)
    note = ""
    if cache is not None:
        note = f" | cache {'hit' if cache.hits > hits_before else 'miss'}: {cache.path}"
    _print(stats, label, note, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
