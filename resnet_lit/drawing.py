"""Drawing `Insight`'s two figures with PIL: the confusion matrix and the grid of confident mistakes.

PIL comes with torchvision, so the figures need nothing extra (matplotlib is an optional extra, not
a runtime dependency). A few helpers place text on the ink's box and write it upwards, with PIL's
scalable default font where Pillow has FreeType and its bitmap font where it has not.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (170, 170, 170)
RED = (190, 30, 30)
DARK_BLUE = (8, 48, 107)  # the dark end of matplotlib's "Blues"


def render_confusion(matrix: Tensor, classes: Sequence[str], title: str = "") -> Image.Image:
    """The confusion matrix as an RGB image: class names, a count in every cell, per-class accuracy.

    Cells are shaded by their share of the row (the true class), on a square-root scale so that
    a 1% confusion is visible next to a 95% diagonal.

    Args:
        matrix: (C, C) counts, rows the true class, columns the predicted one.
        classes: the C class names.
        title: a first line above the matrix.
    """
    n = len(classes)
    font, small = _font(14), _font(12)
    counts = matrix.long().tolist()
    accuracy = [row[i] / sum(row) if sum(row) else math.nan for i, row in enumerate(counts)]  # recall per class
    pad, line = 10, _height(font) + 8
    cell = max(44, max(_width(str(c), font) for row in counts for c in row) + 12)
    names_w = max(_width(c, font) for c in classes)
    acc_w = _width("0.0000", font) + 16
    header = [title, "rows: true class, columns: predicted class, right: accuracy"] if title else []
    left = pad + line + names_w + pad  # the rotated "true", the row names
    top = pad + line * len(header) + line + names_w + pad  # the header, "predicted", the column names
    image = Image.new("RGB", (left + n * cell + acc_w + pad, top + n * cell + pad), WHITE)
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(header):
        _text(draw, text, font if i == 0 else small, BLACK, (pad, pad + i * line), "lt")
    _text(draw, "predicted", font, BLACK, (left + n * cell // 2, pad + line * len(header)), "mt")
    _paste_upwards(image, "true", font, (pad, top + n * cell // 2), centre=True)
    for j, name in enumerate(classes):
        _paste_upwards(image, name, font, (left + j * cell + cell // 2, top - pad // 2))
    for i, name in enumerate(classes):
        y = top + i * cell
        _text(draw, name, font, BLACK, (left - pad, y + cell // 2), "rm")
        total = sum(counts[i])
        for j, count in enumerate(counts[i]):
            shade = math.sqrt(count / total) if total else 0.0
            x = left + j * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=_blue(shade), outline=WHITE)
            colour = WHITE if shade > 0.6 else (GREY if count == 0 else BLACK)
            _text(draw, str(count), font, colour, (x + cell // 2, y + cell // 2), "mm")
        acc = "-" if math.isnan(accuracy[i]) else f"{accuracy[i]:.4f}"
        _text(draw, acc, font, BLACK, (left + n * cell + acc_w // 2, y + cell // 2), "mm")
    return image


def render_mistakes(
    images: Tensor,
    predicted: Tensor,
    target: Tensor,
    confidence: Tensor,
    classes: Sequence[str],
    title: str = "",
    columns: int = 8,
    size: int = 84,
) -> Image.Image:
    """A grid of images, each with its true class and the (wrong) prediction with its confidence.

    Args:
        images: (K, C, H, W) model input, any scale: each is stretched to its own min..max for
            display (as torchvision's `make_grid(normalize=True, scale_each=True)`).
        predicted: (K,) predicted classes.
        target: (K,) true classes.
        confidence: (K,) softmax probability of the predicted class.
        classes: the class names.
        title: put before the heading ("the K most confident mistakes").
        columns: images per row.
        size: displayed height and width of each image, in pixels.
    """
    font = _font(12)
    pad = 6
    labels = [
        (f"true: {classes[t]}", f"pred: {classes[p]} {c:.2f}")
        for t, p, c in zip(target.tolist(), predicted.tolist(), confidence.tolist(), strict=True)
    ]
    if labels:
        title += f"the {len(labels)} most confident mistakes (true class; predicted class and its probability)"
    else:
        title += "no misclassified images"
    tile_w = max([size, *(_width(line, font) for pair in labels for line in pair)]) + 2 * pad
    tile_h = size + 2 * (_height(font) + 4) + 2 * pad
    cols = max(1, min(columns, len(labels)))
    grid_rows = math.ceil(len(labels) / cols)
    top = _height(font) + 2 * pad
    width = max(cols * tile_w, _width(title, font) + 2 * pad)
    image = Image.new("RGB", (width, top + grid_rows * tile_h), WHITE)
    draw = ImageDraw.Draw(image)
    _text(draw, title, font, BLACK, (pad, pad), "lt")
    for k, (pixels, (true_line, pred_line)) in enumerate(zip(_display_pixels(images), labels, strict=True)):
        x = (k % cols) * tile_w + pad
        y = top + (k // cols) * tile_h
        tile = Image.fromarray(pixels).convert("RGB")
        resample = Image.Resampling.NEAREST if tile.width < size else Image.Resampling.BILINEAR
        image.paste(tile.resize((size, size), resample), (x + (tile_w - 2 * pad - size) // 2, y))
        _text(draw, true_line, font, BLACK, (x, y + size + 4), "lt")
        _text(draw, pred_line, font, RED, (x, y + size + 4 + _height(font) + 4), "lt")
    return image


def _display_pixels(images: Tensor) -> list[np.ndarray]:
    """Each image stretched to 0..255 uint8, (H, W) for one channel or (H, W, 3)."""
    out = []
    for image in images.float():
        low, high = image.min(), image.max()
        scaled = ((image - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)
        out.append(scaled[0].numpy() if scaled.shape[0] == 1 else scaled[:3].permute(1, 2, 0).numpy())
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # a small bitmap font: still legible


def _width(text: str, font) -> int:
    left, _, right, _ = font.getbbox(text)
    return math.ceil(right - left)


def _height(font) -> int:
    _, top, _, bottom = font.getbbox("Ag/")
    return math.ceil(bottom - top)


def _blue(shade: float) -> tuple[int, int, int]:
    return tuple(round(w + (b - w) * shade) for w, b in zip(WHITE, DARK_BLUE, strict=True))


def _text(draw: ImageDraw.ImageDraw, text: str, font, fill, xy: tuple[int, int], anchor: str) -> None:
    """Draw `text` anchored at `xy`: `anchor` is horizontal l/m/r then vertical t/m, on the ink's box.

    Done by hand rather than with PIL's `anchor`, which the bitmap fallback font does not support.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
    y = xy[1] - {"t": top, "m": (top + bottom) / 2}[anchor[1]]
    draw.text((round(x), round(y)), text, fill=fill, font=font)


def _paste_upwards(image: Image.Image, text: str, font, xy: tuple[int, int], centre: bool = False) -> None:
    """Draw `text` reading upwards, centred on x = xy[0], ending at y = xy[1] (or centred on it)."""
    w, h = _width(text, font) + 2, _height(font) + 2
    label = Image.new("RGB", (w, h), WHITE)
    _text(ImageDraw.Draw(label), text, font, BLACK, (1, 1), "lt")
    label = label.rotate(90, expand=True)  # (h, w) now
    y = xy[1] - label.height // 2 if centre else xy[1] - label.height
    image.paste(label, (xy[0] - label.width // 2, y))
