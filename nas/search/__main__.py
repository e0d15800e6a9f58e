"""python -m nas.search: see nas.search.cli."""

import sys

from nas.errors import run_cli
from nas.search.cli import main

sys.exit(run_cli(main))
