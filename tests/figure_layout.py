"""Layout checks for the figures users open: no two pieces of text overlap, none is cut off.

Uses matplotlib's own renderer: every visible, non-empty Text artist of a Figure (titles, axis
labels, tick labels, legend entries, annotations) is drawn and its bounding box in display
pixels compared with every other's and with the figure's canvas.
"""

from __future__ import annotations

import itertools


def text_boxes(figure) -> list[tuple[str, object]]:
    """(text, Bbox in display pixels) of every visible, non-empty Text artist of the drawn figure."""
    from matplotlib.text import Text

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    undrawn = set()  # tick labels matplotlib does not draw: axes switched off, hidden axes, ticks outside the view
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not axes.axison or not axis.get_visible() or not (low - span <= tick.get_loc() <= high + span):
                    undrawn.update((id(tick.label1), id(tick.label2)))
            if not axes.axison or not axis.get_visible():
                undrawn.add(id(axis.label))
    boxes = []
    for text in figure.findobj(Text):
        if id(text) in undrawn or not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            boxes.append((text.get_text(), box))
    return boxes


def overlapping_texts(figure, slack_px: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap by more than ``slack_px`` pixels in both directions."""
    found = []
    for (a, box_a), (b, box_b) in itertools.combinations(text_boxes(figure), 2):
        dx = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        dy = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if dx > slack_px and dy > slack_px:
            found.append((a, b))
    return found


def texts_outside(figure, slack_px: float = 1.0) -> list[str]:
    """Texts that reach beyond the figure's canvas (cut off in the saved PNG)."""
    width, height = figure.canvas.get_width_height()
    return [
        text
        for text, box in text_boxes(figure)
        if box.x0 < -slack_px or box.y0 < -slack_px or box.x1 > width + slack_px or box.y1 > height + slack_px
    ]


def assert_readable(figure) -> None:
    """No overlapping and no cut-off text, no label shortened with an ellipsis."""
    overlaps = overlapping_texts(figure)
    assert not overlaps, f"overlapping texts: {overlaps[:5]}"
    outside = texts_outside(figure)
    assert not outside, f"texts cut off at the figure's edge: {outside[:5]}"
    shortened = [text for text, _ in text_boxes(figure) if text.endswith(("...", "\u2026"))]
    assert not shortened, f"texts cut with an ellipsis: {shortened[:5]}"
