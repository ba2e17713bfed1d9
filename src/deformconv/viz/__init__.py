"""What deformable layers learned: offsets, sampling locations, RoI bins, effective dilation.

Capture offsets with :class:`OffsetCapture` (forward hooks), turn them into sampling points
(:func:`sampling_locations`, :func:`back_project` for stacked layers, paper Fig. 5) or RoI
bins (:func:`roi_bins`, Fig. 7), plot them as PNG (:func:`plot_sampling_locations`,
:func:`plot_roi_offsets`; needs matplotlib), and summarise them (:func:`offset_statistics`,
:class:`DilationStats`, Table 2). :func:`offset_report` does all of it for a model and a
batch.
"""

from .capture import LayerGeometry, OffsetCapture, OffsetRecord, capture_offsets
from .coords import feature_to_image, image_to_feature
from .dilation import (
    COCO_AREA_THRESHOLDS,
    SIZE_BUCKETS,
    DilationStats,
    effective_dilation,
    effective_dilation_table,
    format_dilation_table,
    paint_instances,
    scale_thresholds,
    size_buckets,
)
from .plot import (
    plot_roi_offsets,
    plot_sampling_locations,
    plot_stacked_sampling,
    to_display_image,
)
from .report import OffsetReport, offset_report
from .roi import RoIBins, RoIOffsetRecord, RoIPoolGeometry, roi_bins
from .sampling import (
    BackProjection,
    back_project,
    sampling_locations,
    sampling_positions,
    unit_at,
)
from .stats import offset_statistics
from .table import markdown_table

__all__ = [
    "COCO_AREA_THRESHOLDS",
    "SIZE_BUCKETS",
    "BackProjection",
    "DilationStats",
    "LayerGeometry",
    "OffsetCapture",
    "OffsetRecord",
    "OffsetReport",
    "RoIBins",
    "RoIOffsetRecord",
    "RoIPoolGeometry",
    "back_project",
    "capture_offsets",
    "effective_dilation",
    "effective_dilation_table",
    "feature_to_image",
    "format_dilation_table",
    "image_to_feature",
    "markdown_table",
    "offset_report",
    "offset_statistics",
    "paint_instances",
    "plot_roi_offsets",
    "plot_sampling_locations",
    "plot_stacked_sampling",
    "roi_bins",
    "sampling_locations",
    "sampling_positions",
    "scale_thresholds",
    "size_buckets",
    "to_display_image",
    "unit_at",
]
