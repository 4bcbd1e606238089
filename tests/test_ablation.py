"""Image ablation in `sparsecut eval`: the same questions with deranged and with blank images, scored beside."""

import json

import pytest
import torch
from typer.testing import CliRunner

from sparsecut_cli.app import app
from sparsecut_core.evaluation.ablation import BLANK_GRAY, ablated, derangement
from sparsecut_core.evaluation.benchmarks import get_benchmark
from sparsecut_core.evaluation.results import compare_results
from sparsecut_core.evaluation.runner import EvalSettings, evaluate

runner = CliRunner()


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_a_derangement_moves_every_image_and_is_the_same_for_a_seed(n):
    order = derangement(n, seed=3)
    assert sorted(order) == list(range(n))
    assert all(order[k] != k for k in range(n))
    assert order == derangement(n, seed=3)


def test_a_single_image_cannot_be_deranged():
    with pytest.raises(ValueError, match="at least 2 questions with an image"):
        derangement(1)


def test_deranged_questions_see_another_questions_image_and_blank_ones_a_gray_image():
    samples = get_benchmark("shapes").load(limit=6).samples
    deranged = ablated(samples, "deranged")
    assert [s.text for s in deranged] == [s.text for s in samples]  # same questions, same order
    assert sorted(id(s.image) for s in deranged) == sorted(id(s.image) for s in samples)
    assert all(d.image is not s.image for d, s in zip(deranged, samples))
    for blank in ablated(samples, "blank"):
        assert blank.image().getcolors() == [(224 * 224, BLANK_GRAY)]


def pixels_per_question(model, monkeypatch):
    """The pixel_values the model is given, one [views, 3, H, W] tensor per question, in order."""
    seen, original = [], model.generate

    def generate(**kwargs):
        seen.extend(kwargs["pixel_values"].clone())
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return seen


def test_ablation_answers_each_question_with_another_image_and_a_blank_one_and_scores_all(tiny, tmp_path,
                                                                                            monkeypatch):
    model, processor, folder = tiny
    seen = pixels_per_question(model, monkeypatch)
    settings = EvalSettings(batch_size=2, max_new_tokens=2, limit=4, image_ablation=True)
    report = evaluate(model, processor, "shapes", out_dir=tmp_path, model_dir=folder, settings=settings)
    true, deranged, blank = seen[:4], seen[4:8], seen[8:]
    assert len(seen) == 12
    for k, pixels in enumerate(deranged):  # each question got one of the other questions' pictures
        matches = [j for j, t in enumerate(true) if torch.equal(pixels, t)]
        assert len(matches) == 1 and matches[0] != k
    assert all(torch.equal(b, blank[0]) for b in blank) and not torch.equal(blank[0], true[0])

    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("shapes", "shapes@deranged", "shapes@blank"):
        assert results[name]["n"] == 4 and 0 <= results[name]["accuracy"] <= 100
    assert set(report.ablations) == {"deranged", "blank"}
    assert len((tmp_path / "shapes" / "answers.deranged.jsonl").read_text().splitlines()) == 4
    rows = {(b, m) for b, m, _ in compare_results([tmp_path]).rows}
    assert {("shapes@deranged", "accuracy"), ("shapes@blank", "accuracy")} <= rows

    again = evaluate(model, processor, "shapes", out_dir=tmp_path, model_dir=folder, settings=settings)
    assert again.generated == 0 and len(seen) == 12  # every condition resumes from its own answers file


def test_cli_eval_image_ablation_prints_the_scores_beside_the_true_images(tiny, tmp_path):
    _, _, folder = tiny
    result = runner.invoke(app, ["eval", str(folder), "--benchmark", "shapes", "--limit", "3", "--max-new-tokens",
                                 "2", "--image-ablation", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "image ablation (accuracy)" in result.output
    assert "deranged" in result.output and "blank" in result.output
    result = runner.invoke(app, ["eval", str(folder), "--benchmark", "shapes", "--score-only", "--image-ablation",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 1 and "does not go with --score-only" in str(result.exception)
