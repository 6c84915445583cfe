"""Live training plot: smoothed loss and validation scores, themed like napari.

A plain matplotlib ``FigureCanvasQTAgg`` (no napari-matplotlib dependency)
that follows the viewer's theme. matplotlib is imported when the plot is
built, not when this module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

if TYPE_CHECKING:
    import napari

#: Weight of the newest loss in the exponential moving average shown as a line.
SMOOTHING = 0.1


def smooth(values: list[float], alpha: float = SMOOTHING) -> list[float]:
    """Exponential moving average of ``values`` with bias correction.

    Parameters
    ----------
    values : list of float
    alpha : float
        Weight of each new value (0 < alpha <= 1).

    Returns
    -------
    smoothed : list of float

    Examples
    --------
    >>> smooth([1.0, 1.0, 1.0])
    [1.0, 1.0, 1.0]
    """
    out, mean, weight = [], 0.0, 0.0
    for v in values:
        mean = (1 - alpha) * mean + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(mean / weight)
    return out


class TrainingPlot(QWidget):
    """Training loss (raw and smoothed, left axis) and validation IoU/F1 (right axis).

    Parameters
    ----------
    viewer : napari.viewer.Viewer, optional
        Viewer whose theme the plot follows.
    parent : QWidget, optional

    Attributes
    ----------
    steps, losses : list
        Training loss per step.
    validation_steps, ious, f1s : list
        Validation scores at the steps where validation ran.
    """

    def __init__(
        self, viewer: napari.viewer.Viewer | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self._viewer = viewer
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.validation_steps: list[int] = []
        self.ious: list[float] = []
        self.f1s: list[float] = []

        self.figure = Figure(figsize=(4, 2.6), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

        self.loss_axes = self.figure.add_subplot()
        self.score_axes = self.loss_axes.twinx()
        (self._raw_line,) = self.loss_axes.plot([], [], lw=0.8, alpha=0.35, color="#8ab4f8")
        (self._loss_line,) = self.loss_axes.plot(
            [], [], lw=1.6, color="#8ab4f8", label="loss (smoothed)"
        )
        (self._iou_line,) = self.score_axes.plot(
            [], [], "o-", ms=4, lw=1, color="#f6b26b", label="val IoU"
        )
        (self._f1_line,) = self.score_axes.plot(
            [], [], "s--", ms=4, lw=1, color="#93c47d", label="val F1"
        )
        self.loss_axes.set_xlabel("step")
        self.loss_axes.set_ylabel("loss")
        self.score_axes.set_ylabel("validation score")
        self.score_axes.set_ylim(0, 1)
        self._legend: Any = None
        self.apply_theme()
        if viewer is not None:
            viewer.events.theme.connect(self._on_theme)

    # -- data -------------------------------------------------------------
    def clear(self) -> None:
        """Remove all points (a new training run starts)."""
        for values in (self.steps, self.losses, self.validation_steps, self.ious, self.f1s):
            values.clear()
        self._update_lines()

    def add_loss(self, step: int, loss: float) -> None:
        """Add the training loss of ``step`` (redraws when the event loop is idle)."""
        self.steps.append(step)
        self.losses.append(loss)
        self._update_lines()

    def add_validation(self, step: int, iou: float, f1: float) -> None:
        """Add validation scores measured at ``step``."""
        self.validation_steps.append(step)
        self.ious.append(iou)
        self.f1s.append(f1)
        self._update_lines()

    def _update_lines(self) -> None:
        self._raw_line.set_data(self.steps, self.losses)
        self._loss_line.set_data(self.steps, smooth(self.losses))
        self._iou_line.set_data(self.validation_steps, self.ious)
        self._f1_line.set_data(self.validation_steps, self.f1s)
        if self.steps:
            self.loss_axes.set_xlim(0, max(self.steps[-1], 1) * 1.02)
            top = max(self.losses)
            self.loss_axes.set_ylim(0, top * 1.05 if top > 0 else 1)
        if self._legend is None and (self.steps or self.validation_steps):
            handles = [self._loss_line, self._iou_line, self._f1_line]
            self._legend = self.figure.legend(
                handles=handles, loc="outside upper center", ncols=3, fontsize=7, frameon=False
            )
            self.apply_theme()
        self.canvas.draw_idle()

    # -- theme ------------------------------------------------------------
    def _on_theme(self, event: Any = None) -> None:
        self.apply_theme()

    def apply_theme(self) -> None:
        """Colour the figure like the viewer's theme (dark if there is no viewer)."""
        background, panel, text = "#262930", "#262930", "#f0f1f2"
        if self._viewer is not None:
            from napari.utils.theme import get_theme

            try:
                theme = get_theme(self._viewer.theme)
            except ValueError:
                theme = None
            if theme is not None:
                background = theme.background.as_hex()
                panel = theme.foreground.as_hex()
                text = theme.text.as_hex()
        self.figure.set_facecolor(background)
        for axes in (self.loss_axes, self.score_axes):
            axes.set_facecolor(panel)
            axes.tick_params(colors=text, labelsize=8)
            axes.xaxis.label.set_color(text)
            axes.yaxis.label.set_color(text)
            for spine in axes.spines.values():
                spine.set_color(text)
        self.score_axes.patch.set_visible(False)
        if self._legend is not None:
            self._legend.get_frame().set_facecolor(background)
            self._legend.get_frame().set_edgecolor(text)
            for label in self._legend.get_texts():
                label.set_color(text)
        self.canvas.draw_idle()
