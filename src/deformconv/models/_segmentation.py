"""What the segmentation models share: logits at the input size, their loss, predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import eval_mode

__all__ = ["PixelClassifier"]


class PixelClassifier(nn.Module):
    """Base of the segmentation models: subclasses compute class scores at their output
    stride in :meth:`scores` and set ``ignore_index``.

    ``forward(images (N, 3, H, W)) -> logits (N, classes, H, W)`` (scores upsampled
    bilinearly); with targets, ``forward(images, masks)`` returns ``{"loss_seg": loss}``
    instead, in any mode (the torchvision detection convention, so one training loop serves
    both); :meth:`loss` is the same cross-entropy on given logits. Masks are ``(N, H, W)``
    integer class indices, ``ignore_index`` marking pixels without a label.
    """

    ignore_index: int

    def scores(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, classes, H/s, W/s) class scores at the output stride s."""
        raise NotImplementedError

    def forward(self, images: Tensor, targets: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        logits = F.interpolate(self.scores(images), size=images.shape[-2:], mode="bilinear",
                               align_corners=False)
        if targets is None:
            return logits
        return {"loss_seg": self.loss(logits, targets)}

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over labelled pixels; 0 (with a graph) when none is labelled."""
        if targets.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"targets must be (N, H, W) = {tuple(logits.shape[:1] + logits.shape[2:])}, "
                f"got {tuple(targets.shape)}"
            )
        targets = targets.long()
        losses = F.cross_entropy(logits, targets, ignore_index=self.ignore_index,
                                 reduction="none")  # 0 at ignored pixels
        labelled = (targets != self.ignore_index).sum()
        # the sum over labelled pixels by their count (at least 1), not a branch on whether
        # any is labelled: torch.compile(fullgraph=True) cannot trace a guard on the data.
        # With none, the sum and its gradient are 0 (cross_entropy's mean would be 0/0).
        # Summed in float32 at least: a float16 sum over a batch's pixels could overflow.
        total = losses.sum(dtype=torch.promote_types(losses.dtype, torch.float32))
        return (total / labelled.clamp_min(1)).to(logits.dtype)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, H, W) class indices, in eval mode whatever the model's mode:
        BatchNorm normalises with its running statistics and leaves them as they are. Each
        submodule's mode is restored afterwards."""
        with eval_mode(self):
            return self(images).argmax(1)
