"""Built-in synthetic data `shapes`: drawn scenes with captions, dialogues and held-out questions.

A scene is 1-4 coloured shapes in a 3x3 grid of positions on a plain light
background. Some scenes carry fine detail sized for the `tiny` preset (56 px base
view, 112 px high-res view): a digit in a 3x5 pixel font written on a large shape,
or a tiny shape 6 px across. Drawn at 1/112 of the image per font pixel, a digit is
crisp in a 112 px view and a blob in a 56 px one. Everything is generated from
(split, index) alone, needs no files, and is the same byte for byte on every run.
Each scene belongs to exactly one split, by a stable hash of its canonical
description, so train, validation and test never share a scene.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

from PIL import Image, ImageDraw

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 20000, "validation": 500, "test": 500}
# Hash bucket (0..99) ranges per split: 90 / 5 / 5 percent of all scenes.
_SPLIT_BUCKETS = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (240, 140, 30),
}
_COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses"}
POSITIONS = ("top left", "top centre", "top right", "middle left", "centre", "middle right",
             "bottom left", "bottom centre", "bottom right")  # grid cells, row-major
BACKGROUNDS = ((245, 245, 240), (250, 250, 250), (238, 242, 246), (246, 240, 228))

KINDS = ("colour", "shape", "count", "position", "yes-no", "small-digit", "small-shape")
UNANSWERABLE = "unanswerable"
# The held-out question of sample i has kind KINDS[i % 7] and cycles through that kind's
# (wording, answer) targets. Within each wording every answer is equally likely, and
# "unanswerable" (the thing asked about is not there) is one of them, so the question's
# words alone score no more than chance: CHANCE[kind].
_FORMS: dict[str, dict[str, tuple[str, ...]]] = {  # kind -> wording -> its answers
    "colour": {form: (*COLOURS, UNANSWERABLE) for form in ("colour-of-shape", "colour-at-position")},
    "shape": {form: (*SHAPES, UNANSWERABLE) for form in ("shape-at-position", "shape-of-colour")},
    "count": {"count-all": ("1", "2", "3", "4"), "count-colour": ("0", "1", "2", "3"),
              "count-shape": ("0", "1", "2", "3")},
    "position": {"position": (*POSITIONS, UNANSWERABLE)},
    "yes-no": {"yes-no": ("yes", "no")},
    "small-digit": {"digit": (*(str(d) for d in range(10)), UNANSWERABLE)},
    "small-shape": {"tiny-shape": (*SHAPES, UNANSWERABLE)},
}
_EVAL_TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    kind: tuple((form, answer) for form, answers in forms.items() for answer in answers)
    for kind, forms in _FORMS.items()
}
ANSWERS: dict[str, tuple[str, ...]] = {  # every answer a held-out question of each kind can have
    kind: tuple(dict.fromkeys(answer for _, answer in targets)) for kind, targets in _EVAL_TARGETS.items()
}
CHANCE: dict[str, float] = {  # percent: the best a guess from the question's wording alone can expect
    # targets are uniform over (wording, answer) pairs and answers uniform within a wording
    kind: 100 * len(forms) / len(_EVAL_TARGETS[kind]) for kind, forms in _FORMS.items()
}

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA suffix
UNANSWERABLE_HINT = "When the provided information is insufficient, respond with 'Unanswerable'."  # VizWiz's
DIALOGUE_TURNS = 5  # questions per training dialogue, each of a different kind

_HI_RES = 112  # the view (in px) in which the fine detail is drawn at one pixel per font cell
_TINY_SIDE = 6  # tiny shapes: side in _HI_RES px
# 3x5 pixel font, rows top to bottom; "#" is ink.
_DIGIT_FONT = {
    0: ("###", "#.#", "#.#", "#.#", "###"), 1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("###", "..#", "###", "#..", "###"), 3: ("###", "..#", "###", "..#", "###"),
    4: ("#.#", "#.#", "###", "..#", "..#"), 5: ("###", "#..", "###", "..#", "###"),
    6: ("###", "#..", "###", "#.#", "###"), 7: ("###", "..#", ".#.", ".#.", ".#."),
    8: ("###", "#.#", "###", "#.#", "###"), 9: ("###", "#.#", "###", "..#", "###"),
}
_MAX_TRIES = 100_000  # rejection sampling bound; a held-out sample needs about 100 tries, a train one 5


@dataclass(frozen=True)
class Thing:
    """One shape in a scene: what it is, where (grid cell 0..8), and the digit written on it, if any."""

    shape: str
    colour: str
    size: str  # "large", "small" or "tiny"
    cell: int
    digit: int | None = None

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self) -> str:
        """'a large red circle with the digit 7 at the top left'."""
        digit = f" with the digit {self.digit}" if self.digit is not None else ""
        return f"a {self.size} {self.colour} {self.shape}{digit} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    """The content of an image (not its jitter or background): the things, ordered by cell."""

    things: tuple[Thing, ...]

    def description(self) -> str:
        """Canonical text of the scene; equal scenes have equal descriptions."""
        return ";".join(f"{t.cell}:{t.size}:{t.colour}:{t.shape}:{t.digit}" for t in self.things)

    def split(self) -> str:
        """The one split this scene belongs to (a stable hash of its description, not Python's salted hash)."""
        digest = hashlib.blake2b(self.description().encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") % 100
        return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)

    @cached_property
    def shape_counts(self) -> Counter[str]:
        return Counter(t.shape for t in self.things)

    @cached_property
    def colour_counts(self) -> Counter[str]:
        return Counter(t.colour for t in self.things)

    @cached_property
    def pairs(self) -> frozenset[tuple[str, str]]:
        """(colour, shape) of every thing."""
        return frozenset((t.colour, t.shape) for t in self.things)

    def caption(self) -> str:
        """'a large red circle at the top left, a small blue square at the centre and a tiny ...'."""
        phrases = [t.phrase() for t in self.things]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return listed + "."


@dataclass(frozen=True)
class QA:
    """A question about a scene and its short answer."""

    kind: str
    form: str  # which wording ("count-colour"), so that evaluation can balance answers per wording
    question: str
    answer: str


@dataclass(frozen=True)
class ShapesSample:
    """One sample: image, pretraining caption, finetuning dialogue and a held-out evaluation question."""

    id: str  # "shapes-test-000042"
    image: Image.Image  # RGB, image_size x image_size
    caption: str  # pretraining caption
    conversations: list[dict[str, str]]  # LLaVA format, 2-4 QA pairs, "<image>\n" opens the first human turn
    question: str  # the held-out evaluation question (no prompt suffix); never asked in `conversations`
    answer: str  # its exact-match target: one word, a number or a position phrase ("top left")
    kind: str  # one of KINDS


def shapes_split_size(split: str) -> int:
    """The default number of samples of `split` (larger indices work too and give more samples)."""
    _check_split(split)
    return SPLIT_SIZES[split]


def shapes_sample(split: str, index: int, image_size: int = 224) -> ShapesSample:
    """Sample `index` of `split`: deterministic, and the same scene and text for every `image_size`.

    The held-out question's kind cycles through KINDS with the index and its answer
    through the kind's targets, so each split is balanced by kind and by answer; the
    scene is drawn by rejection until it belongs to `split` and has a question of that
    kind with that answer.
    """
    _check_split(split)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"shapes sample index: expected a non-negative int, got {index!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 16:
        raise ValueError(f"shapes image_size: expected an int >= 16, got {image_size!r}")
    rng = random.Random(_seed(split, index))
    kind = KINDS[index % len(KINDS)]
    targets = _EVAL_TARGETS[kind]
    form, answer = targets[(index // len(KINDS)) % len(targets)]
    scene, held_out = _draw_scene_for(rng, split, kind, form, answer)
    return ShapesSample(
        id=f"shapes-{split}-{index:06d}",
        image=render_scene(scene, rng, image_size),
        caption=scene.caption(),
        conversations=_conversation(scene, held_out, rng),
        question=held_out.question,
        answer=held_out.answer,
        kind=kind,
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; choose one of {', '.join(SPLITS)}")


def _seed(split: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"shapes/{split}/{index}".encode()).digest()[:8], "big")


# ---- scenes ----------------------------------------------------------------------------------


def _draw_scene_for(rng: random.Random, split: str, kind: str, form: str, answer: str) -> tuple[Scene, QA]:
    """Rejection-sample a scene of `split` with a `kind` question (of wording `form`) answered `answer`."""
    # Draw the detail the question is about straight away rather than waiting for it by chance.
    answerable = answer != UNANSWERABLE
    digit = int(answer) if kind == "small-digit" and answerable else None
    for _ in range(_MAX_TRIES):
        scene = sample_scene(rng, digit=digit, tiny=kind == "small-shape" and answerable)
        if scene.split() != split:
            continue
        matching = [qa for qa in questions(scene, kind) if qa.answer == answer and qa.form == form]
        if matching:
            return scene, rng.choice(matching)
    raise RuntimeError(f"shapes: no {split} scene with a {kind} question answered {answer!r}")  # unreachable


def _pick(rng: random.Random, pool: tuple[str, ...], used: list[str], reuse: float) -> str:
    """A name from `pool`, repeating one of `used` with probability `reuse` (so counts above 1 are common)."""
    return rng.choice(used) if used and rng.random() < reuse else rng.choice(pool)


def sample_scene(rng: random.Random, *, digit: int | None = None, tiny: bool = False) -> Scene:
    """A random scene: 1-4 things in distinct cells, no two of the same colour and shape.

    At most one thing is tiny and at most one (large) thing carries a digit; `digit`
    forces a digit of that value, `tiny` forces a tiny thing.
    """
    n = rng.randint(1, 4)
    cells = sorted(rng.sample(range(9), n))
    tiny_at = rng.randrange(n) if tiny or rng.random() < 0.3 else None
    if digit is not None and n == 1:
        tiny_at = None  # the one thing must be large enough to carry the digit
    sizes = ["tiny" if i == tiny_at else rng.choice(("large", "small")) for i in range(n)]
    larges = [i for i, size in enumerate(sizes) if size == "large"]
    if digit is not None and not larges:
        larges = [next(i for i, size in enumerate(sizes) if size != "tiny")]
        sizes[larges[0]] = "large"
    digit_at = rng.choice(larges) if larges and (digit is not None or rng.random() < 0.3) else None
    digit = rng.randrange(10) if digit is None else digit
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        colour = _pick(rng, _COLOUR_NAMES, [c for c, _ in pairs], 0.3)
        shape = _pick(rng, SHAPES, [s for _, s in pairs], 0.3)
        if (colour, shape) not in pairs:
            pairs.append((colour, shape))
    return Scene(tuple(
        Thing(shape, colour, sizes[i], cells[i], digit if i == digit_at else None)
        for i, (colour, shape) in enumerate(pairs)
    ))


# ---- questions -------------------------------------------------------------------------------


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _absent_shapes(scene: Scene) -> list[str]:
    return [shape for shape in SHAPES if scene.shape_counts[shape] == 0]


def _empty_cells(scene: Scene) -> list[int]:
    used = {t.cell for t in scene.things}
    return [cell for cell in range(9) if cell not in used]


# Each kind that can ask about something absent also asks it in the same words, answered UNANSWERABLE:
# only the image tells the two apart.


def _colour_questions(scene: Scene) -> list[QA]:
    qas = []
    for t in scene.things:
        if scene.shape_counts[t.shape] == 1:
            qas.append(QA("colour", "colour-of-shape", f"What colour is the {t.shape}?", t.colour))
        qas.append(QA("colour", "colour-at-position", f"What colour is the shape at the {t.position}?", t.colour))
    qas += [QA("colour", "colour-of-shape", f"What colour is the {shape}?", UNANSWERABLE)
            for shape in _absent_shapes(scene)]
    qas += [QA("colour", "colour-at-position", f"What colour is the shape at the {POSITIONS[cell]}?", UNANSWERABLE)
            for cell in _empty_cells(scene)]
    return qas


def _shape_questions(scene: Scene) -> list[QA]:
    qas = []
    for t in scene.things:
        if t.size == "tiny":
            continue  # its shape needs the high-res view: "small-shape"
        qas.append(QA("shape", "shape-at-position", f"What shape is at the {t.position}?", t.shape))
        if scene.colour_counts[t.colour] == 1:
            qas.append(QA("shape", "shape-of-colour", f"What shape is the {t.colour} object?", t.shape))
    qas += [QA("shape", "shape-at-position", f"What shape is at the {POSITIONS[cell]}?", UNANSWERABLE)
            for cell in _empty_cells(scene)]
    qas += [QA("shape", "shape-of-colour", f"What shape is the {colour} object?", UNANSWERABLE)
            for colour in COLOURS if scene.colour_counts[colour] == 0]
    return qas


def _count_questions(scene: Scene) -> list[QA]:
    qas = [QA("count", "count-all", "How many shapes are there?", str(len(scene.things)))]
    qas += [QA("count", "count-colour", f"How many {colour} shapes are there?", str(scene.colour_counts[colour]))
            for colour in COLOURS]
    qas += [QA("count", "count-shape", f"How many {PLURALS[shape]} are there?", str(scene.shape_counts[shape]))
            for shape in SHAPES]
    return qas


def _absent_things(scene: Scene) -> list[str]:
    """'blue circle' for every colour and shape not in the scene together."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES if (colour, shape) not in scene.pairs]


def _position_questions(scene: Scene) -> list[QA]:
    # always colour and shape ("Where is the red circle?"), so the wording says nothing about whether it is there
    qas = [QA("position", "position", f"Where is the {t.colour} {t.shape}?", t.position) for t in scene.things]
    return qas + [QA("position", "position", f"Where is the {thing}?", UNANSWERABLE) for thing in _absent_things(scene)]


def _yes_no_questions(scene: Scene) -> list[QA]:
    return [QA("yes-no", "yes-no", f"Is there {_a(f'{colour} {shape}')}?",
               "yes" if (colour, shape) in scene.pairs else "no") for colour in COLOURS for shape in SHAPES]


def _digit_questions(scene: Scene) -> list[QA]:
    qas = [QA("small-digit", "digit", f"What digit is written on the {t.colour} {t.shape}?", str(t.digit))
           for t in scene.things if t.digit is not None]
    return qas + [QA("small-digit", "digit", f"What digit is written on the {thing}?", UNANSWERABLE)
                  for thing in _absent_things(scene)]


def _tiny_questions(scene: Scene) -> list[QA]:
    qas = [QA("small-shape", "tiny-shape", "What shape is the tiny object?", t.shape)
           for t in scene.things if t.size == "tiny"]
    return qas or [QA("small-shape", "tiny-shape", "What shape is the tiny object?", UNANSWERABLE)]


_QUESTIONS = {
    "colour": _colour_questions, "shape": _shape_questions, "count": _count_questions,
    "position": _position_questions, "yes-no": _yes_no_questions, "small-digit": _digit_questions,
    "small-shape": _tiny_questions,
}


def questions(scene: Scene, kind: str) -> list[QA]:
    """Every unambiguous question of `kind` about `scene` (none that would need guessing)."""
    if kind not in _QUESTIONS:
        raise ValueError(f"unknown shapes question kind {kind!r}; choose one of {', '.join(KINDS)}")
    return _QUESTIONS[kind](scene)


def _pick_balanced(rng: random.Random, qas: list[QA]) -> QA:
    """A question whose answer is drawn uniformly from the distinct answers (so 'no' and '0' do not swamp)."""
    answers = sorted({qa.answer for qa in qas})
    answer = rng.choice(answers)
    return rng.choice([qa for qa in qas if qa.answer == answer])


def _conversation(scene: Scene, held_out: QA, rng: random.Random) -> list[dict[str, str]]:
    """DIALOGUE_TURNS questions about `scene` in LLaVA's format, never asking the held-out question.

    One question of each of DIALOGUE_TURNS different kinds, its answer drawn uniformly
    from the kind's distinct answers in this scene ("unanswerable" among them), each
    with LLaVA's short-answer suffix and the bare answer: every supervised token but
    the end of turn needs the image (a sentence answer would mostly copy the question).
    """
    pairs: list[tuple[str, str]] = []
    for kind in rng.sample(KINDS, len(KINDS)):
        if len(pairs) == DIALOGUE_TURNS:
            break
        qas = [qa for qa in questions(scene, kind) if qa.question != held_out.question]
        if qas:
            qa = _pick_balanced(rng, qas)
            pairs.append((f"{qa.question}\n{SHORT_ANSWER}", _capitalise(qa.answer)))
    turns = []
    for k, (human, gpt) in enumerate(pairs):
        turns.append({"from": "human", "value": f"<image>\n{human}" if k == 0 else human})
        turns.append({"from": "gpt", "value": gpt})
    return turns


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---- drawing ---------------------------------------------------------------------------------


def render_scene(scene: Scene, rng: random.Random, size: int) -> Image.Image:
    """Draw `scene` on a `size` px square; `rng` picks the background and jitter (same draws at every size)."""
    background = rng.choice(BACKGROUNDS)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    unit = size / _HI_RES  # px per high-res pixel: fine detail snaps to this grid
    for t in scene.things:
        scale, jx, jy = rng.uniform(0.85, 1.0), rng.random(), rng.random()
        if t.size == "tiny":
            side = _TINY_SIDE * unit
        else:
            side = cell * (0.8 if t.size == "large" else 0.45) * scale
        row, col = divmod(t.cell, 3)
        # Keep a margin of 6% of a cell so neighbouring shapes never touch.
        margin = 0.06 * cell
        x0 = col * cell + margin + jx * (cell - 2 * margin - side)
        y0 = row * cell + margin + jy * (cell - 2 * margin - side)
        if t.size == "tiny":
            x0, y0 = round(x0 / unit) * unit, round(y0 / unit) * unit
        box = (x0, y0, x0 + side, y0 + side)
        draw_shape(draw, t.shape, COLOURS[t.colour], box)
        if t.digit is not None:
            _draw_digit(draw, t.digit, _digit_ink(t.colour), _centre(t.shape, box), unit)
    return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int],
               box: tuple[float, float, float, float]) -> None:
    """Fill `shape` inside `box` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (round(v) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # at least one pixel, however small the image
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=colour)
    elif shape == "cross":
        arm = max(1, round((x1 - x0) / 6))  # half the bar width: bars are a third of the side
        draw.rectangle((x0, cy - arm, x1 - 1, cy + arm - 1), fill=colour)
        draw.rectangle((cx - arm, y0, cx + arm - 1, y1 - 1), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _centre(shape: str, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """Where a digit sits on `shape`: the box centre, or lower for a triangle (its widest inner part)."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, ((y0 + 2 * y1) / 3 if shape == "triangle" else (y0 + y1) / 2)


def _digit_ink(colour: str) -> tuple[int, int, int]:
    """Black on light shapes, white on dark ones, so the digit contrasts with its shape."""
    r, g, b = COLOURS[colour]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _draw_digit(draw: ImageDraw.ImageDraw, digit: int, ink: tuple[int, int, int],
                centre: tuple[float, float], unit: float) -> None:
    """Draw `digit` in the 3x5 font, one font cell per high-res pixel, snapped to that pixel grid."""
    left = round(centre[0] / unit - 1.5)
    top = round(centre[1] / unit - 2.5)
    for r, line in enumerate(_DIGIT_FONT[digit]):
        for c, mark in enumerate(line):
            if mark == "#":
                x, y = round((left + c) * unit), round((top + r) * unit)
                draw.rectangle((x, y, max(x, round(x + unit) - 1), max(y, round(y + unit) - 1)), fill=ink)
