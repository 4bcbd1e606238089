import pytest

from sparsecut_core.data.templates import Turn, VICUNA_SYSTEM, render_prompt


def test_vicuna_v1_matches_llava_conversation_format():
    turns = [Turn("human", "<image>\nWhat is it?"), Turn("gpt", "A cat."), Turn("human", "Colour?")]
    assert render_prompt("vicuna_v1", turns) == (
        VICUNA_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:"
    )


def test_plain_is_image_then_caption():
    assert render_prompt("plain", [Turn("human", "<image>"), Turn("gpt", "a red circle\n")]) == "<image>a red circle\n"


def test_turns_must_alternate_starting_with_human():
    with pytest.raises(ValueError, match="turn 1: expected a 'gpt' turn"):
        render_prompt("vicuna_v1", [Turn("human", "a"), Turn("human", "b")])
