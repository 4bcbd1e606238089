"""The local word-level tokenizer: fixed special ids, determinism, no downloads."""

import random
import re

import pytest
from transformers import AutoTokenizer

from sparsecut_core.data.tokenizer import TINY_VOCAB, build_word_tokenizer

LLAVA_PROMPTS = [
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "Answer the question using a single word or phrase.",
    "When the provided information is insufficient, respond with 'Unanswerable'.",
    "Answer with the option's letter from the given choices directly.",
]


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(TINY_VOCAB)


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_special_tokens_have_fixed_ids(tok):
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert "<image>" in tok.all_special_tokens


def test_builds_are_deterministic_whatever_the_word_order(tok):
    shuffled = list(TINY_VOCAB)
    random.Random(0).shuffle(shuffled)
    assert build_word_tokenizer(shuffled).get_vocab() == tok.get_vocab()
    assert build_word_tokenizer(TINY_VOCAB).get_vocab() == tok.get_vocab()


def test_image_token_is_never_split(tok):
    assert ids_of(tok, "<image>") == [4]
    assert ids_of(tok, "<image><image>") == [4, 4]
    ids = ids_of(tok, "red<image>.blue")
    assert ids == [tok.convert_tokens_to_ids("red"), 4, tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids("blue")]


def test_custom_image_token_takes_id_4():
    tokenizer = build_word_tokenizer(["red"], image_token="<img>")
    assert tokenizer.convert_tokens_to_ids("<img>") == 4
    assert ids_of(tokenizer, "red <img>") == [tokenizer.convert_tokens_to_ids("red"), 4]


def test_unknown_word_maps_to_unk(tok):
    assert ids_of(tok, "red xyzzy") == [tok.convert_tokens_to_ids("red"), tok.unk_token_id]


def test_numbers_are_split_into_digits(tok):
    assert tok.convert_ids_to_tokens(ids_of(tok, "there are 120 dots")) == ["there", "are", "1", "2", "0", "dots"]


def test_text_is_lowercased(tok):
    assert ids_of(tok, "What COLOUR") == ids_of(tok, "what colour")


def test_bos_is_prepended_only_when_asked(tok):
    assert tok("red")["input_ids"][0] == tok.bos_token_id
    assert build_word_tokenizer(TINY_VOCAB, add_bos=False)("red")["input_ids"] == ids_of(tok, "red")


def test_decode_reads_back_as_words(tok):
    ids = tok("a red circle.")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle."


def test_tiny_vocab_covers_llava_prompts(tok):
    for prompt in LLAVA_PROMPTS:
        assert tok.unk_token_id not in ids_of(tok, prompt), prompt


def test_tiny_vocab_is_a_sorted_lowercase_word_list():
    assert TINY_VOCAB == sorted(set(TINY_VOCAB))
    assert all(re.fullmatch(r"[a-z]+", word) for word in TINY_VOCAB)
    assert set("abcdefghijklmnopqrstuvwxyz") <= set(TINY_VOCAB)
    assert 200 <= len(TINY_VOCAB) <= 1000


def test_pads_right_with_pad_id_and_has_model_max_length(tok):
    batch = tok(["red circle", "red"], padding=True)
    assert batch["input_ids"][1][-1] == tok.pad_token_id
    assert batch["attention_mask"][1] == [1, 1, 0]
    assert tok.padding_side == "right"
    assert tok.model_max_length == 2048


def test_save_and_reload_gives_same_ids(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<image> What colour is the 12th star? human's"
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert reloaded.get_vocab() == tok.get_vocab()


def test_words_that_would_be_split_are_rejected():
    with pytest.raises(ValueError, match="words"):
        build_word_tokenizer(["red circle"])
    with pytest.raises(ValueError, match="words"):
        build_word_tokenizer(["human's"])


def test_image_token_clashing_with_special_token_is_rejected():
    with pytest.raises(ValueError, match="image_token"):
        build_word_tokenizer(["red"], image_token="<pad>")
