"""Model families (one file each) and the backbone that assembles them from an `Arch`."""

from nas.models.backbone import Backbone, build_model, total_stride
from nas.models.registry import registered_mixers

__all__ = ["Backbone", "build_model", "registered_mixers", "total_stride"]
