"""The built-in `shapes` data: deterministic, disjoint splits, answerable from the picture, balanced, in-vocabulary."""

import hashlib
import itertools
import random
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from sparsecut_core.data import shapes
from sparsecut_core.model.images import make_views
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.data.shapes import (ANSWERS, CHANCE, DIALOGUE_TURNS, KINDS, SHAPES, SHORT_ANSWER, SPLITS,
                                        UNANSWERABLE, Scene, ShapesSample, Thing, render_scene, shapes_sample,
                                        shapes_split_size)
from sparsecut_core.data.tokenizer import TINY_VOCAB, build_word_tokenizer

N_SAMPLES = {"train": 2000, "validation": 250, "test": 500}  # what the split/vocabulary/balance tests look at


@pytest.fixture(scope="module")
def samples() -> dict[str, list[ShapesSample]]:
    # 56 px: the text and scene do not depend on the size and small images draw faster.
    return {split: [shapes_sample(split, i, 56) for i in range(n)] for split, n in N_SAMPLES.items()}


# Loads shapes.py by path (it needs only PIL), so that a fresh Python does not pay for importing torch.
DIGESTS = """
import hashlib, importlib.util, sys
spec = importlib.util.spec_from_file_location("shapes_module", sys.argv[1])
shapes = importlib.util.module_from_spec(spec)
sys.modules["shapes_module"] = shapes
spec.loader.exec_module(shapes)
for split in shapes.SPLITS:
    for index in (0, 7):
        s = shapes.shapes_sample(split, index)
        text = repr((s.id, s.caption, s.conversations, s.question, s.answer, s.kind))
        print(hashlib.sha256(s.image.tobytes() + text.encode()).hexdigest())
"""


def _digests_in_fresh_python(hash_seed: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", DIGESTS, shapes.__file__], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": hash_seed})
    return out.stdout.split()


def test_same_call_gives_the_same_bytes_in_this_and_other_processes():
    first, again = shapes_sample("test", 7), shapes_sample("test", 7)
    assert first.image.tobytes() == again.image.tobytes()
    assert (first.caption, first.conversations, first.question, first.answer) == (
        again.caption, again.conversations, again.question, again.answer)
    # Python's str hash is salted per process: the data must not depend on it.
    digests = _digests_in_fresh_python("1")
    assert len(set(digests)) == 6 and _digests_in_fresh_python("2") == digests


PINNED_TEST_TEXT = "ac01918d1db30bf5dcddd416cf390a13f5a962e220ae4144cc3ad3c55cfb2a84"


def test_test_split_text_is_pinned():
    # Changing the generator changes the test split: results before and after are not comparable.
    text = "\n".join(f"{s.id}|{s.caption}|{s.question}|{s.answer}|{s.kind}|{s.conversations}"
                     for s in (shapes_sample("test", i, 16) for i in range(16)))
    assert hashlib.sha256(text.encode()).hexdigest() == PINNED_TEST_TEXT


def test_different_indices_give_different_samples():
    assert len({shapes_sample("train", i, 56).image.tobytes() for i in range(20)}) == 20


def test_sample_has_the_documented_fields(samples):
    sample = shapes_sample("test", 42, 112)
    assert sample.id == "shapes-test-000042"
    assert sample.image.mode == "RGB" and sample.image.size == (112, 112)
    assert sample.kind in KINDS and sample.answer in ANSWERS[sample.kind]
    assert sample.question.endswith("?") and sample.caption.endswith(".")
    for s in samples["train"][:300]:
        turns = s.conversations
        assert len(turns) == 2 * DIALOGUE_TURNS
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert all(t["value"].strip() for t in turns)


def test_image_size_changes_only_the_image():
    small, large = shapes_sample("validation", 3, 112), shapes_sample("validation", 3, 224)
    assert small.image.size == (112, 112) and large.image.size == (224, 224)
    assert (small.caption, small.conversations, small.question, small.answer) == (
        large.caption, large.conversations, large.question, large.answer)


