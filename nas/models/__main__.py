"""python -m nas.models --preset NAME | --arch FILE: print parameters and MACs (nas.models.counting) at 224."""

from __future__ import annotations

import json
import sys

from nas.arch import Arch
from nas.cli import Parser
from nas.errors import UserError, run_cli


def count(arch: Arch, resolution: int) -> dict:
    from nas.models import build_model, count_macs, count_params

    model = build_model(arch).eval()
    params, macs = count_params(model), count_macs(model, resolution)
    return {"name": arch.name, "hash": arch.hash, "resolution": resolution,
            "params_m": round(params / 1e6, 3), "macs_g": round(macs / 1e9, 3)}


def main(argv: list[str] | None = None) -> int:
    from nas.presets import list_presets, load_preset
    from nas.space import load_arch_file

    parser = Parser(prog="python -m nas.models", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", help=f"one of: {', '.join(list_presets())}")
    group.add_argument("--arch", help="an architecture YAML file (e.g. a winner's arch.yaml)")
    group.add_argument("--all", action="store_true", help="every preset (the default)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)
    if args.resolution < 16:
        raise UserError(f"--resolution {args.resolution}: must be at least 16")
    if args.arch:
        archs = [load_arch_file(args.arch)]
    elif args.preset:
        archs = [load_preset(args.preset)]
    else:
        archs = [load_preset(name) for name in list_presets()]
    for arch in archs:
        row = count(arch, args.resolution)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['name'] or row['hash']:<24} params {row['params_m']:8.3f} M   "
                  f"MACs {row['macs_g']:7.3f} G @ {args.resolution}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
