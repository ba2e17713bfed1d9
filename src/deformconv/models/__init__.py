"""Deformable networks of the DCN paper and their plain twins, built by name.

Classification ``resnet50/101``; segmentation ``deeplab_resnet50/101``; detection
``faster_rcnn_resnet50/101`` and ``rfcn_resnet50/101``. ``create(name, num_classes,
deformable=False)`` gives the plain twin. Needs torchvision (the ``vision`` extra).
"""

from . import deeplab, faster_rcnn, resnet, rfcn
from ._registry import TASKS, create, list_models, model_task, register_model
from .deeplab import DeepLab
from .detection import DetectionConfig, TwoStageDetector
from .faster_rcnn import FasterRCNN
from .resnet import ResNet, checkpoint_filter_fn, load_backbone_state_dict
from .rfcn import RFCN

__all__ = [
    "RFCN",
    "TASKS",
    "DeepLab",
    "DetectionConfig",
    "FasterRCNN",
    "ResNet",
    "TwoStageDetector",
    "checkpoint_filter_fn",
    "create",
    "deeplab",
    "faster_rcnn",
    "list_models",
    "load_backbone_state_dict",
    "model_task",
    "register_model",
    "resnet",
    "rfcn",
]
