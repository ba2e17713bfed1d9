"""Runs: what the command line and the paper studies share, as a library.

- :mod:`.specs`: :class:`DataSpec` / :class:`ModelSpec` (plain values stored in
  checkpoints) and the builders :func:`build_datasets`, :func:`build_model`,
  :func:`from_scratch_spec`, :func:`specs_from_checkpoint`, :func:`model_from_checkpoint`.
- :mod:`.twins`: a deformable model and its plain twin starting as the same function.
- :mod:`.timing`: parameters, seconds per training iteration, ms per image, threads.
- :mod:`.offsets`: offset figures and effective dilation of a model over dataset samples.
- :mod:`.breakdown`: a segmentation model's quality per image and per object scale.
- :mod:`.plots`: learning curves, segmentation predictions, recall per scale as PNG.
- :mod:`.results`: JSON results on disk.
- :mod:`.pretrain`: a backbone pretrained once on synthetic classification, cached.
- :mod:`.demo`, :mod:`.demo_report`: the demo run behind ``deformconv demo``, its report.

Example::

    >>> from deformconv.runs import DataSpec, build_datasets, from_scratch_spec, twin_models
    >>> train_set, val_set, classes = build_datasets(DataSpec(image_size=64), "segmentation")
    >>> deformable = from_scratch_spec("deeplab_resnet50", classes, image_size=64)
"""

from .breakdown import (
    image_mious,
    object_recalls,
    predict_masks,
    recall_by_scale,
    scale_edges,
)
from .demo import DemoSettings, demo_data, demo_specs, run_demo
from .offsets import (
    DilationSummary,
    dilation_over,
    offset_figures,
    offset_inputs,
    sample_targets,
)
from .plots import plot_learning_curves, plot_predictions, plot_scale_recall
from .pretrain import PretrainSettings, load_pretrained, pretrained_backbone, pretraining_seconds
from .results import write_json
from .specs import (
    DataSpec,
    ModelSpec,
    build_datasets,
    build_model,
    from_scratch_spec,
    merge_kwargs,
    model_from_checkpoint,
    specs_from_checkpoint,
    with_categories,
)
from .timing import (
    ms_per_image,
    parameter_count,
    seconds_per_batch,
    seconds_per_iteration,
    set_threads,
    step_seconds,
)
from .twins import twin_model, twin_models

__all__ = [
    "DataSpec",
    "DemoSettings",
    "DilationSummary",
    "ModelSpec",
    "PretrainSettings",
    "build_datasets",
    "build_model",
    "demo_data",
    "demo_specs",
    "dilation_over",
    "from_scratch_spec",
    "image_mious",
    "load_pretrained",
    "merge_kwargs",
    "model_from_checkpoint",
    "ms_per_image",
    "object_recalls",
    "offset_figures",
    "offset_inputs",
    "parameter_count",
    "plot_learning_curves",
    "plot_predictions",
    "plot_scale_recall",
    "predict_masks",
    "pretrained_backbone",
    "pretraining_seconds",
    "recall_by_scale",
    "run_demo",
    "sample_targets",
    "scale_edges",
    "seconds_per_batch",
    "seconds_per_iteration",
    "set_threads",
    "specs_from_checkpoint",
    "step_seconds",
    "twin_model",
    "twin_models",
    "with_categories",
    "write_json",
]
