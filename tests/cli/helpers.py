"""Shared pieces of the CLI tests: running ``main`` in-process and checking outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from deformconv.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A tiny classification run: width-4 ResNet-50 on 32 px synthetic images (seconds). Batches
# of 2 give res5's 1x1 maps batch statistics over 2 values and huge gradients: clipped, the
# weights stay near their init and eval-mode outputs O(1); unclipped they reach ~1e9..1e15
# within 4 steps, and how far depends on each CPU's rounding.
TINY_CLS = ["--model", "resnet50", "--base-channels", "4", "--image-size", "32",
            "--train-size", "8", "--val-size", "4", "--batch-size", "2", "--grad-clip", "1",
            "--no-progress"]


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr); argparse exits become codes too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_valid_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 50 and image.size[1] > 50, image.size
