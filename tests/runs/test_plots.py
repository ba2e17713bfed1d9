"""The learning-curve figure: what the loss panel draws."""

from __future__ import annotations

from deformconv.runs.plots import _learning_curves_figure, plot_learning_curves


def _loss_lines(losses: dict) -> dict:
    fig = _learning_curves_figure(losses, {name: ([1.0], [0.5]) for name in losses},
                                  "validation mIoU", None)
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


def test_a_partial_last_window_is_not_drawn_as_a_full_one():
    """An equal-time run of 571 iterations logged iter 570 loss 0.755 (iterations 561-570)
    and iter 571 loss 0.600 (iteration 571 alone): the curve plunged at its end."""
    iterations = [*range(10, 571, 10), 571]
    losses = [1.0] * 56 + [0.755, 0.600]
    line = _loss_lines({"plain, equal time": (iterations, losses)})["plain, equal time"]
    assert list(line.get_xdata())[-1] == 570 and list(line.get_ydata())[-1] == 0.755
    assert line.get_marker() == "None"  # a long series: a plain line
    whole = _loss_lines({"plain": (list(range(10, 581, 10)), [1.0] * 58)})["plain"]
    assert list(whole.get_xdata())[-1] == 580  # full windows stay


def test_runs_shorter_than_one_log_window_are_drawn_with_markers(tmp_path):
    """A smoke run logs one point (iteration 4): a one-point line without a marker is
    invisible, and the smoke demo's loss panel was empty."""
    lines = _loss_lines({"plain": ([4], [1.3]), "deformable": ([10, 14], [1.2, 0.9])})
    assert lines["plain"].get_marker() == "o" and list(lines["plain"].get_xdata()) == [4]
    assert lines["deformable"].get_marker() == "o"
    assert list(lines["deformable"].get_xdata()) == [10]
    path = plot_learning_curves({"plain": ([4], [1.3])}, {"plain": ([1.0], [0.5])},
                                tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plots_without_matplotlib_name_the_extra(run_without, tmp_path):
    run_without(["matplotlib"], f"""
        from deformconv.runs import plot_learning_curves
        missing_extra(lambda: plot_learning_curves({{}}, {{}}, {str(tmp_path / "c.png")!r}),
                      "deformconv.runs.plots needs matplotlib, part of the vision extra: "
                      "pip install 'deformconv[vision]'")
    """)
