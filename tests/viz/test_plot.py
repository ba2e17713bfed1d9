"""PNG output: valid files, drawn where the points and boxes are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deformconv.viz import (
    LayerGeometry,
    RoIOffsetRecord,
    RoIPoolGeometry,
    back_project,
    capture_offsets,
    plot_roi_offsets,
    plot_sampling_locations,
    plot_stacked_sampling,
    roi_bins,
    to_display_image,
)

from .helpers import Stack, randomize_offsets, record


def read_png(path) -> np.ndarray:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.width > 0 and image.height > 0
        return np.asarray(image.convert("RGB")).astype(int)


def count_color(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())


class TestPlotSampling:
    def test_points_and_unit_are_drawn_on_a_black_image(self, tmp_path):
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        stack = [record(geometry, torch.zeros(1, 18, 16, 16), (16, 16), name=f"l{n}")
                 for n in range(2)]
        projection = back_project(stack, (8, 8))
        path = plot_sampling_locations(torch.zeros(3, 16, 16), projection,
                                       tmp_path / "sub" / "points.png", title="two layers")
        pixels = read_png(path)
        assert count_color(pixels, (255, 0, 0)) > 20  # bottom level: red
        assert count_color(pixels, (0, 224, 0)) > 5  # the unit: green star
        empty = read_png(plot_sampling_locations(torch.zeros(3, 16, 16), [],
                                                 tmp_path / "empty.png"))
        assert count_color(empty, (255, 0, 0)) == 0

    def test_the_legend_is_outside_the_image_and_counts_the_points_in_it(self, tmp_path):
        """The legend sat in the image's lower left corner (over points); a stack whose
        points mostly fall outside a small image read "(81 pts)" over a few dots."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        from deformconv.viz.plot import _sampling_figure

        geometry = LayerGeometry((3, 3), padding=(4, 4), dilation=(4, 4))
        stack = [record(geometry, torch.zeros(1, 18, 8, 8), (8, 8), name=f"l{n}")
                 for n in range(2)]
        projection = back_project(stack, (0, 0))
        fig = _sampling_figure(to_display_image(torch.zeros(3, 8, 8)), [projection], None, [])
        FigureCanvasAgg(fig).draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
        texts = [t.get_text() for t in legend.get_texts()]
        # unit (0, 0), dilation 4: rows and columns -4, 0, 4 of which 2 are on the 8x8
        # image; below them -8..8, each row or column in 5 of 9 ways on it
        inside = [int(((p >= 0) & (p <= 7)).all(1).sum()) for p in projection.levels]
        assert inside == [2 * 2, 5 * 5]
        assert texts[:2] == ["l1 (9 pts, 4 in the image)", "l0 (81 pts, 25 in the image)"]
        whole = back_project([record(LayerGeometry((3, 3), padding=(1, 1)),
                                     torch.zeros(1, 18, 8, 8), (8, 8), name="l0")], (4, 4))
        fig = _sampling_figure(to_display_image(torch.zeros(3, 8, 8)), [whole], None, [])
        assert fig.axes[0].get_legend().get_texts()[0].get_text() == "l0 (9 pts)"

    def test_a_path_under_a_file_names_the_file_in_the_way(self, tmp_path):
        """It raised a bare "FileExistsError: File exists: '.../afile'"."""
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        stack = [record(geometry, torch.zeros(1, 18, 16, 16), (16, 16))]
        (tmp_path / "afile").write_text("the user's")
        target = tmp_path / "afile" / "t.png"
        with pytest.raises(NotADirectoryError, match=f"cannot write {target}: "
                                                     f"{tmp_path / 'afile'} is a file, not a"):
            plot_stacked_sampling(torch.zeros(3, 16, 16), stack, [(8, 8)], target)
        assert (tmp_path / "afile").read_text() == "the user's"

    def test_a_single_level_is_red_too(self, tmp_path):
        """The paper's colour for the layer the points are on; it came out yellow."""
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        projection = back_project([record(geometry, torch.zeros(1, 18, 16, 16), (16, 16))],
                                  (8, 8))
        pixels = read_png(plot_sampling_locations(torch.zeros(3, 16, 16), projection,
                                                  tmp_path / "one.png"))
        assert count_color(pixels, (255, 0, 0)) > 20
        assert count_color(pixels, (255, 217, 0)) == 0  # autumn_r's yellow end

    def test_no_unit_is_hidden_under_another_units_points(self, tmp_path):
        """Unit (7, 7)'s points cover unit (8, 8): its star used to be painted over."""
        geometry = LayerGeometry((3, 3), padding=(1, 1))
        layer = [record(geometry, torch.zeros(1, 18, 16, 16), (16, 16))]
        first, second = back_project(layer, (8, 8)), back_project(layer, (7, 7))
        green = [count_color(read_png(plot_sampling_locations(
            torch.zeros(3, 16, 16), units, tmp_path / f"{len(units)}.png")), (0, 224, 0))
            for units in ([first], [first, second])]
        assert green[1] > 1.6 * green[0]  # both stars

    def test_stacked_sampling_of_a_captured_model(self, tmp_path):
        model = Stack()
        randomize_offsets(model)
        image = torch.rand(2, 3, 16, 16)
        records = capture_offsets(model, image, images=[1])
        path = plot_stacked_sampling(image[1], list(records.values()), [(2, 2), (5, 6)],
                                     tmp_path / "stack.png", lookup="nearest")
        read_png(path)


