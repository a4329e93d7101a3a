"""Pictures for people to look at, drawn with Pillow (no plotting dependency): bar charts, histograms,
heat maps and image grids with captions."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-friendly colours (Okabe-Ito, then Tableau).
PALETTE = [
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (0, 0, 0),
    (148, 103, 189),
    (140, 86, 75),
    (127, 127, 127),
    (188, 189, 34),
]
INK = (40, 40, 40)
GRID = (225, 225, 225)
BACKGROUND = (255, 255, 255)


@functools.cache
def font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def text_width(text: str, size: int = 13) -> int:
    left, _, right, _ = font(size).getbbox(text)
    return int(right - left)


def fit_text(text: str, width: int, size: int = 13) -> str:
    """`text`, shortened with an ellipsis to fit `width` pixels."""
    if not text or text_width(text, size) <= width:
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text + "…"


def color_map(keys: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(sorted(set(keys)))}


def _legend(draw: ImageDraw.ImageDraw, entries: dict[str, tuple[int, int, int]], x: int, y: int) -> None:
    for name, color in entries.items():
        draw.rectangle((x, y + 3, x + 12, y + 15), fill=color)
        draw.text((x + 18, y), name, fill=INK, font=font(13))
        x += 30 + text_width(name)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    colors: Sequence[tuple[int, int, int]] | None = None,
    legend: dict[str, tuple[int, int, int]] | None = None,
    value_format: str = "{:g}",
    bar_height: int = 14,
    width: int = 900,
) -> Image.Image:
    """Horizontal bars, one row per label (readable with hundreds of classes)."""
    label_width = min(260, max((text_width(label, 12) for label in labels), default=40) + 10)
    top, bottom = 60 if legend else 40, 20
    height = top + bottom + bar_height * len(labels)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill=INK, font=font(16))
    if legend:
        _legend(draw, legend, 10, 32)
    peak = max(values, default=1) or 1
    plot_width = width - label_width - 70
    for step in np.linspace(0, peak, 5):
        x = label_width + int(plot_width * step / peak)
        draw.line((x, top - 4, x, height - bottom), fill=GRID)
        draw.text((x - 8, height - bottom + 2), f"{step:.0f}", fill=INK, font=font(10))
    for row, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + row * bar_height
        color = colors[row] if colors else PALETTE[0]
        draw.text((5, y), fit_text(label, label_width - 10, 12), fill=INK, font=font(12))
        draw.rectangle(
            (label_width, y + 2, label_width + max(1, int(plot_width * value / peak)), y + bar_height - 2),
            fill=color,
        )
        draw.text(
            (label_width + int(plot_width * value / peak) + 4, y),
            value_format.format(value),
            fill=INK,
            font=font(11),
        )
    return image


def histogram(
    values: Sequence[float],
    *,
    title: str,
    bins: int = 30,
    log_x: bool = False,
    size: tuple[int, int] = (440, 300),
) -> Image.Image:
    """A histogram panel with min / median / max marked."""
    data = np.asarray([v for v in values if v > 0 or not log_x], dtype=np.float64)
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title + ("  (log scale)" if log_x else ""), fill=INK, font=font(14))
    if data.size == 0:
        draw.text((10, 40), "no data", fill=INK, font=font(12))
        return image
    edges = (
        np.geomspace(data.min(), data.max() * 1.0001, bins + 1)
        if log_x and data.min() > 0
        else np.linspace(data.min(), data.max() + 1e-9, bins + 1)
    )
    counts, _ = np.histogram(data, edges)
    left, right, top, bottom = 45, size[0] - 15, 35, size[1] - 45
    peak = counts.max() or 1
    bar = (right - left) / bins
    for i, count in enumerate(counts):
        x0 = left + i * bar
        draw.rectangle(
            (x0 + 1, bottom - (bottom - top) * count / peak, x0 + bar - 1, bottom), fill=PALETTE[0]
        )
    draw.line((left, bottom, right, bottom), fill=INK)
    draw.text((5, top - 4), str(int(peak)), fill=INK, font=font(10))
    stats = f"min {data.min():.4g}   median {np.median(data):.4g}   max {data.max():.4g}"
    draw.text((left, bottom + 6), f"{edges[0]:.4g}", fill=INK, font=font(10))
    draw.text((right - 40, bottom + 6), f"{edges[-1]:.4g}", fill=INK, font=font(10))
    draw.text((left, bottom + 22), stats, fill=INK, font=font(11))
    return image


def side_by_side(images: Sequence[Image.Image], gap: int = 10) -> Image.Image:
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """`image` fitted into a `size` square (aspect kept, padded with white)."""
    fitted = image.copy()
    fitted.thumbnail((size, size), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return canvas


def image_grid(
    rows: Sequence[tuple[str, Sequence[tuple[Image.Image | None, str]]]],
    *,
    title: str = "",
    thumb: int = 96,
    row_title_width: int = 170,
    caption_lines: int = 1,
    caption_colors: Sequence[Sequence[tuple[int, int, int]]] | None = None,
) -> Image.Image:
    """Rows of thumbnails with a row title on the left and a caption (up to `caption_lines` lines,
    separated by newlines) under each picture. A `None` picture leaves its cell empty."""
    columns = max((len(cells) for _, cells in rows), default=1)
    cell_h = thumb + 6 + 14 * caption_lines
    title_lines = title.split("\n") if title else []
    top = 16 + 20 * len(title_lines) if title else 6
    width = row_title_width + columns * (thumb + 6) + 6
    height = top + len(rows) * (cell_h + 6)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for line, text in enumerate(title_lines):
        draw.text(
            (8, 8 + 20 * line),
            fit_text(text, width - 16, 16 if line == 0 else 13),
            fill=INK,
            font=font(16 if line == 0 else 13),
        )
    for r, (row_title, cells) in enumerate(rows):
        y = top + r * (cell_h + 6)
        for line, text in enumerate(row_title.split("\n")[:3]):
            draw.text(
                (6, y + 4 + 15 * line), fit_text(text, row_title_width - 10, 12), fill=INK, font=font(12)
            )
        for c, (picture, caption) in enumerate(cells):
            x = row_title_width + c * (thumb + 6)
            if picture is not None:
                canvas.paste(thumbnail(picture, thumb), (x, y))
            for line, text in enumerate(caption.split("\n")[:caption_lines]):
                color = caption_colors[r][c] if caption_colors else INK
                draw.text(
                    (x, y + thumb + 2 + 14 * line), fit_text(text, thumb, 11), fill=color, font=font(11)
                )
    return canvas


def heatmap(
    matrix: np.ndarray,
    labels: Sequence[str],
    *,
    title: str,
    group_of: Sequence[str] | None = None,
    cell: int | None = None,
) -> Image.Image:
    """A square matrix of rates in [0, 1] (rows: true, columns: predicted) as a white-to-dark-blue heat map
    (square-root scale) with labels;
    `group_of` draws separators and a coloured band per group (e.g. parent label)."""
    n = len(labels)
    cell = cell or max(4, min(28, 1400 // max(n, 1)))
    show_labels = cell >= 9
    label_width = 200 if show_labels else 0
    band = 8 if group_of else 0
    top = 40 + (30 if group_of else 0)
    size = n * cell
    width = max(label_width + band + size + 20, text_width(title, 16) + 20)
    canvas = Image.new("RGB", (width, top + band + size + 20), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title, fill=INK, font=font(16))
    x0, y0 = label_width + band, top + band
    # Square root: a 5 % confusion is still visible next to a 90 % diagonal.
    values = np.sqrt(np.clip(np.nan_to_num(matrix.astype(np.float64)), 0, 1))
    colors = np.stack([255 - 247 * values, 255 - 207 * values, 255 - 148 * values], axis=-1).astype(np.uint8)
    cells = Image.fromarray(colors, "RGB").resize((size, size), Image.Resampling.NEAREST)
    canvas.paste(cells, (x0, y0))
    if group_of:
        groups = color_map(group_of)
        _legend(draw, groups, 10, 34)
        for i, group in enumerate(group_of):
            draw.rectangle((x0 - band, y0 + i * cell, x0 - 2, y0 + (i + 1) * cell - 1), fill=groups[group])
            draw.rectangle((x0 + i * cell, y0 - band, x0 + (i + 1) * cell - 1, y0 - 2), fill=groups[group])
            if i and group != group_of[i - 1]:
                draw.line((x0, y0 + i * cell, x0 + size, y0 + i * cell), fill=(120, 120, 120))
                draw.line((x0 + i * cell, y0, x0 + i * cell, y0 + size), fill=(120, 120, 120))
    if show_labels:
        for i, label in enumerate(labels):
            draw.text(
                (4, y0 + i * cell + (cell - 12) // 2),
                fit_text(label, label_width - 8, 11),
                fill=INK,
                font=font(11),
            )
    draw.text((x0, y0 + size + 4), "columns: predicted class, rows: true class", fill=INK, font=font(11))
    return canvas