def test_splits_never_share_a_scene(samples):
    # The caption names every thing's size, colour, shape, digit and position: it is the scene.
    scenes = {split: {s.caption for s in samples[split]} for split in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not scenes[a] & scenes[b], (a, b)
    assert len(scenes["train"]) > 0.9 * N_SAMPLES["train"]  # and the splits are not a handful of repeated scenes


def test_split_sizes_are_fixed_and_bad_arguments_are_value_errors():
    assert {split: shapes_split_size(split) for split in SPLITS} == {"train": 20000, "validation": 500, "test": 500}
    for call in (lambda: shapes_sample("dev", 0), lambda: shapes_sample("train", -1),
                 lambda: shapes_sample("train", 0, 0), lambda: shapes_split_size("dev")):
        with pytest.raises(ValueError):
            call()


def test_every_word_is_in_the_tiny_vocabulary(samples):
    tokenizer = build_word_tokenizer(TINY_VOCAB)
    texts = sorted({text for s in samples["train"] + samples["test"]
                    for text in (s.caption, s.question, s.answer, *(t["value"] for t in s.conversations))})
    encoded = tokenizer(texts)["input_ids"]
    unknown = [text for text, ids in zip(texts, encoded) if tokenizer.unk_token_id in ids]
    assert not unknown, unknown[:5]


def test_held_out_question_is_never_asked_in_the_dialogue(samples):
    for s in samples["test"]:
        asked = [t["value"].removeprefix("<image>\n").split("\n")[0] for t in s.conversations[::2]]
        assert s.question not in asked


def _things(caption: str) -> list[tuple[str, str, str, str]]:
    """(size, colour, shape, position) of every thing a caption names."""
    positions = "|".join(sorted(shapes.POSITIONS, key=len, reverse=True))
    return re.findall(rf"an? (large|small|tiny) (\w+) (\w+)(?: with the digit \d)? at the ({positions})", caption)


def test_answers_agree_with_the_scene(samples):
    for s in samples["test"]:
        things = _things(s.caption)
        named = re.search(r"the (circle|square|triangle|diamond|cross)\?$", s.question)
        at = re.search(r"at the ([a-z]+(?: [a-z]+)?)\?$", s.question)
        if s.answer == UNANSWERABLE:  # what the question is about is not there
            if s.kind == "small-shape":
                assert all(size != "tiny" for size, *_ in things)
            elif at:
                assert all(position != at.group(1) for *_, position in things)
            elif pair := re.search(r"the (\w+) (circle|square|triangle|diamond|cross)\?$", s.question):
                assert pair.groups() not in {(c, shape) for _, c, shape, _ in things}
            elif named:
                assert all(shape != named.group(1) for _, _, shape, _ in things)
            else:  # "What shape is the red object?"
                colour = re.search(r"the (\w+) object\?$", s.question).group(1)
                assert all(c != colour for _, c, _, _ in things)
        elif s.kind == "small-digit":
            assert f"with the digit {s.answer}" in s.caption
        elif s.kind == "small-shape":
            assert re.search(rf"a tiny \w+ {s.answer} at", s.caption)
        elif s.kind == "position":  # "Where is the red circle?": that thing is at the answer
            ref = s.question.removeprefix("Where is the ").removesuffix("?")
            assert re.search(rf"{ref}( with the digit \d)? at the {s.answer}(,| and|\.)", s.caption)
        elif s.kind == "colour" and named:  # "What colour is the circle?": the only circle
            assert s.caption.count(f" {named.group(1)}") == 1 and f"{s.answer} {named.group(1)}" in s.caption
        elif s.kind == "colour":
            assert (s.answer, at.group(1)) in {(c, position) for _, c, _, position in things}
        elif s.kind == "count" and s.question == "How many shapes are there?":
            assert len(things) == int(s.answer)


def test_answers_are_balanced_so_chance_is_low(samples):
    test = samples["test"]
    by_kind = {kind: Counter(s.answer for s in test if s.kind == kind) for kind in KINDS}
    assert all(sum(counts.values()) >= len(test) // len(KINDS) for counts in by_kind.values())
    for kind, counts in by_kind.items():
        assert set(counts) == set(ANSWERS[kind]), kind  # every answer shows up
        majority = counts.most_common(1)[0][1] / sum(counts.values())
        assert majority <= max(0.3, 1.05 / len(ANSWERS[kind])), (kind, counts)
    overall = Counter(s.answer for s in test).most_common(1)[0][1] / len(test)
    assert overall <= 0.15


def _wording(question: str) -> str:
    """The question with the thing it names blanked out: what a model that ignores the image can go by."""
    words = r"circle|square|triangle|diamond|cross|circles|squares|triangles|diamonds|crosses|red|green|blue|" \
            r"yellow|purple|orange|top|middle|bottom|left|centre|right"
    return re.sub(rf"\b({words})\b", "_", question)


def test_the_wording_alone_scores_no_more_than_chance_on_every_kind(samples):
    # The best guess from the question's words: the commonest training answer of that exact question
    # (or, for a question never seen in training, of its wording with the names blanked out).
    by_question, by_wording = {}, {}
    for s in samples["train"]:
        for human, gpt in zip(s.conversations[::2], s.conversations[1::2]):
            question = human["value"].removeprefix("<image>\n").split("\n")[0]
            answer = gpt["value"].lower()
            by_question.setdefault(question, Counter())[answer] += 1
            by_wording.setdefault(_wording(question), Counter())[answer] += 1
    hits: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    for s in samples["test"]:
        seen = by_question.get(s.question) or by_wording[_wording(s.question)]
        hits[s.kind].append(seen.most_common(1)[0][0] == s.answer)
    for kind, got in hits.items():
        score = 100 * sum(got) / len(got)
        assert score <= CHANCE[kind] + 8, (kind, score, CHANCE[kind])


def test_chance_is_one_over_the_answers_of_each_wording():
    assert CHANCE["yes-no"] == 50 and CHANCE["count"] == 25 and CHANCE["position"] == 10
    assert abs(CHANCE["colour"] - 100 / 7) < 1e-9 and abs(CHANCE["small-digit"] - 100 / 11) < 1e-9


def test_dialogues_are_short_answers_one_per_kind_with_unanswerable_among_them(samples):
    train = samples["train"][:500]
    for s in train:
        humans, gpts = s.conversations[::2], s.conversations[1::2]
        assert all(h["value"].endswith(f"\n{SHORT_ANSWER}") for h in humans)
        assert all(len(g["value"].split()) <= 2 for g in gpts)  # a word, a number or "top left"
    answers = Counter(t["value"] for s in train for t in s.conversations[1::2])
    assert 0.05 < answers["Unanswerable"] / sum(answers.values()) < 0.4


def _views(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """The tiny preset's views of `scene` drawn at 224 px: base [56, 56, 3] and the 2x2 crops re-tiled [112, 112, 3]."""
    base = load_preset("tiny").image_processor["size"]
    views = make_views(render_scene(scene, random.Random(0), 224), base, (2, 2), (122, 116, 104))
    crops = [np.asarray(v, dtype=np.float64) for v in views[1:]]
    return np.asarray(views[0], dtype=np.float64), np.block([[crops[0], crops[1]], [crops[2], crops[3]]])


def _contrasts(variants: list[Scene]) -> tuple[list[float], list[float]]:
    """For each pair of variants, the largest pixel difference in the base view and in the high-res view."""
    views = [_views(scene) for scene in variants]
    pairs = list(itertools.combinations(views, 2))
    return [np.abs(a[0] - b[0]).max() for a, b in pairs], [np.abs(a[1] - b[1]).max() for a, b in pairs]


def test_digits_are_legible_in_the_high_res_view_only():
    for shape, colour in (("square", "blue"), ("triangle", "yellow")):
        base, high = _contrasts([Scene((Thing(shape, colour, "large", 4, digit),)) for digit in range(10)])
        # Any two digits differ by a crisp stroke at 112 px; at 56 px some pairs (0/8) blur into the same blob.
        assert min(high) > 120 and min(base) < 40 and np.median(high) > 2.5 * np.median(base), (shape, base, high)


def test_tiny_shapes_are_told_apart_in_the_high_res_view():
    base, high = _contrasts([Scene((Thing(shape, "red", "tiny", 4),)) for shape in SHAPES])
    assert min(high) > 100 and np.median(high) > 2 * np.median(base) and min(base) < 40


def test_cli_writes_a_sample_and_prints_its_question(tmp_path):
    from sparsecut_cli.app import app

    out = tmp_path / "s.png"
    result = CliRunner().invoke(app, ["shapes", str(out), "--split", "train", "--index", "5", "--size", "112"])
    assert result.exit_code == 0, result.output
    sample = shapes_sample("train", 5, 112)
    assert out.exists() and sample.question in result.output and sample.caption[:30] in result.output
