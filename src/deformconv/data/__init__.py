"""Datasets, transforms and batching for training and evaluation; nothing about models.

- Synthetic (default, nothing to download): :class:`SyntheticClassification`,
  :class:`SyntheticSegmentation`, :class:`SyntheticDetection`, views of one seeded
  :class:`SceneGenerator`.
- On disk: :class:`CocoDetection` (COCO json + images), :class:`VOCSegmentation`;
  writers :func:`export_coco` and :func:`export_voc`.
- :class:`InMemory`: any of them rendered or loaded once and kept in memory.
- :mod:`deformconv.data.transforms` (flip, quarter turns, resize, scale jitter, crop) and
  :func:`detection_collate`.
"""

from . import transforms
from ._common import IGNORE_INDEX, NoReadableSamplesError, SampleError, readable_sample
from .cached import InMemory
from .catalog import CLASSES, DEFAULT_CLASSES
from .coco import CocoDetection
from .collate import detection_collate
from .export import export_coco, export_voc
from .scene import Scene, SceneConfig, SceneGenerator
from .synthetic import (
    SyntheticClassification,
    SyntheticDetection,
    SyntheticSegmentation,
    semantic_mask,
    synthetic_dataset,
)
from .voc import VOCSegmentation

__all__ = [
    "CLASSES",
    "DEFAULT_CLASSES",
    "IGNORE_INDEX",
    "CocoDetection",
    "InMemory",
    "NoReadableSamplesError",
    "SampleError",
    "Scene",
    "SceneConfig",
    "SceneGenerator",
    "SyntheticClassification",
    "SyntheticDetection",
    "SyntheticSegmentation",
    "VOCSegmentation",
    "detection_collate",
    "export_coco",
    "export_voc",
    "readable_sample",
    "semantic_mask",
    "synthetic_dataset",
    "transforms",
]
