"""Speed of deform_roi_pool / deform_psroi_pool: ours vs torchvision, in one process.

Shapes of the paper's heads: a Faster R-CNN head pooling 512 RoIs from a (1, 256, 50, 68)
stride-16 map to 7×7 with 2×2 samples per bin (against ``torchvision.ops.roi_align``), and
R-FCN's position-sensitive pooling of 300 RoIs from (1, 7·7·21, 38, 63) score maps with
group size 7 and 4×4 samples per bin (against ``torchvision.ops.ps_roi_align`` with
sampling_ratio 4: the same number of samples). Each time is the best of N repeats after a
warm-up, the ops of a table taking turns (round-robin) so that a burst of load elsewhere on a
shared machine hits them alike; the minimum is the least disturbed measurement.

    python benchmarks/bench_roi_pool.py              # N = 20
    python benchmarks/bench_roi_pool.py --repeats 5  # quicker
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable, Sequence

import torch
from torchvision.ops import ps_roi_align, roi_align

from bench_deform_conv import backward_and_clear, best_times, cpu_backend
from deformconv.cli._common import positive_int
from deformconv.ops import deform_psroi_pool, deform_roi_pool

STRIDE = 16


def proposals(k: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """``(k, 5)`` boxes in image pixels, 16 to ~600 px wide, like RPN proposals."""
    img_h, img_w = height * STRIDE, width * STRIDE
    size = 16 * torch.exp(torch.rand(k, 2, generator=gen) * 3.6)  # 16 .. ~590 px
    center = torch.rand(k, 2, generator=gen) * torch.tensor([img_w, img_h])
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    boxes = boxes.clamp(min=0).minimum(torch.tensor([img_w, img_h, img_w, img_h]) - 1)
    return torch.cat([torch.zeros(k, 1), boxes], dim=1)


def forward_backward(fn: Callable[..., torch.Tensor], *leaves: torch.Tensor) -> Callable[[], None]:
    """``fn`` on ``leaves`` and its backward, leaving no gradient behind (the three ops share
    the input: they would otherwise add to each other's gradient)."""
    return lambda: backward_and_clear(fn(*leaves), leaves)


def roi_case(repeats: int) -> list[tuple[str, float, float]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 50, 68, generator=gen)
    rois = proposals(512, 50, 68, gen)
    offset = 0.5 * torch.randn(512, 2, 7, 7, generator=gen)
    options = {"output_size": 7, "spatial_scale": 1 / STRIDE, "sampling_ratio": 2,
               "aligned": True}

    def ours(x, offset=None):
        return deform_roi_pool(x, rois, offset, **options)

    def theirs(x):
        return roi_align(x, rois, **options)

    names = ["torchvision roi_align", "deform_roi_pool, no offset", "deform_roi_pool, offset"]
    return _measure(names, theirs, ours, x, offset, repeats)


def _measure(names: list[str], theirs: Callable, ours: Callable, x: torch.Tensor,
             offset: torch.Tensor, repeats: int) -> list[tuple[str, float, float]]:
    """Forward (no grad) and forward+backward times of theirs, ours, ours with offset."""
    with torch.no_grad():
        forward = best_times(dict(zip(names, [lambda: theirs(x), lambda: ours(x),
                                              lambda: ours(x, offset)], strict=True)), repeats)
    xg, og = x.clone().requires_grad_(), offset.clone().requires_grad_()
    both = best_times(dict(zip(names, [forward_backward(theirs, xg), forward_backward(ours, xg),
                                       forward_backward(ours, xg, og)], strict=True)), repeats)
    return [(name, forward[name], both[name]) for name in names]


def psroi_case(repeats: int) -> list[tuple[str, float, float]]:
    gen = torch.Generator().manual_seed(1)
    classes, k = 21, 7
    x = torch.randn(1, k * k * classes, 38, 63, generator=gen)
    rois = proposals(300, 38, 63, gen)
    offset = torch.randn(300, 2, k, k, generator=gen)

    def ours(x, offset=None):
        return deform_psroi_pool(x, rois, offset, spatial_scale=1 / STRIDE, output_dim=classes,
                                 group_size=k, pooled_size=k, sample_per_part=4,
                                 trans_std=0.1)

    def theirs(x):
        return ps_roi_align(x, rois, k, 1 / STRIDE, sampling_ratio=4)

    names = ["torchvision ps_roi_align", "deform_psroi_pool, no offset",
             "deform_psroi_pool, offset"]
    return _measure(names, theirs, ours, x, offset, repeats)


def print_table(title: str, rows: list[tuple[str, float, float]]) -> None:
    base_f, base_b = rows[0][1], rows[0][2]
    print(f"\n{title}")
    print("| op | forward ms | ratio | forward+backward ms | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, f, b in rows:
        print(f"| {name} | {f * 1e3:.2f} | {f / base_f:.2f} | {b * 1e3:.2f} | {b / base_b:.2f} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=20, help="best of this many runs")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, ours on {cpu_backend()}, "
          f"best of {args.repeats}; ratio = time / torchvision's")
    print_table("deform_roi_pool: (1, 256, 50, 68), 512 RoIs, 7x7, sampling_ratio 2",
                roi_case(args.repeats))
    print_table("deform_psroi_pool: (1, 7*7*21, 38, 63), 300 RoIs, group_size 7, 4x4 samples",
                psroi_case(args.repeats))


if __name__ == "__main__":
    main()
