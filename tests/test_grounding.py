"""The image reaches the LLM: a few steps on a fixed batch make the true images' loss fall below shuffled ones'.

Every question in the batch has the same words, so only the picture can tell the
answers apart: a model whose shortcuts carry nothing stays at the loss of guessing
among the colours, with its own images and with another sample's alike.
"""

import math
import random

import torch

from sparsecut_core.data.batching import encode_record
from sparsecut_core.data.labels import IGNORE_INDEX
from sparsecut_core.data.records import Record
from sparsecut_core.data.shapes import COLOURS, SHAPES, SHORT_ANSWER, Scene, Thing, render_scene
from sparsecut_core.data.templates import Turn
from sparsecut_core.model.injection import Shortcuts
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.presets.preset import load_preset

QUESTION = f"<image>\nWhat colour is the shape at the centre?\n{SHORT_ANSWER}"
STEPS = 50


def _batch(processor, count: int = 12):
    """`count` one-shape scenes, each colour twice, asked the same question."""
    colours = [list(COLOURS)[k % len(COLOURS)] for k in range(count)]
    images = [render_scene(Scene((Thing(SHAPES[k % len(SHAPES)], colour, "large", 4),)), random.Random(k), 112)
              for k, colour in enumerate(colours)]
    rows = [encode_record(Record(f"r{k}", "x", (Turn("human", QUESTION), Turn("gpt", colour.capitalize()))),
                          processor, "vicuna_v1", 512) for k, colour in enumerate(colours)]
    input_ids = torch.tensor([row["input_ids"] for row in rows])  # same words: same length, no padding
    labels = torch.tensor([row["labels"] for row in rows])
    return input_ids, labels, torch.from_numpy(processor.pixel_values(images))


def _answer_loss(model, input_ids, labels, pixel_values) -> float:
    """Mean loss on the colour word (the end-of-turn token after it needs no image)."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    first = (labels != IGNORE_INDEX).int().argmax(1)  # position of the colour word in each row
    rows = torch.arange(len(labels))
    return torch.nn.functional.cross_entropy(logits[rows, first - 1], labels[rows, first]).item()


def _train_and_measure(seed: int = 0) -> tuple[float, float]:
    """(loss with the true images, loss with each image moved to the next sample) after STEPS steps."""
    model, processor = build_from_preset(load_preset("tiny"), seed=seed)
    model.set_trainable("finetune")
    input_ids, labels, pixel_values = _batch(processor)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(STEPS):
        model(input_ids=input_ids, pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    shuffled = pixel_values.roll(2, dims=0)  # each sample gets an image of another colour
    return _answer_loss(model, input_ids, labels, pixel_values), _answer_loss(model, input_ids, labels, shuffled)


def test_true_images_explain_the_answers_after_a_few_steps():
    true, shuffled = _train_and_measure()
    assert true < 0.5 * math.log(len(COLOURS)) and shuffled > true + 1.0, (true, shuffled)


def test_the_check_fails_when_the_shortcuts_carry_nothing(monkeypatch):
    # Shortcuts that add nothing: the same training cannot tell its own images from shuffled ones.
    monkeypatch.setattr(Shortcuts, "add_to", lambda self, hidden_states, layer: hidden_states)
    true, shuffled = _train_and_measure()
    assert abs(true - shuffled) < 1e-4 and true > 0.8 * math.log(len(COLOURS)), (true, shuffled)
