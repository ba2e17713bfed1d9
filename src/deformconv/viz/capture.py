"""Record the offsets deformable layers use in a forward pass, through forward hooks.

Every :class:`~deformconv.nn.DeformConv2d` (found by ``isinstance``) gets a hook on its offset
conv; :class:`~deformconv.nn.DeformRoIPool` / :class:`~deformconv.nn.DeformPSRoIPool` get
hooks that keep their RoIs and normalised offsets (see :mod:`deformconv.viz.roi`). Only the
chosen images of a batch and the first ``max_calls`` forward passes are kept, as float32 CPU
tensors, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import torch
from torch import Tensor, nn

from ..nn import DeformConv2d, DeformPSRoIPool, DeformRoIPool
from .coords import cumulative_stride
from .roi import RoIOffsetRecord, install_roi_hooks

__all__ = ["LayerGeometry", "OffsetCapture", "OffsetRecord", "capture_offsets"]


def layer_label(name: str) -> str:
    """A layer's name for titles and legends: the model itself is named ``""``."""
    return name or "the model"


@dataclass(frozen=True)
class LayerGeometry:
    """Kernel, stride, padding, dilation and offset groups of a deformable conv."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    offset_groups: int = 1

    @classmethod
    def of(cls, conv: DeformConv2d) -> LayerGeometry:
        return cls(conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   conv.offset_groups)

    @property
    def kernel_points(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """docs/OPS.md: ``Hout = (H + 2*pad - dil*(k - 1) - 1) // stride + 1``, same for W."""
        return tuple(  # type: ignore[return-value]
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(input_size, self.padding, self.dilation,
                                        self.kernel_size, self.stride, strict=True)
        )

    def kernel_offsets(self) -> Tensor:
        """``(kh*kw, 2)`` float64: regular position of kernel point ``k = i*kw + j`` relative
        to ``(y*stride_h, x*stride_w)``, i.e. ``(i*dil_h - pad_h, j*dil_w - pad_w)``."""
        kh, kw = self.kernel_size
        i = torch.arange(kh, dtype=torch.float64).repeat_interleave(kw)
        j = torch.arange(kw, dtype=torch.float64).repeat(kh)
        return torch.stack([i * self.dilation[0] - self.padding[0],
                            j * self.dilation[1] - self.padding[1]], dim=1)


@dataclass(frozen=True)
class OffsetRecord:
    """What one deformable conv sampled for the kept images of one forward pass.

    Attributes:
        name: the layer's name in ``model.named_modules()``.
        geometry: the layer's :class:`LayerGeometry`.
        input_size: ``(H, W)`` of the layer input.
        offset: ``(n, 2*G*kh*kw, Hout, Wout)`` float32, laid out as docs/OPS.md says (Δh, Δw).
        mask: ``(n, G*kh*kw, Hout, Wout)`` after the sigmoid, or None (DCN v1).
        images: batch index of each of the ``n`` kept images.
        image_size: ``(H, W)`` of the network input, if known; needed for image coordinates.
        call: when the layer ran: the number of deformable conv calls the capture saw
            before this one (records of one pass, bottom layer first, have increasing
            numbers); None when unknown, for a record made by hand.
    """

    name: str
    geometry: LayerGeometry
    input_size: tuple[int, int]
    offset: Tensor
    mask: Tensor | None
    images: tuple[int, ...]
    image_size: tuple[int, int] | None = None
    call: int | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        return int(self.offset.shape[-2]), int(self.offset.shape[-1])

    def _stride(self, size: tuple[int, int]) -> Tensor:
        if self.image_size is None:
            raise ValueError(
                f"layer {self.name!r}: image_size is unknown (the model input was not a "
                "(N, C, H, W) tensor); give image_size to OffsetCapture or use "
                "dataclasses.replace(record, image_size=(H, W))"
            )
        return torch.tensor([cumulative_stride(self.image_size[0], size[0]),
                             cumulative_stride(self.image_size[1], size[1])],
                            dtype=torch.float64)

    @property
    def input_stride(self) -> Tensor:
        """``(2,)`` (stride_y, stride_x) of the layer input w.r.t. the image, the cumulative
        stride of the layers below (:func:`~deformconv.viz.coords.cumulative_stride`)."""
        return self._stride(self.input_size)

    @property
    def output_stride(self) -> Tensor:
        """``(2,)`` cumulative stride of the layer output."""
        return self._stride(self.output_size)


