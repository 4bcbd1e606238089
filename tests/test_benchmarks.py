"""Benchmark readers on small datasets written here in LLaVA-1.5's eval layout (and as Hugging Face datasets)."""

import base64
import io
import json

import pytest
from PIL import Image

from sparsecut_core.evaluation.benchmarks import get_benchmark
from sparsecut_core.evaluation.benchmarks.base import LETTER_ANSWER
from sparsecut_core.evaluation.benchmarks.mmbench import CIRCULAR_ID_STEP, LETTER_ANSWER_CN
from sparsecut_core.data.shapes import SHORT_ANSWER, UNANSWERABLE_HINT


def png(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 14), colour).save(path)
    return path


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def score(name, samples, predictions):
    return get_benchmark(name).score(samples, predictions)


# ---- short-answer VQA ------------------------------------------------------------------------


def test_vqav2_keeps_llava_text_and_scores_with_vqa_accuracy_from_val_annotations(tmp_path):
    write_jsonl(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        {"question_id": 11, "image": "a.jpg", "text": f"How many dogs?\n{SHORT_ANSWER}", "category": "default"},
        {"question_id": 12, "image": "b.jpg", "text": "Is it sunny?", "category": "default"},
    ])
    png(tmp_path / "test2015" / "a.jpg"), png(tmp_path / "test2015" / "b.jpg")
    write_json(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 11, "answers": [{"answer": "2"}] * 10},
        {"question_id": 12, "answers": [{"answer": "yes"}] * 2 + [{"answer": "no"}] * 8},
    ]})
    loaded = get_benchmark("vqav2").load(tmp_path)
    first, second = loaded.samples
    assert first.text == first.prompt == f"How many dogs?\n{SHORT_ANSWER}"  # already instructed: unchanged
    assert second.text == f"Is it sunny?\n{SHORT_ANSWER}" and second.prompt == "Is it sunny?"
    assert first.image == tmp_path / "test2015" / "a.jpg" and first.problem is None
    # "Two" normalises to "2": 100; "yes" with 2 of 10 annotators: (2 * 1/3 + 8 * 2/3) / 10 = 60
    assert score("vqav2", loaded.samples, ["Two", "yes"]) == {"accuracy": pytest.approx(80.0), "n": 2}


def test_vqav2_test_dev_has_no_local_score_but_an_evalai_submission_of_every_test_question(tmp_path):
    write_jsonl(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        {"question_id": 1, "image": "a.jpg", "text": "What colour?"}])
    write_jsonl(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", [
        {"question_id": 1, "image": "a.jpg", "text": "What colour?"},
        {"question_id": 2, "image": "c.jpg", "text": "?"}])
    png(tmp_path / "test2015" / "a.jpg")
    bench = get_benchmark("vqav2")
    samples = bench.load(tmp_path).samples
    assert bench.score(samples, ["Red."]) == {"answered": 1}
    name, payload = bench.submission(samples, ["Red."], tmp_path)
    assert payload == [{"question_id": 1, "answer": "red"}, {"question_id": 2, "answer": ""}]


def test_gqa_scores_exact_match_against_testdev_balanced_questions(tmp_path):
    write_jsonl(tmp_path / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "201", "image": "n1.jpg", "text": f"Is the cup red?\n{SHORT_ANSWER}"},
        {"question_id": "202", "image": "n1.jpg", "text": f"Which side?\n{SHORT_ANSWER}"},
    ])
    png(tmp_path / "data" / "images" / "n1.jpg")
    write_json(tmp_path / "data" / "testdev_balanced_questions.json",
               {"201": {"answer": "yes"}, "202": {"answer": "right"}})
    samples = get_benchmark("gqa").load(tmp_path).samples
    assert [s.target for s in samples] == ["yes", "right"]
    assert score("gqa", samples, ["Yes.", "left"]) == {"accuracy": 50.0, "n": 2}


def test_vizwiz_prompt_adds_the_unanswerable_instruction_and_scores_val_questions(tmp_path):
    write_jsonl(tmp_path / "llava_test.jsonl", [
        {"question_id": 0, "image": "VizWiz_val_0.jpg", "text": "What is this?"},
        {"question_id": 1, "image": "VizWiz_test_1.jpg",
         "text": f"What is that?\n{UNANSWERABLE_HINT}\n{SHORT_ANSWER}"},
    ])
    png(tmp_path / "test" / "VizWiz_val_0.jpg"), png(tmp_path / "test" / "VizWiz_test_1.jpg")
    write_json(tmp_path / "val.json", [{"image": "VizWiz_val_0.jpg", "answers": [{"answer": "unanswerable"}] * 10}])
    bench = get_benchmark("vizwiz")
    samples = bench.load(tmp_path).samples
    assert samples[0].text == f"What is this?\n{UNANSWERABLE_HINT}\n{SHORT_ANSWER}"
    assert samples[1].text == samples[1].prompt
    assert samples[1].target is None  # a test image: scored by the server only
    assert bench.score(samples, ["Unanswerable", "cat"]) == {"accuracy": 100.0, "n": 1}
    _, payload = bench.submission(samples, ["Unanswerable", "A cat."], tmp_path)
    assert payload[1] == {"image": "VizWiz_test_1.jpg", "answer": "cat"}


