"""Training data: LLaVA JSON/JSONL, `datasets` folders, built-in shapes; bad records named; batching."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sparsecut_core.data.batching import Collator, encode_records, modality_length_batches
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.data.labels import IGNORE_INDEX
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.data.records import BadSample, SkipCounter, load_records


def _dialogue(question="<image>\nWhat colour is the circle?", answer="Red."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path


@pytest.fixture(scope="module")
def processor():
    return build_from_preset(load_preset("tiny"))[1]


def _write(path, records, jsonl=False):
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records)
    path.write_text(text)
    return path


def test_llava_json_records_resolve_images_under_the_image_folder(folder):
    data = _write(folder / "d.json", [{"id": "x1", "image": "a.png", "conversations": _dialogue()},
                                      {"id": "t1", "conversations": _dialogue("Hello?", "Hi.")}])
    records, _ = load_records(data, images=folder)
    assert [r.id for r in records] == ["x1", "t1"]
    assert records[0].image == str(folder / "a.png") and records[1].image is None
    assert [t.role for t in records[0].turns] == ["human", "gpt"]


@pytest.mark.parametrize("record, message", [
    ({"id": "m", "image": "missing.png", "conversations": _dialogue()}, "id 'm'.*image file .*missing.png is missing"),
    ({"id": "n", "image": "a.png"}, "id 'n'.*no conversations"),
    ({"id": "p", "conversations": _dialogue()}, "id 'p'.*placeholder but no image"),
    ({"id": "q", "image": "a.png", "conversations": _dialogue("What?")}, "id 'q'.*exactly one <image>"),
    ({"id": "r", "conversations": [{"from": "gpt", "value": "x"}]}, "id 'r'.*should be a 'human' turn"),
])
def test_bad_record_is_named_with_file_line_and_id(folder, record, message):
    data = _write(folder / "d.jsonl", [{"id": "ok", "image": "a.png", "conversations": _dialogue()}, record], True)
    with pytest.raises(BadSample, match=rf"d.jsonl:2 \({message}"):
        load_records(data, images=folder)


def test_skip_policy_counts_bad_records_and_keeps_the_rest(folder):
    data = _write(folder / "d.jsonl", [{"id": "ok", "image": "a.png", "conversations": _dialogue()},
                                       {"id": "n", "image": "a.png"}, {"id": "p", "conversations": _dialogue()}], True)
    skips = SkipCounter("skip")
    records, _ = load_records(data, images=folder, skips=skips)
    assert [r.id for r in records] == ["ok"] and skips.total == 2


def test_malformed_jsonl_line_names_the_line(folder):
    (folder / "d.jsonl").write_text(json.dumps({"id": "ok", "conversations": _dialogue("Hi?", "Yes.")}) + "\n{oops\n")
    with pytest.raises(BadSample, match=r"d.jsonl:2: malformed JSON"):
        load_records(folder / "d.jsonl")


def test_skip_policy_skips_and_counts_malformed_and_non_utf8_jsonl_lines(folder):
    good = json.dumps({"id": "ok", "conversations": _dialogue("Hi?", "Yes.")}).encode()
    bad_record = json.dumps({"id": "n", "image": "a.png"}).encode()
    data = folder / "d.jsonl"
    data.write_bytes(b"\n".join([good, b'{"id": "\xff"}', b"{oops", bad_record, good]))
    skips = SkipCounter("skip")
    records, _ = load_records(data, images=folder, skips=skips)
    assert [r.where for r in records] == [f"{data}:1", f"{data}:5"]
    assert skips.total == 3 and sorted(skips.skipped) == [
        "malformed JSON (Expecting property name enclosed in double quotes)", "no conversations",
        "not UTF-8 text (byte 9)"]
    with pytest.raises(BadSample, match=r"d.jsonl:2: not UTF-8 text \(byte 9\)"):
        load_records(data, images=folder)


def test_datasets_folder_with_an_image_column(folder):
    import datasets

    rows = {"id": ["a", "b"], "image": [Image.new("RGB", (8, 8), (0, 0, 255))] * 2,
            "conversations": [_dialogue(), _dialogue(answer="Blue.")]}
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    ds.save_to_disk(str(folder / "hf"))
    records, source = load_records(folder / "hf")
    assert [r.image for r in records] == ["row:0", "row:1"]
    assert source.load(records[1]).getpixel((0, 0)) == (0, 0, 255)
    ds.to_parquet(str(folder / "d.parquet"))
    assert len(load_records(folder / "d.parquet")[0]) == 2


def test_shapes_records_are_captions_for_pretrain_and_dialogues_for_finetune():
    pre, source = load_records("shapes:train:4", stage="pretrain", image_size=112)
    fine, _ = load_records("shapes:train:4", stage="finetune", image_size=112)
    assert [r.id for r in pre] == [r.id for r in fine]
    assert pre[0].turns[0].text == "<image>" and len(pre[0].turns) == 2
    assert len(fine[0].turns) >= 4 and "<image>" in fine[0].turns[0].text
    assert source.load(pre[0]).size == (112, 112)


def test_encoding_is_cached_and_expands_the_image_to_its_visual_positions(tmp_path, processor):
    records, _ = load_records("shapes:train:8", stage="finetune", image_size=112)
    first = encode_records(records, processor, template="vicuna_v1", max_length=512, skips=SkipCounter(),
                           cache_dir=tmp_path)
    again = encode_records(records, processor, template="vicuna_v1", max_length=512, skips=SkipCounter(),
                           cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 1 and first["input_ids"] == again["input_ids"]
    row = first[0]
    assert row["input_ids"].count(processor.image_token_id) == processor.num_image_tokens
    assert all(lab == IGNORE_INDEX for lab, tok in zip(row["labels"], row["input_ids"])
               if tok == processor.image_token_id)


def test_a_sample_whose_image_does_not_fit_max_length_is_bad(processor):
    records, _ = load_records("shapes:train:2", stage="finetune", image_size=112)
    with pytest.raises(BadSample, match="positions do not fit in max_length 20"):
        encode_records(records, processor, template="vicuna_v1", max_length=20, skips=SkipCounter())


def test_batches_are_single_modality_deterministic_and_cover_everything():
    lengths = [5, 9, 3, 7, 8, 2, 6, 4, 1, 10]
    has_image = [True, False] * 5
    batches = modality_length_batches(lengths, has_image, 2, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len({has_image[i] for i in b}) == 1 for b in batches)
    assert batches == modality_length_batches(lengths, has_image, 2, seed=0, epoch=0)
    assert batches != modality_length_batches(lengths, has_image, 2, seed=0, epoch=1)


def test_collator_drops_an_unreadable_image_under_skip(folder, processor):
    data = _write(folder / "d.json", [{"id": "good", "image": "a.png", "conversations": _dialogue()},
                                      {"id": "bad", "image": "broken.jpg", "conversations": _dialogue()}])
    records, source = load_records(data, images=folder)
    encoded = encode_records(records, processor, template="vicuna_v1", max_length=512, skips=SkipCounter())
    rows = [encoded[0], encoded[1]]
    with pytest.raises(BadSample, match="id 'bad'.*unreadable image"):
        Collator(processor, records, source, "error")(rows)
    batch = Collator(processor, records, source, "skip")(rows)
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1
    assert len(batch["bad_samples"]) == 1 and "id 'bad'" in batch["bad_samples"][0]
