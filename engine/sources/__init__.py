"""Source adapters, one per on-disk dataset format; importing this package registers all of them."""

from __future__ import annotations

from engine.sources import (  # noqa: F401  (imported for registration)
    affectnet,
    affwild2,
    csv_list,
    diffusionfer,
    expw,
    fer2013,
    ferplus,
    flat_folder,
    image_folder,
    kaggle_fer2013,
    mindface,
    rafdb,
)
from engine.sources.base import (
    SourceAdapter,
    SourceRow,
    adapter_names,
    get_adapter,
    list_source_rows,
    locator_size,
    make_key,
    path_key,
    read_bytes,
    register_adapter,
)

__all__ = [
    "SourceAdapter",
    "SourceRow",
    "adapter_names",
    "get_adapter",
    "list_source_rows",
    "locator_size",
    "make_key",
    "path_key",
    "read_bytes",
    "register_adapter",
]
