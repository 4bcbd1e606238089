"""Label masks: loss only on the assistant's replies, exactly, and drift is reported."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sparsecut_core.data.labels import IGNORE_INDEX, TokenizationMismatch, encode_dialogue
from sparsecut_core.data.templates import Turn
from sparsecut_core.data.tokenizer import TINY_VOCAB, build_word_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DIALOGUE = [
    Turn("human", "<image>\nWhat colour is the circle?"), Turn("gpt", "Red."),
    Turn("human", "How many shapes are there?"), Turn("gpt", "Two."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(TINY_VOCAB)


def _targets(tokenizer, encoded) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(t) if t != IGNORE_INDEX else "_" for t in encoded.labels]


def test_vicuna_labels_cover_each_answer_and_its_eos_only(tokenizer):
    encoded = encode_dialogue("vicuna_v1", DIALOGUE, tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    labelled = [tok for tok, lab in zip(tokens, encoded.labels) if lab != IGNORE_INDEX]
    assert labelled == ["red", ".", "</s>", "two", ".", "</s>"]
    # the ids under the labels are the input ids (the model shifts them itself)
    assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(encoded.input_ids, encoded.labels))
    # "ASSISTANT:" before each reply carries no loss
    first = tokens.index("red")
    assert tokens[first - 2:first] == ["assistant", ":"] and encoded.labels[first - 1] == IGNORE_INDEX


def test_plain_template_labels_the_caption_not_the_image(tokenizer):
    encoded = encode_dialogue("plain", [Turn("human", "<image>" * 3), Turn("gpt", "a red circle.")], tokenizer)
    assert _targets(tokenizer, encoded) == ["_", "_", "_", "_", "a", "red", "circle", "."]


def test_chat_template_labels_reply_and_end_of_turn_token(tokenizer):
    chat_tokenizer = build_word_tokenizer(TINY_VOCAB)
    chat_tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat_tokenizer.chat_template = CHATML
    encoded = encode_dialogue("chat_template", DIALOGUE, chat_tokenizer)
    labelled = [t for t in _targets(chat_tokenizer, encoded) if t != "_"]
    assert labelled == ["red", ".", "<|im_end|>", "two", ".", "<|im_end|>"]
    tokens = chat_tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert tokens[0] == "<|im_start|>"  # the template's own special tokens; no BOS added on top


def test_truncation_keeps_labels_aligned(tokenizer):
    full = encode_dialogue("vicuna_v1", DIALOGUE, tokenizer)
    cut = encode_dialogue("vicuna_v1", DIALOGUE, tokenizer, max_length=len(full.input_ids) - 3)
    assert cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]


def test_tokenizer_merging_across_a_reply_boundary_is_a_mismatch():
    # whitespace-only pre-tokenization: "assistant:yes" is one token, half prompt half reply
    vocab = {"<unk>": 0, "</s>": 1}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    merging = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    merging.chat_template = (
        "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(TokenizationMismatch, match="straddles the boundary of reply 1"):
        encode_dialogue("chat_template", [Turn("human", "hi"), Turn("gpt", "yes")], merging)


def test_dialogue_must_end_with_the_assistant(tokenizer):
    with pytest.raises(ValueError, match="must end with an assistant"):
        encode_dialogue("vicuna_v1", DIALOGUE[:3], tokenizer)