def test_textvqa_matches_annotations_on_image_id_and_the_question_inside_the_ocr_prompt(tmp_path):
    ocr = "Reference OCR token: DAKOTA, DIGITAL"
    write_jsonl(tmp_path / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a", "image": "003a.jpg", "text": f"What is the brand?\n{ocr}\n{SHORT_ANSWER}"},
        {"question_id": "003a", "image": "003a.jpg", "text": f"What does it say?\n{SHORT_ANSWER}"},
    ])
    png(tmp_path / "train_images" / "003a.jpg")
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"image_id": "003a", "question": "what does it say?", "answers": ["digital"] * 10},
        {"image_id": "003a", "question": "what is the brand?", "answers": ["dakota"] * 10},
    ]})
    samples = get_benchmark("textvqa").load(tmp_path).samples
    assert [s.target[0] for s in samples] == ["dakota", "digital"]
    assert score("textvqa", samples, ["Dakota", "kodak"]) == {"accuracy": 50.0, "n": 2}


# ---- POPE ------------------------------------------------------------------------------------


def write_pope(root, answers_by_category):
    """llava_pope_test.jsonl + coco/coco_pope_<category>.json labels + val2014 images."""
    questions, qid = [], 0
    for category, labels in answers_by_category.items():
        rows = []
        for k, label in enumerate(labels):
            qid += 1
            image = f"COCO_val2014_{qid:012d}.jpg"
            png(root / "val2014" / image)
            rows.append({"question_id": k + 1, "image": image, "text": f"Is there a cat {k}?", "label": label})
            questions.append({"question_id": qid, "image": image, "text": f"Is there a cat {k}?\n{SHORT_ANSWER}",
                              "category": category})
        write_jsonl(root / "coco" / f"coco_pope_{category}.json", rows)
    write_jsonl(root / "llava_pope_test.jsonl", questions)


def test_pope_pairs_labels_per_category_in_order_and_scores_each_setting(tmp_path):
    write_pope(tmp_path, {"adversarial": ["yes", "yes", "yes", "no"], "random": ["yes", "no"]})
    samples = get_benchmark("pope").load(tmp_path).samples
    assert [s.meta["category"] for s in samples] == ["adversarial"] * 4 + ["random"] * 2
    assert [s.target for s in samples] == ["yes", "yes", "yes", "no", "yes", "no"]
    got = score("pope", samples, ["Yes, there is.", "yes", "No, there is not.", "Yes", "Yes.", "There is no cat."])
    # adversarial: TP 2, FN 1, FP 1, TN 0
    assert got["adversarial/accuracy"] == pytest.approx(50.0)
    assert got["adversarial/precision"] == pytest.approx(200 / 3)
    assert got["adversarial/recall"] == pytest.approx(200 / 3)
    assert got["adversarial/f1"] == pytest.approx(200 / 3)
    assert got["adversarial/yes_ratio"] == pytest.approx(75.0)
    assert got["random/f1"] == pytest.approx(100.0)
    assert got["f1"] == pytest.approx((200 / 3 + 100) / 2) and got["n"] == 6


def test_pope_label_file_out_of_line_with_the_questions_is_an_error(tmp_path):
    write_pope(tmp_path, {"random": ["yes", "no"]})
    labels = (tmp_path / "coco" / "coco_pope_random.json").read_text().splitlines()
    (tmp_path / "coco" / "coco_pope_random.json").write_text("\n".join(reversed(labels)) + "\n")
    with pytest.raises(ValueError, match="coco_pope_random.json line 1"):
        get_benchmark("pope").load(tmp_path)


# ---- multiple choice ---------------------------------------------------------------------------