def _image_batch(args: tuple) -> Tensor | None:
    first = args[0] if args else None
    return first if isinstance(first, Tensor) and first.dim() == 4 else None


class OffsetCapture:
    """Context manager recording the offsets of deformable layers during forward passes.

    Args:
        model: any module; its DeformConv2d / DeformRoIPool / DeformPSRoIPool submodules are
            hooked (found by ``isinstance``).
        layers: names (as in ``model.named_modules()``) of the layers to record; None = all.
        images: batch indices to keep (others are dropped at once); None = the whole batch.
            An index past the batch of the first recorded pass is refused (ValueError);
            later passes keep those their batch holds (a short last batch keeps fewer).
        max_calls: forward passes recorded per layer; later ones are ignored. None = all.
        image_size: ``(H, W)`` of the network input; by default read from the first
            positional argument of ``input_module`` when it is an ``(N, C, H, W)`` tensor.
        input_module: name of the submodule whose input is "the image" (default: the model
            itself). For torchvision-style detectors, which resize and pad a list of images,
            ``"backbone"`` gives the batched tensor the convs actually see.
        keep_inputs: also keep that input tensor (kept images only) in ``inputs``, one per
            recorded pass, to draw on.

    After the ``with`` block, ``records[name]`` holds one :class:`OffsetRecord` per recorded
    pass of a deformable conv, ``roi_records[name]`` one
    :class:`~deformconv.viz.roi.RoIOffsetRecord` per pass of a deformable RoI pooling, and
    ``inputs`` the ``(n, C, H, W)`` kept input images when ``keep_inputs``.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from deformconv.nn import DeformConv2d
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DeformConv2d(8, 8, 3, padding=1))
        >>> with OffsetCapture(model, images=[0]) as capture:
        ...     out = model(torch.randn(2, 3, 16, 16))
        >>> list(capture.latest())                    # layer names
        ['1']
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        images: Sequence[int] | None = None,
        max_calls: int | None = 1,
        image_size: tuple[int, int] | None = None,
        input_module: str | None = None,
        keep_inputs: bool = False,
    ) -> None:
        modules = dict(model.named_modules())
        if input_module is not None and input_module not in modules:
            raise ValueError(f"input_module: no module named {input_module!r} in the model")
        kinds = (DeformConv2d, DeformRoIPool, DeformPSRoIPool)
        if layers is None:
            chosen = {n: m for n, m in modules.items() if isinstance(m, kinds)}
        else:
            chosen = {}
            for name in layers:
                if name not in modules:
                    raise ValueError(f"layers: no module named {name!r} in the model")
                if not isinstance(modules[name], kinds):
                    raise ValueError(
                        f"layers: {name!r} is a {type(modules[name]).__name__}, expected a "
                        "DeformConv2d, DeformRoIPool or DeformPSRoIPool"
                    )
                chosen[name] = modules[name]
        if images is not None and any(i < 0 for i in images):
            raise ValueError(f"images must be batch indices >= 0, got {list(images)}")
        if max_calls is not None and max_calls < 1:
            raise ValueError(f"max_calls must be >= 1 or None, got {max_calls}")
        self.model = model
        self.layers = chosen
        self.images = None if images is None else tuple(images)
        self.max_calls = max_calls
        self.image_size = image_size
        self.input_module = model if input_module is None else modules[input_module]
        self.keep_inputs = keep_inputs
        self.inputs: list[Tensor] = []
        self.records: dict[str, list[OffsetRecord]] = {}
        self.roi_records: dict[str, list[RoIOffsetRecord]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._input_size: tuple[int, int] | None = None
        self._conv_calls = 0
        self._recorded = False  # anything kept yet: clear() does not reset it

    def __enter__(self) -> OffsetCapture:
        if self._handles:
            raise RuntimeError("OffsetCapture is already active")
        self._handles.append(self.input_module.register_forward_pre_hook(self._on_input))
        for name, module in self.layers.items():
            if isinstance(module, DeformConv2d):
                hook = self._conv_hook(name, module)
                self._handles.append(module.conv_offset.register_forward_hook(hook))
            else:
                self._handles += install_roi_hooks(name, module, self._keep_roi_record,
                                                   self._roi_wanted)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Drop everything recorded so far (the hooks stay)."""
        self.records.clear()
        self.roi_records.clear()
        self.inputs.clear()

    def latest(self) -> dict[str, OffsetRecord]:
        """The last recorded pass of each deformable conv, by layer name, in the order the
        layers ran (bottom first)."""
        return {name: recs[-1] for name, recs in self.records.items() if recs}

    def latest_rois(self) -> dict[str, RoIOffsetRecord]:
        """The last recorded pass of each deformable RoI pooling, by layer name."""
        return {name: recs[-1] for name, recs in self.roi_records.items() if recs}

    def _on_input(self, module: nn.Module, args: tuple) -> None:
        batch = _image_batch(args)
        size = None if batch is None else (int(batch.shape[-2]), int(batch.shape[-1]))
        self._input_size = self.image_size or size
        if batch is not None and not self._recorded:
            self._kept(batch.shape[0])  # refuses bad indices before the model runs
        if self.keep_inputs and batch is not None and self._wanted(len(self.inputs)):
            self.inputs.append(batch.detach()[self._kept(batch.shape[0])].float().cpu())
            self._recorded = True

    def _wanted(self, recorded: int) -> bool:
        return self.max_calls is None or recorded < self.max_calls

    def _kept(self, batch: int) -> list[int]:
        """The indices of ``images`` a batch of ``batch`` holds. Before anything is kept an
        index past the batch is refused (a typo would leave the records empty); later
        batches, such as a short last one, keep those they hold."""
        if self.images is None:
            return list(range(batch))
        if not self._recorded:
            for i in self.images:
                if i >= batch:
                    raise ValueError(f"images: index {i} is out of range for a batch of "
                                     f"{batch} image(s) (valid indices 0..{batch - 1})")
        return [i for i in self.images if i < batch]

    def _conv_hook(self, name: str, conv: DeformConv2d) -> Callable:
        geometry = LayerGeometry.of(conv)
        points = 2 * geometry.offset_groups * geometry.kernel_points

        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            call = self._conv_calls
            self._conv_calls += 1
            if not self._wanted(len(self.records.get(name, []))):
                return
            kept = self._kept(out.shape[0])
            out = out.detach()[kept].float().cpu()  # (n, 2*G*kk [+ G*kk], Hout, Wout)
            mask = out[:, points:].sigmoid() if conv.modulated else None
            record = OffsetRecord(name, geometry, (int(args[0].shape[-2]), int(args[0].shape[-1])),
                                  out[:, :points], mask, tuple(kept), self._input_size, call)
            self.records.setdefault(name, []).append(record)
            self._recorded = True

        return hook

    def _roi_wanted(self, name: str) -> bool:
        return self._wanted(len(self.roi_records.get(name, [])))

    def _keep_roi_record(self, record: RoIOffsetRecord) -> None:
        """Called by the RoI hooks: filter to the kept images, stamp the image size, store."""
        if self.images is not None:
            keep = torch.isin(record.rois[:, 0].long(), torch.tensor(self.images))
            record = record.select(keep)
        record = dataclasses.replace(record, image_size=self._input_size)
        self.roi_records.setdefault(record.name, []).append(record)
        self._recorded = True


def capture_offsets(
    model: nn.Module,
    *inputs: object,
    layers: Sequence[str] | None = None,
    images: Sequence[int] | None = None,
    image_size: tuple[int, int] | None = None,
    input_module: str | None = None,
) -> dict[str, OffsetRecord]:
    """Run ``model(*inputs)`` once without gradients and return each deformable conv's
    :class:`OffsetRecord`, by layer name (arguments as :class:`OffsetCapture`; an index of
    ``images`` past the batch is refused). The model's train/eval mode is left as it is."""
    with torch.no_grad(), OffsetCapture(model, layers, images, 1, image_size,
                                        input_module) as capture:
        model(*inputs)
    return capture.latest()
