"""Checks that a written figure is a real plot, not merely a file: decoded, its size, not blank, and the colours of
the series it must draw present in the panel that draws them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Matplotlib's default colour cycle, as RGB 0-255: C0 (tab:blue), C1 (tab:orange), C2 (tab:green), C3 (tab:red).
TAB = {"tab:blue": (31, 119, 180), "tab:orange": (255, 127, 14), "tab:green": (44, 160, 44), "tab:red": (214, 39, 40)}


def read_png(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of a PNG (decoding fails on a truncated or corrupt file)."""
    import matplotlib.image

    image = matplotlib.image.imread(str(path))  # float in [0, 1] for PNGs, RGB or RGBA
    return np.round(image[..., :3] * 255).astype(np.uint8)


def colour_pixels(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """Pixels within ``tolerance`` (per channel) of ``rgb`` drawn opaque or translucent (alpha 0.6 to 1) on white:
    the markers and lines drawn in that colour."""
    pixels, found = image.astype(int), np.zeros(image.shape[:2], dtype=bool)
    for alpha in (1.0, 0.9, 0.8, 0.7, 0.6):
        blended = alpha * np.array(rgb) + (1 - alpha) * 255
        found |= np.abs(pixels - blended).max(axis=-1) <= tolerance
    return int(found.sum())


def assert_plot(path: Path, size: tuple[int, int], panels: list[dict[str, int]]) -> np.ndarray:
    """The PNG at ``path`` is ``size`` (width, height) pixels, not blank (many distinct colours, a fair share of
    non-white pixels: axes, ticks, text), and panel ``i`` of ``len(panels)`` side by side holds at least
    ``panels[i][colour]`` pixels of each colour named. A legend entry alone draws ~15-100 pixels of its colour (a
    marker, a short line); a line across a panel draws several hundred: pick the minimum above the legend's."""
    image = read_png(path)
    assert (image.shape[1], image.shape[0]) == size, f"{path.name}: {image.shape[1]}x{image.shape[0]}, expected {size}"
    distinct = len(np.unique(image.reshape(-1, 3), axis=0))
    non_white = float((image.min(axis=-1) < 250).mean())
    assert distinct >= 20 and 0.02 < non_white < 0.9, f"{path.name} blank? {distinct} colours, {non_white:.1%} ink"
    width = image.shape[1] // len(panels)
    for i, minimum in enumerate(panels):
        panel = image[:, i * width : (i + 1) * width]
        for name, at_least in minimum.items():
            count = colour_pixels(panel, TAB[name])
            assert count >= at_least, f"{path.name}: panel {i}: {count} {name} pixels < {at_least} (series not drawn?)"
    return image
