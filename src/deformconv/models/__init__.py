"""Deformable networks of the DCN paper and their plain twins, built by name.

``create(name, num_classes, deformable=True, **kwargs)``; ``deformable=False`` gives the
plain twin (same parameter names minus the offset branches). What ``forward`` takes and
returns, by ``model_task(name)``:

- classification (``resnet18/34/50/101``): ``model(images (N, 3, H, W)) -> logits
  (N, classes)``.
- segmentation (``deeplab_resnet18/34/50/101``, ``compact_fcn``): ``model(images) -> logits
  (N, classes, H, W)`` at the input size; ``model(images, masks (N, H, W) int64) ->
  {"loss_seg": loss}`` (255 = ignore), also ``model.loss(logits, masks)``.
- detection (``faster_rcnn_resnet18/34/50/101``, ``rfcn_resnet18/34/50/101``): torchvision's
  convention, ``model(list of (3, H, W) images in [0, 1], targets)`` -> loss dict in train
  mode; ``model(images)`` -> ``[{"boxes", "labels", "scores"}]`` per image in eval mode.

Every ResNet-based model (all but ``compact_fcn``) has
``load_backbone_state_dict(torchvision_resnet_state_dict)``. Needs torchvision (the
``vision`` extra).
"""

from .._extras import require

require("torchvision", __name__)  # first: the modules below import it

from . import compact, deeplab, faster_rcnn, resnet, rfcn  # noqa: E402
from ._registry import TASKS, create, list_models, model_task, register_model  # noqa: E402
from .compact import CompactFCN  # noqa: E402
from .deeplab import DeepLab  # noqa: E402
from .detection import DetectionConfig, TwoStageDetector  # noqa: E402
from .faster_rcnn import FasterRCNN  # noqa: E402
from .resnet import ResNet, checkpoint_filter_fn, load_backbone_state_dict  # noqa: E402
from .rfcn import RFCN  # noqa: E402

__all__ = [
    "RFCN",
    "TASKS",
    "CompactFCN",
    "DeepLab",
    "DetectionConfig",
    "FasterRCNN",
    "ResNet",
    "TwoStageDetector",
    "checkpoint_filter_fn",
    "compact",
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
