"""Conventions shared by data, models, engine and the CLI: the task names and the ignore label.

A leaf module (imports nothing), so every package can use it without a new dependency.
"""

__all__ = ["IGNORE_INDEX", "TASKS"]

TASKS = ("classification", "segmentation", "detection")

IGNORE_INDEX = 255  # segmentation label no loss or metric counts ("void" pixels, VOC's convention)