def test_scienceqa_reads_cqm_questions_with_and_without_image_and_reports_img_accuracy(tmp_path):
    write_json(tmp_path / "llava_test_CQM-A.json", [
        {"id": "4", "image": "4/image.png", "conversations": [
            {"from": "human", "value": "Context: N/A\nQuestion: Which is red?\nOptions: (A) sky (B) fire\n<image>"},
            {"from": "gpt", "value": "The answer is B."}]},
        {"id": "7", "conversations": [
            {"from": "human", "value": "Context: N/A\nQuestion: 2+2?\nOptions: (A) 3 (B) 4 (C) 5"},
            {"from": "gpt", "value": "The answer is B."}]},
    ])
    png(tmp_path / "images" / "test" / "4" / "image.png")
    write_json(tmp_path / "problems.json", {"4": {"answer": 1, "choices": ["sky", "fire"]},
                                            "7": {"answer": 1, "choices": ["3", "4", "5"]}})
    with_image, text_only = get_benchmark("scienceqa").load(tmp_path).samples
    question = "Context: N/A\nQuestion: Which is red?\nOptions: (A) sky (B) fire"
    assert with_image.prompt == f"<image>\n{question}\n{LETTER_ANSWER}"
    assert with_image.text == with_image.prompt.removeprefix("<image>\n")
    assert text_only.image is None and text_only.prompt == text_only.text
    assert with_image.target == {"answer": "B", "options": ["sky", "fire"]}
    # "B. fire" parses as B; "(B)" does not (eval_science_qa.py is strict)
    got = score("scienceqa", [with_image, text_only], ["B. fire", "(B)"])
    assert got == {"accuracy": 50.0, "img_accuracy": 100.0, "n": 2}


def png_b64(colour=(0, 90, 200)):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_mmbench_tsv(path, rows):
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    lines = ["\t".join(columns)] + ["\t".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_mmbench_rotates_options_and_counts_a_question_only_if_every_rotation_is_right(tmp_path):
    write_mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", [
        {"index": 3, "question": "What colour?", "hint": "A photo.", "A": "red", "B": "blue", "C": "green",
         "answer": "B", "category": "colour", "image": png_b64()},
        {"index": 5, "question": "Which animal?", "A": "cat", "B": "dog", "answer": "A", "image": png_b64()},
    ])
    samples = get_benchmark("mmbench").load(tmp_path).samples
    assert [s.question_id for s in samples] == [3, 3 + CIRCULAR_ID_STEP, 3 + 2 * CIRCULAR_ID_STEP, 5,
                                                5 + CIRCULAR_ID_STEP]
    # rotation 1 shows blue, green, red: the answer "blue" is now A
    assert samples[1].prompt == "A photo.\nWhat colour?\nA. blue\nB. green\nC. red"
    assert samples[1].text == f"{samples[1].prompt}\n{LETTER_ANSWER}"
    assert [s.target["answer"] for s in samples] == ["B", "A", "C", "A", "B"]
    assert samples[0].image().size == (12, 12)
    # question 3 right in every rotation; question 5 right in its first rotation only
    got = score("mmbench", samples, ["B", "A. blue", "blue", "A", "A"])
    assert got == {"accuracy": 50.0, "vanilla_accuracy": 100.0, "n": 5}


def test_mmbench_file_with_circular_copies_is_read_as_is_and_cn_asks_in_chinese(tmp_path):
    write_mmbench_tsv(tmp_path / "mmbench_dev_cn_20231003.tsv", [
        {"index": 5, "question": "哪个?", "A": "猫", "B": "狗", "answer": "A", "image": png_b64()},
        {"index": 5 + CIRCULAR_ID_STEP, "question": "哪个?", "A": "狗", "B": "猫", "answer": "B",
         "image": png_b64()},
    ])
    samples = get_benchmark("mmbench_cn").load(tmp_path).samples
    assert [s.question_id for s in samples] == [5, 5 + CIRCULAR_ID_STEP]
    assert [s.meta["group"] for s in samples] == [5, 5] and samples[1].text.endswith(LETTER_ANSWER_CN)
    assert score("mmbench_cn", samples, ["A", "B"])["accuracy"] == 100.0


