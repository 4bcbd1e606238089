"""Synthetic images of coloured shapes, deterministic by seed (the built-in demo input)."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")


def draw_shape(image: Image.Image, shape: str, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> None:
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def shapes_image(seed: int, size: int = 224) -> tuple[Image.Image, str]:
    """One shape of one colour on a light background, and its caption ("a red circle")."""
    rng = random.Random(seed)
    shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    image = Image.new("RGB", (size, size), (245, 245, 240))
    side = rng.randint(size // 4, size // 2)
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    draw_shape(image, shape, COLOURS[colour], (x0, y0, x0 + side, y0 + side))
    return image, f"a {colour} {shape}"
