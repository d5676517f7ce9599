"""Regions for the grounded captioner: proposals (REGION_SOURCES), RoIAlign, and a frozen region encoder.

Importing this package registers the region sources ``components``, ``grid`` and ``oracle``.
"""

from weakground.regions.encoder import (RegionEncoder, Regions, encode_dataset, positions_of, resize_square,
                                        scale_boxes)
from weakground.regions.roi_align import roi_align
from weakground.regions.sources import (ComponentSource, GridSource, OracleSource, RegionConfig, RegionSource,
                                        build_source)

__all__ = ["ComponentSource", "GridSource", "OracleSource", "RegionConfig", "RegionEncoder", "RegionSource",
           "Regions", "build_source", "encode_dataset", "positions_of", "resize_square", "roi_align", "scale_boxes"]
