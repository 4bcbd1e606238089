"""Image loading and the views SparseCut feeds to the vision encoder.

For one image: view 0 is the image padded to a square with the mean colour and
resized to the base size (LLaVA-1.5's `pad` aspect ratio); with a crop grid, the
same square is resized to (cols x base, rows x base) and cut into rows*cols
base-size crops, row-major. Pure functions on PIL images; normalisation is the
image processor's job. `load_image` takes a file, an http(s) URL or a PIL image.
"""

from __future__ import annotations

import io
import os
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Pillow's 16- and 32-bit integer greyscale modes (16-bit PNGs open as one of these).
_WIDE_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}

URL_TIMEOUT_S = 20.0
MAX_URL_BYTES = 64 * 2**20  # an image larger than this is not a photo to chat about


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, as LLaVA does with `.convert("RGB")`.

    16-bit greyscale is scaled to 8 bits first (Pillow's own conversion clips it to
    255, turning most of the image white); alpha is dropped, not composited.
    """
    if image.mode in _WIDE_INT_MODES:
        wide = np.asarray(image, dtype=np.float64)  # [H, W], values in 0..65535
        image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8))  # mode L
    elif image.mode == "P" and "transparency" in image.info:
        # Going through RGBA keeps the palette colours and avoids Pillow's warning
        # about palette transparency; the alpha channel is then dropped.
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def is_url(source: object) -> bool:
    """Whether `source` names an image on the web rather than a file."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def _open(source: str | os.PathLike) -> Image.Image:
    """Pillow's lazy image for a file path or an http(s) URL (read whole, then decoded from memory)."""
    if not is_url(source):
        return Image.open(Path(source))
    with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:
        data = response.read(MAX_URL_BYTES + 1)
    if len(data) > MAX_URL_BYTES:
        raise ValueError(f"larger than {MAX_URL_BYTES // 2**20} MiB")
    return Image.open(io.BytesIO(data))


def load_image(path_or_image: str | os.PathLike | Image.Image, *, exif_orientation: bool = True) -> Image.Image:
    """Open an image file or http(s) URL (or take a PIL image), apply its EXIF orientation and return RGB.

    `exif_orientation=False` keeps the stored pixel layout and drops the EXIF data, as
    LLaVA's evaluation scripts read images (`Image.open(...).convert("RGB")`).

    Any failure (missing file, unreachable URL, not an image, truncated) is one ValueError line
    naming the source.
    """
    if isinstance(path_or_image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(path_or_image))
    source = path_or_image if is_url(path_or_image) else Path(path_or_image)
    try:
        with _open(source) as opened:
            opened.load()  # decode now, so a truncated file fails here, not later
            if exif_orientation:
                image = ImageOps.exif_transpose(opened)  # a transposed copy, or a plain copy
            else:
                image = opened.copy()
                image.info.pop("exif", None)  # later load_image calls must not rotate it either
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = (str(err).splitlines() or [""])[0] or type(err).__name__
        raise ValueError(f"cannot read image {source}: {reason}") from err
    return _to_rgb(image)


def _check_fill(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Validate an RGB fill colour (three ints in 0..255)."""
    fill = tuple(fill)
    if len(fill) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in fill):
        raise ValueError(f"fill: expected three ints in 0..255, got {fill!r}")
    return tuple(int(c) for c in fill)


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre `image` on a square canvas of side max(w, h) filled with `fill` (LLaVA's expand2square)."""
    if image.mode != "RGB":
        raise ValueError(f"image: expected mode RGB, got {image.mode} (use load_image first)")
    fill = _check_fill(fill)
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    # The shorter dimension is centred, rounding the offset down as LLaVA does.
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def make_views(
    image: Image.Image,
    base_size: int,
    grid: tuple[int, int] | None,
    fill: tuple[int, int, int],
) -> list[Image.Image]:
    """Return [low-res view] or [low-res view, crop_0, ..., crop_{rows*cols-1}], all base_size square.

    Crops come from the padded square resized to (cols*base, rows*base) (width, height),
    cut row-major from the top-left. Resizing is bicubic, as CLIP's image processor.
    """
    if not isinstance(base_size, int) or base_size <= 0:
        raise ValueError(f"base_size: expected a positive int, got {base_size!r}")
    square = expand_to_square(image, fill)
    views = [square.resize((base_size, base_size), Image.Resampling.BICUBIC)]
    if grid is None:
        return views
    rows, cols = _check_grid(grid)
    high = square.resize((cols * base_size, rows * base_size), Image.Resampling.BICUBIC)
    for row in range(rows):
        for col in range(cols):
            left, top = col * base_size, row * base_size
            views.append(high.crop((left, top, left + base_size, top + base_size)))
    return views


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """Validate a (rows, cols) crop grid of positive ints."""
    if len(tuple(grid)) != 2 or not all(isinstance(n, (int, np.integer)) and n > 0 for n in grid):
        raise ValueError(f"grid: expected (rows, cols) of positive ints, got {grid!r}")
    rows, cols = grid
    return int(rows), int(cols)
