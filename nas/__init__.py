"""Search side: search space, architectures, models, data, latency, proxy training, search, report."""

from nas.arch import Arch, StageSpec
from nas.errors import ConfigError, DataError, UserError

__all__ = ["Arch", "StageSpec", "ConfigError", "DataError", "UserError"]
