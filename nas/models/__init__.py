"""Model families (one file each, registering itself) and the backbone that assembles them from an `Arch`.

Importing the package imports every public module in it, so a new `nas/models/<family>.py` that
calls `register_mixer` is found without being listed anywhere.
"""

import importlib
import pkgutil

from nas.models.backbone import Backbone, build_model, total_stride
from nas.models.counting import count_macs, count_params
from nas.models.registry import check_catalogue, registered_mixers

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
check_catalogue()

__all__ = ["Backbone", "build_model", "count_macs", "count_params", "registered_mixers", "total_stride"]