def test_seed_keeps_image_questions_and_reads_choices_as_vlmevalkit(tmp_path):
    write_jsonl(tmp_path / "llava-seed-bench.jsonl", [
        {"question_id": "101", "image": "SEED-Bench-image/1.jpg",
         "text": f"How many?\nA. One\nB. Two\nC. Three\nD. Four\n{LETTER_ANSWER}"},
        {"question_id": "102", "image": "SEED-Bench-image/2.jpg", "text": "Which?\nA. a\nB. b\nC. c\nD. d"},
        {"question_id": "900", "image": "SEED-Bench-video-image/v.png", "text": "Video?"},
    ])
    png(tmp_path / "SEED-Bench-image" / "1.jpg"), png(tmp_path / "SEED-Bench-image" / "2.jpg")
    choices = {"choice_a": "x", "choice_b": "y", "choice_c": "z", "choice_d": "w"}
    write_json(tmp_path / "SEED-Bench.json", {"questions": [
        {"question_id": "101", "answer": "A", "data_type": "image", **choices},
        {"question_id": "102", "answer": "C", "data_type": "image", **choices},
        {"question_id": "900", "answer": "A", "data_type": "video", **choices},
    ]})
    samples = get_benchmark("seed").load(tmp_path).samples
    assert [s.question_id for s in samples] == ["101", "102"]
    assert samples[1].text.endswith(f"D. d\n{LETTER_ANSWER}")
    assert score("seed", samples, ["A", "C."]) == {"accuracy": 100.0, "n": 2}  # VLMEvalKit reads "C." as C
    assert score("seed", samples, ["B", "C."]) == {"accuracy": 50.0, "n": 2}


def test_shapes_is_the_synthetic_test_split_with_the_short_answer_suffix_scored_per_kind():
    samples = get_benchmark("shapes").load(None, limit=3).samples
    assert len(samples) == 3 and all(s.text.endswith(f"\n{SHORT_ANSWER}") for s in samples)
    assert samples[0].question_id == "shapes-test-000000"
    got = score("shapes", samples, [samples[0].target, samples[1].target.upper(), "nothing"])
    assert got["accuracy"] == pytest.approx(200 / 3)
    assert got[f"accuracy/{samples[2].meta['kind']}"] == 0.0


# ---- Hugging Face datasets ---------------------------------------------------------------------


def test_shapes_draws_its_scenes_at_the_size_training_draws_them_for_the_model(tiny):
    _, processor, _ = tiny
    bench = get_benchmark("shapes").drawn_for(processor)
    assert bench.load(None, limit=1).samples[0].image.size == (processor.full_view_size,) * 2 == (112, 112)
    assert get_benchmark("shapes").load(None, limit=1).samples[0].image.size == (224, 224)  # without a model


def test_pope_reads_a_saved_hugging_face_dataset_and_a_parquet_snapshot(tmp_path):
    import datasets

    rows = {"question_id": ["1", "2"], "question": ["Is there a cat?", "Is there a dog?"], "answer": ["yes", "no"],
            "category": ["random", "random"], "image": [Image.new("RGB", (9, 9)), Image.new("RGB", (9, 9), "red")]}
    features = datasets.Features({k: datasets.Value("string") for k in rows if k != "image"} |
                                 {"image": datasets.Image()})
    dataset = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "hub" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet"))
    for folder in ("saved", "hub"):
        samples = get_benchmark("pope").load(tmp_path / folder).samples
        assert [s.text for s in samples] == [f"Is there a cat?\n{SHORT_ANSWER}", f"Is there a dog?\n{SHORT_ANSWER}"]
        assert [s.target for s in samples] == ["yes", "no"]
        assert samples[1].image().getpixel((0, 0)) == (255, 0, 0)


def test_hugging_face_dataset_with_several_splits_needs_a_split(tmp_path):
    import datasets

    part = datasets.Dataset.from_dict({"question_id": ["1"], "question": ["q"], "answer": ["yes"], "category": ["r"]})
    datasets.DatasetDict({"train": part, "val": part}).save_to_disk(str(tmp_path))
    with pytest.raises(ValueError, match="several splits"):
        get_benchmark("pope").load(tmp_path)
    with pytest.raises(ValueError, match="no split 'dev'"):
        get_benchmark("pope").load(tmp_path, split="dev")


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_image_and_malformed_line_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "llava_gqa_testdev_balanced.jsonl"
    path.write_text(json.dumps({"question_id": "1", "image": "gone.jpg", "text": "q"}) + "\n{not json\n"
                    + json.dumps({"question_id": "3", "text": "no image field"}) + "\n")
    loaded = get_benchmark("gqa").load(tmp_path)
    assert loaded.samples[0].problem == f"{path}: line 1: image {tmp_path / 'gone.jpg'} not found"
    assert loaded.bad_records[0].startswith(f"{path}: line 2: not valid JSON")
    assert loaded.bad_records[1] == f"{path}: line 3: missing field 'image'"


def test_unknown_benchmark_and_missing_data_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'vqa'; choose one of vqav2"):
        get_benchmark("vqa")
    with pytest.raises(ValueError, match="give --data"):
        get_benchmark("gqa").load(None)
    with pytest.raises(ValueError, match="no llava_gqa_testdev_balanced.jsonl"):
        get_benchmark("gqa").load(tmp_path)
