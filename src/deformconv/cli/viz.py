"""``deformconv viz``: what the offsets of a model learned, as PNG figures and a markdown file."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._extras import require
from .._paths import check_folder_possible
from ..runs import offset_figures
from ._build import (
    add_data_options,
    add_model_options,
    build_datasets,
    build_model,
    check_classes_match,
    check_model_flags_match,
    data_spec_from_args,
    model_from_checkpoint,
    model_spec_from_args,
    resolve_model_name,
    specs_from_checkpoint,
)
from ._common import CLIError, non_negative_int, positive_int, user_path

HELP = "plot the sampling locations (and RoI bin offsets) of deformable layers as PNGs"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "viz", help=HELP, description=HELP + ", with offset statistics and the effective "
        "dilation per object size in OUT/offsets.md. Give a checkpoint, or a model name for a "
        "freshly initialised model (its offsets are zero: a regular grid).",
        epilog="example: deformconv viz runs/train/last.pt --index 3 --count 2 --out runs/viz")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint written by train or demo")
    add_model_options(parser)
    add_data_options(parser, with_train=False)
    parser.add_argument("--index", type=non_negative_int, default=0,
                        help="first validation image to draw (default 0)")
    parser.add_argument("--count", type=positive_int, default=2,
                        help="images to draw (default 2)")
    parser.add_argument("--stack-depth", type=positive_int, default=3,
                        help="deformable layers back-projected together (paper Fig. 5: 3)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="initialisation seed of a fresh model")
    parser.add_argument("--out", default="runs/viz", type=user_path,
                        help="output folder (default runs/viz); an earlier viz run's figures "
                             "there are replaced, files of those names that are not in its "
                             ".deformconv-viz list only with --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace or remove figures and offsets.md in --out that are not "
                             "in its .deformconv-viz list")
    parser.set_defaults(run=run_viz)
    return parser


def run_viz(args: argparse.Namespace) -> int:
    require("matplotlib.figure", "deformconv viz")  # before --out is created
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give the folder to write the figures into")
    check_folder_possible(out, f"--out {out}")
    written, replaceable = _replaceable_files(out, args.overwrite)  # before any work
    if args.checkpoint:
        model_spec, data_spec, _ = specs_from_checkpoint(args.checkpoint)
        check_model_flags_match(args, model_spec)
        data_spec = data_spec_from_args(args, data_spec)
        task = model_spec.task
        _, dataset, classes = build_datasets(data_spec, task, need_train=False)
        check_classes_match(classes, model_spec)
        model = model_from_checkpoint(model_spec, args.checkpoint)
    else:
        if args.model is None and args.task is None:
            raise CLIError("give a checkpoint, or --model NAME (or --task) for a fresh model")
        data_spec = data_spec_from_args(args)
        name, task = resolve_model_name(args.task, args.model, data_spec)
        _, dataset, classes = build_datasets(data_spec, task, need_train=False)
        model_spec = model_spec_from_args(args, classes, image_size=data_spec.image_size,
                                          name=name)
        model = build_model(model_spec, seed=args.seed)
    images = len(dataset)  # type: ignore[arg-type]
    if args.index >= images:
        raise CLIError(f"--index {args.index} is past the last of the {images} validation "
                       "images")
    indices = list(range(args.index, min(args.index + args.count, images)))
    if len(indices) < args.count:
        print(f"drawing {len(indices)} of the {args.count} images asked for: the validation "
              f"set ends at image {images - 1}")

    def list_before_writing(path: Path) -> None:
        if path.name not in written:
            written.append(path.name)
            _write_list(out, written)

    report = offset_figures(model, dataset, indices, task, out, stack_depth=args.stack_depth,
                            on_write=list_before_writing)
    _remove_earlier_figures(out, report.figures, replaceable)
    source = args.checkpoint or f"fresh {model_spec.name}"
    list_before_writing(out / TABLES)
    (out / TABLES).write_text(f"{TABLES_HEADER}{source}\n\nImages {indices} of the "
                              f"validation data.\n\n{report.markdown()}")
    _write_list(out, [*(path.name for path in report.figures), TABLES])
    for path in report.figures:
        print(path)
    print(f"tables: {out / 'offsets.md'}")
    return 0


TABLES = "offsets.md"
TABLES_HEADER = "# Offsets of "  # how every viz version's offsets.md begins
# Lists the files viz wrote into its folder, one name a line, each before it is written: a
# later run replaces those, and refuses files of the same names that are not listed.
MARKER = ".deformconv-viz"


def _replaceable_files(out: Path, overwrite: bool) -> tuple[list[str], set[str]]:
    """The names of the files in ``out`` that viz wrote, and of those a viz run may replace
    or remove: those and, with ``overwrite``, any files named as viz names its figures and
    offsets.md; without it, such files that are not viz's are refused.

    Viz's are those its :data:`MARKER` lists; in a folder without one (older versions
    wrote none), all of them when offsets.md begins as viz writes it.
    """
    from ..viz.report import figures_in

    if not out.is_dir():
        return [], set()
    ours = [path.name for path in figures_in(out)]
    if (out / TABLES).exists():
        ours.append(TABLES)
    marker = out / MARKER
    if marker.is_file():
        listed = set(marker.read_text().split())
        written = [name for name in ours if name in listed]
    else:
        written = ours if _is_viz_tables(out / TABLES) else []
    foreign = sorted(set(ours) - set(written))
    if foreign and not overwrite:
        more = f" and {len(foreign) - 6} more" if len(foreign) > 6 else ""
        raise CLIError(f"--out {out} holds {', '.join(foreign[:6])}{more}, named as viz "
                       f"names its files, that are not in its {MARKER} list: written by an "
                       "older viz or not by viz; viz would replace or remove them: give "
                       "another --out, or --overwrite to replace them")
    return written, set(ours)


def _is_viz_tables(path: Path) -> bool:
    """Whether ``path`` is an offsets.md a viz run wrote: it begins with :data:`TABLES_HEADER`."""
    header = TABLES_HEADER.encode()
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(len(header)) == header


def _write_list(out: Path, names: list[str]) -> None:
    """Replace the :data:`MARKER` list of ``out`` by ``names``, atomically: a run stopped
    at any point leaves a whole list."""
    from ..engine.checkpoint import write_atomically

    write_atomically(out / MARKER, lambda file: file.write("".join(
        f"{name}\n" for name in names).encode()))


def _remove_earlier_figures(out: Path, figures: list[Path], replaceable: set[str]) -> None:
    """Remove the figures of an earlier viz run from ``out`` (those ``replaceable`` ones
    not among this run's ``figures``): offsets.md lists only this run's."""
    from ..viz.report import figures_in

    kept = {path.resolve() for path in figures}
    earlier = [path for path in figures_in(out)
               if path.name in replaceable and path.resolve() not in kept]
    for path in earlier:
        path.unlink()
    if earlier:
        print(f"removed {len(earlier)} figure(s) of an earlier viz run from {out}: "
              f"{', '.join(path.name for path in earlier)}")
