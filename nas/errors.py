"""User-facing errors and the CLI wrapper that turns them into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (file, key, value, CLI flag). Printed as one line, exit code 2."""


class ConfigError(UserError):
    """A search space, arch or preset file that fails validation."""


class DataError(UserError):
    """A dataset path that is missing, empty or malformed."""


class BackendUnavailable(UserError):
    """A latency/runtime backend that cannot run on this machine (e.g. CUDA without a GPU)."""


EXIT_USAGE = 2


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main`; a UserError becomes `error: <message>` on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
