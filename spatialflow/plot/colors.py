"""Colours: categorical palettes, image channel colours and numeric colour maps.

Decisions: categories in their (known) order take matplotlib's ``tab10`` colours (``tab20`` up
to 20 categories, then evenly spaced hues), so the same categories always get the same colours
and a legend can be trusted; image channels are blended additively on black, channel k taking
``CHANNEL_COLORS[k]`` (one channel alone is grey); numbers use ``viridis`` between their 1st and
99th percentiles.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CHANNEL_COLORS",
    "category_colors",
    "channel_colors",
    "numeric_colors",
    "to_rgb",
]

CHANNEL_COLORS = ("#0000ff", "#00ff00", "#ff0000", "#ff00ff", "#00ffff", "#ffff00", "#ff8000")


def to_rgb(color: Any) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb as _to_rgb

    return tuple(float(v) for v in _to_rgb(color))  # type: ignore[return-value]


def category_colors(categories: Sequence[Any]) -> dict[Any, tuple[float, float, float]]:
    """One colour per category, in order (see the module doc)."""
    import matplotlib

    n = len(categories)
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        cols = [cmap(k)[:3] for k in range(n)]
    elif n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        cols = [cmap(k)[:3] for k in range(n)]
    else:  # golden-ratio hue steps: neighbours in the list stay distinguishable
        cols = [colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.75, 0.95) for k in range(n)]
    return {c: tuple(float(v) for v in col) for c, col in zip(categories, cols, strict=True)}


def channel_colors(channels: Sequence[Any], color: Any = None) -> dict[Any, tuple[float, ...]]:
    """The channels to show and their colours.

    ``color`` None: every channel, default colours; a mapping channel -> colour: those channels;
    a channel name or a list of names: those channels, default colours in that order.
    """
    from spatialflow.errors import ValidationError

    channels = list(channels)
    if color is None:
        chosen: dict[Any, Any] = {}
        if len(channels) == 1:
            return {channels[0]: (1.0, 1.0, 1.0)}
        for k, c in enumerate(channels):
            chosen[c] = CHANNEL_COLORS[k % len(CHANNEL_COLORS)]
    elif isinstance(color, dict):
        chosen = dict(color)
    else:
        names = [color] if isinstance(color, str | int) else list(color)
        chosen = {c: CHANNEL_COLORS[k % len(CHANNEL_COLORS)] for k, c in enumerate(names)}
        if len(names) == 1:
            chosen = {names[0]: "#ffffff"}
    known = {str(c): c for c in channels}
    out = {}
    for c, col in chosen.items():
        if c not in channels and str(c) not in known:
            raise ValidationError(
                f"plot: channel {c!r} is not one of the image's channels {channels}"
            )
        out[c if c in channels else known[str(c)]] = to_rgb(col)
    return out


def numeric_colors(values: np.ndarray) -> np.ndarray:
    """(N, 4) RGBA of numbers through viridis, stretched between the 1st and 99th percentile."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    lo, hi = np.percentile(v[finite], [1, 99]) if finite.any() else (0.0, 1.0)
    scaled = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    out = matplotlib.colormaps["viridis"](scaled)
    out[~finite] = (0.6, 0.6, 0.6, 1.0)
    return out
