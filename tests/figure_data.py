"""What a matplotlib figure draws, as plain data, to compare two figures exactly.

``figure_data(fig)`` lists, per axes: title and labels, limits, tick labels, legend
texts, and every artist's data: lines (x, y, style), collections (their paths'
vertices and offsets: fill_between, hlines, contours), patches (bars: x, y, width,
height, colour) and images (the array, its extent and colour scale). Two figures with
equal ``figure_data`` draw the same picture (same data, same marks).
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import Collection
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle


def _arr(x) -> np.ndarray:
    return np.asarray(np.ma.filled(np.ma.asarray(x, dtype=float), np.nan), dtype=float)


def figure_data(fig) -> list:
    out = [("suptitle", fig._suptitle.get_text() if fig._suptitle is not None else "")]
    for ax in fig.axes:
        leg = ax.get_legend()
        item = {
            "label": ax.get_label(), "title": ax.get_title(), "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(), "xlim": tuple(ax.get_xlim()), "ylim": tuple(ax.get_ylim()),
            "xticks": [t.get_text() for t in ax.get_xticklabels()],
            "yticks": [t.get_text() for t in ax.get_yticklabels()],
            "legend": [t.get_text() for t in leg.get_texts()] if leg is not None else None,
            "lines": [(ln.get_label(), _arr(ln.get_xdata()), _arr(ln.get_ydata()), ln.get_color(),
                       ln.get_linestyle(), ln.get_linewidth(), ln.get_marker(), ln.get_alpha())
                      for ln in ax.get_lines()],
            "patches": [(p.get_x(), p.get_y(), p.get_width(), p.get_height(), tuple(p.get_facecolor()))
                        for p in ax.patches if isinstance(p, Rectangle)],
            "collections": [(type(c).__name__, c.get_label(),
                             [_arr(p.vertices) for p in c.get_paths()], _arr(c.get_offsets()),
                             _arr(c.get_facecolor()), _arr(c.get_edgecolor()))
                            for c in ax.collections if isinstance(c, Collection)],
            "images": [(_arr(im.get_array()), tuple(im.get_extent()), im.norm.vmin, im.norm.vmax,
                        getattr(im.norm, "vcenter", None))
                       for im in ax.get_images() if isinstance(im, AxesImage)],
            "texts": [t.get_text() for t in ax.texts],
        }
        out.append(item)
    return out


def assert_same_figure(a, b, where: str = "") -> None:
    """``figure_data`` of both equal: text exactly, numbers exactly (NaN equal to NaN)."""
    _same(figure_data(a), figure_data(b), where or "figure")


def _same(x, y, path: str) -> None:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"{path}: shape {x.shape} != {y.shape}"
        assert np.array_equal(x, y, equal_nan=True), f"{path}: arrays differ (max |diff| " \
            f"{np.nanmax(np.abs(x - y)) if x.size else 0})"
        return
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), f"{path}: keys {x.keys()} != {y.keys()}"
        for k in x:
            _same(x[k], y[k], f"{path}.{k}")
        return
    if isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), f"{path}: {len(x)} != {len(y)} items: {x!r} / {y!r}"
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _same(u, v, f"{path}[{i}]")
        return
    if isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
        return
    assert x == y, f"{path}: {x!r} != {y!r}"
