"""`sparsecut eval` on the tiny random model: resume, score-only, batching, results, compare, bad samples."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from sparsecut_cli.app import app
from sparsecut_core.evaluation.results import RunInfo, write_results
from sparsecut_core.evaluation.runner import EvalSettings, evaluate, score_only
from sparsecut_core.data.shapes import SHORT_ANSWER

runner = CliRunner()


def write_pope(root, labels, category="random"):
    """A POPE folder in LLaVA's layout: one question per label, each on its own tiny image."""
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    (root / "coco").mkdir(exist_ok=True)
    questions, label_rows = [], []
    for k, label in enumerate(labels):
        image = f"COCO_val2014_{k:012d}.jpg"
        Image.new("RGB", (16 + 4 * k, 16), (40 * k % 255, 90, 200)).save(root / "val2014" / image)
        text = f"Is there a {['cat', 'dog', 'red circle', 'blue square', 'tree', 'car'][k % 6]} in the image?"
        questions.append({"question_id": k + 1, "image": image, "text": f"{text}\n{SHORT_ANSWER}",
                          "category": category})
        label_rows.append({"question_id": k + 1, "image": image, "text": text, "label": label})
    (root / "llava_pope_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (root / "coco" / f"coco_pope_{category}.json").write_text("".join(json.dumps(r) + "\n" for r in label_rows))
    return questions


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def counting_generate(model, monkeypatch):
    """Record the question count of every generate call."""
    calls, original = [], model.generate

    def generate(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return calls


def test_rerun_after_a_killed_run_asks_only_the_unanswered_questions(tiny, tmp_path, monkeypatch):
    model, processor, folder = tiny
    write_pope(tmp_path / "pope", ["yes", "no", "yes", "no", "yes"])
    calls = counting_generate(model, monkeypatch)
    out = tmp_path / "eval"
    settings = EvalSettings(batch_size=2, max_new_tokens=3)
    first = evaluate(model, processor, "pope", data=tmp_path / "pope", out_dir=out, model_dir=folder,
                     settings=EvalSettings(batch_size=2, max_new_tokens=3, limit=3))
    assert (first.generated, calls) == (3, [2, 1])
    answers = out / "pope" / "answers.jsonl"
    with open(answers, "a") as file:  # killed in the middle of writing question 4's answer
        file.write('{"question_id": 4, "prompt": "Is th')
    calls.clear()
    second = evaluate(model, processor, "pope", data=tmp_path / "pope", out_dir=out, model_dir=folder,
                      settings=settings)
    assert (second.generated, second.reused, calls) == (2, 3, [2])
    records = read_records(answers)
    assert [r["question_id"] for r in records] == [1, 2, 3, 4, 5]
    assert set(records[0]) >= {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert records[0]["model_id"] == folder.name and records[0]["metadata"]["category"] == "random"
    assert second.metrics["n"] == 5 and "random/f1" in second.metrics


def test_score_only_scores_a_llava_answer_file_as_computed_by_hand(tmp_path):
    questions = write_pope(tmp_path / "pope", ["yes", "yes", "yes", "no"])
    texts = ["Yes, there is a cat.", "yes", "No, there is not.", "Yes"]  # TP 2, FN 1, FP 1, TN 0
    answers = tmp_path / "llava-v1.5-13b.jsonl"
    answers.write_text("".join(
        json.dumps({"question_id": q["question_id"], "prompt": q["text"], "text": t, "answer_id": "x",
                    "model_id": "llava-v1.5-13b", "metadata": {}}) + "\n" for q, t in zip(questions, texts)))
    report = score_only("pope", data=tmp_path / "pope", answers_path=answers, out_dir=tmp_path / "out")
    assert report.metrics["random/accuracy"] == pytest.approx(50.0)
    assert report.metrics["random/precision"] == pytest.approx(200 / 3)
    assert report.metrics["random/recall"] == pytest.approx(200 / 3)
    assert report.metrics["random/yes_ratio"] == pytest.approx(75.0)
    assert report.metrics["f1"] == pytest.approx(200 / 3)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["model_id"] == "llava-v1.5-13b" and results["pope"]["n"] == 4


def test_score_only_reports_missing_answers_and_a_bad_answer_line(tmp_path):
    questions = write_pope(tmp_path / "pope", ["yes", "no", "no"])
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "prompt": "another wording", "text": "Yes"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=f"{answers}: line 2: not valid JSON"):
        score_only("pope", data=tmp_path / "pope", answers_path=answers, out_dir=tmp_path / "out")
    report = score_only("pope", data=tmp_path / "pope", answers_path=answers, out_dir=tmp_path / "out",
                        settings=EvalSettings(on_bad_sample="skip"))
    # question 1 matched on its id alone (its prompt differs); 2 and 3 have no answer
    assert (report.metrics["n"], report.metrics["missing"], report.metrics["skipped"]) == (1, 2, 1)
    assert report.metrics["random/accuracy"] == 100.0 and questions[0]["question_id"] == 1


def test_batched_left_padded_generation_gives_the_answers_of_batch_size_one(tiny, tmp_path):
    model, processor, folder = tiny
    root = tmp_path / "sqa"
    (root / "images" / "test" / "1").mkdir(parents=True)
    Image.new("RGB", (30, 20), (200, 40, 40)).save(root / "images" / "test" / "1" / "image.png")
    questions = [  # prompts of different lengths, one without an image
        ("1", "Context: N/A\nQuestion: Which colour is the shape?\nOptions: (A) red (B) blue\n<image>"),
        ("2", "Question: Is two more than one?\nOptions: (A) yes (B) no"),
        ("3", "Question: Shape?\nOptions: (A) circle (B) square (C) triangle"),
    ]
    entries = [{"id": pid, **({} if pid == "2" else {"image": "1/image.png"}),
                "conversations": [{"from": "human", "value": value}]} for pid, value in questions]
    (root / "llava_test_CQM-A.json").write_text(json.dumps(entries))
    runs = {}
    for batch_size in (3, 1):
        out = tmp_path / f"b{batch_size}"
        evaluate(model, processor, "scienceqa", data=root, out_dir=out, model_dir=folder,
                 settings=EvalSettings(batch_size=batch_size, max_new_tokens=6))
        runs[batch_size] = {r["question_id"]: r["text"] for r in read_records(out / "scienceqa" / "answers.jsonl")}
    assert runs[3] == runs[1] and len(runs[1]) == 3


def test_results_merge_benchmarks_and_refuse_results_of_another_model(tiny, tmp_path):
    model, processor, folder = tiny
    write_pope(tmp_path / "pope", ["yes", "no"])
    settings = EvalSettings(max_new_tokens=2)
    evaluate(model, processor, "shapes", out_dir=tmp_path, model_dir=folder,
             settings=EvalSettings(limit=2, max_new_tokens=2))
    evaluate(model, processor, "pope", data=tmp_path / "pope", out_dir=tmp_path, model_dir=folder, settings=settings)
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"shapes", "pope", "model_id", "pattern", "config_hash", "date"} <= set(results)
    assert results["pattern"] == "sparse-uniform" and results["shapes"]["n"] == 2
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind
    with pytest.raises(ValueError, match="holds results of another model"):
        write_results(tmp_path / "results.json", "gqa", {"accuracy": 1.0}, RunInfo("other", None, "0123456789ab"))


def test_missing_image_stops_naming_file_and_line_or_is_skipped_and_counted(tiny, tmp_path):
    model, processor, folder = tiny
    write_pope(tmp_path / "pope", ["yes", "no", "yes"])
    (tmp_path / "pope" / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(ValueError, match=r"llava_pope_test.jsonl: line 2: image .*000000000001.jpg not found"):
        evaluate(model, processor, "pope", data=tmp_path / "pope", out_dir=tmp_path / "out", model_dir=folder)
    report = evaluate(model, processor, "pope", data=tmp_path / "pope", out_dir=tmp_path / "out", model_dir=folder,
                      settings=EvalSettings(on_bad_sample="skip", max_new_tokens=2))
    assert report.metrics["skipped"] == 1 and report.metrics["n"] == 2 and report.generated == 2
    assert "line 2" in report.skipped[0]


def test_cli_eval_model_dir_runs_the_benchmark_and_compare_tabulates_and_plots(tiny, tmp_path):
    _, _, folder = tiny
    out = tmp_path / "run_a"
    result = runner.invoke(app, ["eval", str(folder), "--benchmark", "shapes", "--limit", "2",
                                 "--max-new-tokens", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and (out / "shapes" / "answers.jsonl").is_file()
    result = runner.invoke(app, ["eval", str(folder), "--benchmark", "shapes", "--limit", "2", "--score-only",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    run_b = tmp_path / "run_b"
    run_b.mkdir()
    (run_b / "results.json").write_text(json.dumps(
        {"model_id": "b", "shapes": {"accuracy": 42.5, "n": 2}, "pope": {"f1": 80.0, "accuracy": 75.0}}))
    result = runner.invoke(app, ["eval", "compare", str(out), str(run_b), "--plot", str(tmp_path / "cmp.png")])
    assert result.exit_code == 0, result.output
    assert "run_a" in result.output and "run_b" in result.output and "42.50" in result.output
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch):
    import sys

    from sparsecut_core.evaluation.results import Comparison, plot_comparison

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"pip install 'sparsecut\[plot\]'"):
        plot_comparison(Comparison(["a"], [("pope", "f1", [80.0])]), tmp_path / "x.png")


@pytest.fixture(scope="module")
def tiny_seed_1(tmp_path_factory):
    """(model, processor, saved folder) of the tiny preset built with another seed: same config, other weights."""
    from sparsecut_core.presets.build import build_from_preset
    from sparsecut_core.presets.preset import load_preset

    model, processor = build_from_preset(load_preset("tiny"), seed=1)
    folder = tmp_path_factory.mktemp("tiny_seed_1")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor, folder


def test_answers_of_one_model_are_never_scored_as_another_models(tiny, tiny_seed_1, tmp_path):
    (model_a, processor_a, folder_a), (model_b, processor_b, folder_b) = tiny, tiny_seed_1
    settings = EvalSettings(limit=2, max_new_tokens=2)
    evaluate(model_a, processor_a, "shapes", out_dir=tmp_path, model_dir=folder_a, settings=settings)
    with pytest.raises(ValueError, match=r"results\.json holds results of another model \(weights id .*"
                                         r"delete .* to start fresh"):
        evaluate(model_b, processor_b, "shapes", out_dir=tmp_path, model_dir=folder_b, settings=settings)
    (tmp_path / "results.json").unlink()  # as if model A's run was killed before it scored its answers
    with pytest.raises(ValueError, match=r"answers\.jsonl holds answers of another model .*start fresh"):
        evaluate(model_b, processor_b, "shapes", out_dir=tmp_path, model_dir=folder_b, settings=settings)
    with pytest.raises(ValueError, match=r"answers\.jsonl holds answers of another model"):
        score_only("shapes", out_dir=tmp_path, model_dir=folder_b, settings=settings)
    report = evaluate(model_b, processor_b, "shapes", out_dir=tmp_path / "b", model_dir=folder_b, settings=settings)
    assert report.generated == 2
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    ids = [json.loads((f / "weights_id.json").read_text())["weights_id"] for f in (folder_a, folder_b)]
    assert results["weights_id"] == ids[1] != ids[0]


def test_changing_max_new_tokens_asks_again_says_why_and_results_record_the_settings(tiny, tmp_path):
    _, _, folder = tiny
    out = tmp_path / "out"
    command = ["eval", str(folder), "--benchmark", "shapes", "--limit", "3", "--out", str(out)]
    result = runner.invoke(app, [*command, "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*command, "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "0 new, 0 reused, 3 recomputed because the generation settings changed" in " ".join(result.output.split())
    records = read_records(out / "shapes" / "answers.jsonl")
    assert [r["key"]["generation"]["max_new_tokens"] for r in records] == [2, 2, 2, 4, 4, 4]
    results = json.loads((out / "results.json").read_text())
    assert results["shapes"]["generation"]["max_new_tokens"] == 4 and results["shapes"]["n"] == 3
    assert results["weights_id"] == records[-1]["key"]["weights_id"]
    result = runner.invoke(app, [*command, "--max-new-tokens", "2"])  # back to the first settings: their answers
    assert "0 new, 3 reused" in result.output, result.output


def test_rerun_of_the_reloaded_model_reuses_every_answer_and_a_changed_image_is_asked_again(tiny, tmp_path,
                                                                                            monkeypatch):
    from sparsecut_core.inference.loading import load_pretrained

    model, processor, folder = tiny
    write_pope(tmp_path / "pope", ["yes", "no", "yes"])
    settings = EvalSettings(max_new_tokens=2)
    evaluate(model, processor, "pope", data=tmp_path / "pope", out_dir=tmp_path / "out", model_dir=folder,
             settings=settings)
    loaded, loaded_processor = load_pretrained(folder)
    calls = counting_generate(loaded, monkeypatch)
    again = evaluate(loaded, loaded_processor, "pope", data=tmp_path / "pope", out_dir=tmp_path / "out",
                     model_dir=folder, settings=settings)
    assert (again.generated, again.reused, again.recomputed, calls) == (0, 3, {}, [])
    Image.new("RGB", (16, 16), (0, 0, 0)).save(tmp_path / "pope" / "val2014" / "COCO_val2014_000000000001.jpg")
    changed = evaluate(loaded, loaded_processor, "pope", data=tmp_path / "pope", out_dir=tmp_path / "out",
                       model_dir=folder, settings=settings)
    assert (changed.generated, changed.reused) == (1, 2)
    assert changed.recomputed == {"the prompt, image or processor changed": 1}


def test_answers_written_without_keys_are_asked_again_not_scored(tiny, tmp_path):
    model, processor, folder = tiny
    questions = write_pope(tmp_path / "pope", ["yes", "no"])
    answers = tmp_path / "out" / "pope" / "answers.jsonl"
    answers.parent.mkdir(parents=True)
    answers.write_text("".join(  # an older sparsecut's lines: no key, so no telling which model wrote them
        json.dumps({"question_id": q["question_id"], "prompt": q["text"], "text": "an old answer",
                    "answer_id": "x", "model_id": folder.name, "metadata": {}}) + "\n" for q in questions))
    report = evaluate(model, processor, "pope", data=tmp_path / "pope", out_dir=tmp_path / "out", model_dir=folder,
                      settings=EvalSettings(max_new_tokens=2))
    assert (report.generated, report.reused) == (2, 0)
    assert report.recomputed == {"written without a key by an older sparsecut": 2}
    assert all(r["key"] is not None for r in read_records(answers)[2:])
    with open(answers, "a") as file:  # an old line is now the latest answer to question 1: scoring would mix
        file.write(json.dumps({"question_id": 1, "prompt": questions[0]["text"], "text": "old"}) + "\n")
    with pytest.raises(ValueError, match=r"answers\.jsonl mixes answers .* without keys"):
        score_only("pope", data=tmp_path / "pope", out_dir=tmp_path / "out", model_dir=folder)


def test_weights_id_is_written_at_save_recomputed_without_it_and_never_trusted_for_changed_weights(tiny,
                                                                                               tiny_seed_1,
                                                                                               tmp_path):
    import shutil

    from sparsecut_core.model.fingerprint import WEIGHTS_ID_FILE, weights_id

    (_, _, folder_a), (_, _, folder_b) = tiny, tiny_seed_1
    saved = {f: json.loads((f / WEIGHTS_ID_FILE).read_text())["weights_id"] for f in (folder_a, folder_b)}
    other_tool = tmp_path / "other"  # a folder saved without the id file: hashed, the same id
    shutil.copytree(folder_a, other_tool)
    (other_tool / WEIGHTS_ID_FILE).unlink()
    assert weights_id(other_tool) == saved[folder_a]
    swapped = tmp_path / "swapped"  # A's id file beside B's weights: the stale file is not trusted
    shutil.copytree(folder_a, swapped)
    shutil.copyfile(folder_b / "model.safetensors", swapped / "model.safetensors")
    assert weights_id(swapped) == saved[folder_b] != saved[folder_a]