class TestPlotRoIOffsets:
    def test_roi_outline_and_shifted_bins(self, tmp_path):
        geometry = RoIPoolGeometry("roi", (3, 3), spatial_scale=0.25, offset_scale=0.1)
        offset = torch.rand(2, 2, 3, 3) - 0.5
        rec = RoIOffsetRecord("pool", geometry, torch.tensor([[0.0, 8.0, 8.0, 40.0, 30.0],
                                                              [0.0, 30.0, 34.0, 60.0, 60.0]]),
                              offset)
        image = np.zeros((64, 64), dtype=np.uint8)
        path = plot_roi_offsets(image, [roi_bins(rec, 0), roi_bins(rec, 1)],
                                tmp_path / "roi.png", title="RoIs")
        pixels = read_png(path)
        assert count_color(pixels, (255, 0, 0), 60) > 50  # red outline
        assert count_color(pixels, (255, 255, 0), 60) > 50  # yellow bins

    def test_the_legend_names_each_element_below_the_image(self):
        """The figure had no legend: red boxes, yellow and white grids and cyan arrows with
        nothing saying what each is."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import to_hex

        from deformconv.viz.plot import _roi_figure

        geometry = RoIPoolGeometry("roi", (3, 3), spatial_scale=0.25, offset_scale=0.1)
        rec = RoIOffsetRecord("pool", geometry, torch.tensor([[0.0, 8.0, 8.0, 40.0, 30.0],
                                                              [0.0, 30.0, 34.0, 60.0, 60.0]]),
                              torch.full((2, 2, 3, 3), 0.2))
        fig = _roi_figure(to_display_image(torch.zeros(3, 64, 64)),
                          [roi_bins(rec, 0), roi_bins(rec, 1)], None)
        FigureCanvasAgg(fig).draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
        assert [t.get_text() for t in legend.get_texts()] == [  # once each, for two RoIs
            "RoI", "regular bins (zero offsets)", "bins shifted by the offsets",
            "bin shifts (from the regular bin centres)"]
        *boxes, arrow = legend.legend_handles
        assert [to_hex(box.get_edgecolor()) for box in boxes] == ["#ff0000", "#ffffff",
                                                                  "#ffff00"]
        assert to_hex(arrow.get_color()) == "#00ffff"
        empty = _roi_figure(to_display_image(torch.zeros(3, 8, 8)), [], None)
        assert empty.axes[0].get_legend() is None


class TestToDisplayImage:
    def test_layouts_and_ranges(self):
        chw = torch.tensor([[[-1.0, 1.0]], [[0.0, 0.0]], [[3.0, 3.0]]])  # (3, 1, 2)
        shown = to_display_image(chw)
        assert shown.shape == (1, 2, 3)
        assert shown.min() == 0.0 and shown.max() == 1.0
        assert to_display_image(torch.full((1, 2, 2), 0.5)).tolist() == [[[0.5] * 3] * 2] * 2
        uint8 = np.full((2, 2, 3), 255, dtype=np.uint8)
        assert to_display_image(uint8).max() == 1.0
        assert to_display_image(np.zeros((4, 5))).shape == (4, 5, 3)

    def test_bad_shape(self):
        with pytest.raises(ValueError, match=r"got shape \(2, 4, 4\)"):
            to_display_image(torch.zeros(2, 4, 4))


def test_plots_without_matplotlib_name_the_extra(run_without, tmp_path) -> None:
    """plot_sampling_locations raised ModuleNotFoundError: No module named 'matplotlib'."""
    run_without(["matplotlib"], f"""
        import torch
        from deformconv.viz import plot_roi_offsets, plot_sampling_locations
        image, folder = torch.zeros(3, 8, 8), {str(tmp_path)!r}
        hint = ("deformconv.viz.plot needs matplotlib, part of the vision extra: "
                "pip install 'deformconv[vision]'")
        error = missing_extra(lambda: plot_sampling_locations(image, [], folder + "/a.png"),
                              hint)
        assert error.name == "matplotlib"
        missing_extra(lambda: plot_roi_offsets(image, [], folder + "/b.png"), hint)
    """)
