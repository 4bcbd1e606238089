"""The sweep plan (which variants a `sparsecut sweep` trains, their folders, which share features) and its table."""

from __future__ import annotations

import pytest

from sparsecut_core.model.patterns import PATTERN_NAMES, build_pattern, random_pattern
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.sweep.plan import feature_groups, parse_patterns, plan_for_preset, plan_sweep, variant_preset
from sparsecut_core.sweep.table import VariantScores, grounding_note, markdown_table, summarise

L_V, L_T = 12, 8  # tiny-dinov2's depths


def test_every_combination_once_with_fixed_count_patterns_not_repeated_per_count():
    variants = plan_sweep(["llava", "sparse-uniform"], [False, True], [2, 4], [0, 1], L_V, L_T)
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    # llava: 2 hi-res x 2 seeds; sparse-uniform: 2 hi-res x 2 counts x 2 seeds
    assert len(variants) == 4 + 8
    assert {v.num_shortcuts for v in variants if v.pattern == "llava"} == {None}
    assert "sparse-uniform-n4-hires-on-seed1" in names


def test_seeds_outermost_so_a_cut_short_sweep_covers_every_pattern_first():
    variants = plan_sweep(list(PATTERN_NAMES), [False], [2], [0, 1], L_V, 16)  # dense needs L_t >= L_v
    first = variants[: len(PATTERN_NAMES)]
    assert {v.seed for v in first} == {0}
    assert {v.pattern for v in first} == set(PATTERN_NAMES)


def test_pairs_match_the_named_patterns():
    (variant,) = plan_sweep(["sparse-reverse-uniform"], [False], [3], [0], L_V, L_T)
    assert list(variant.pairs) == build_pattern("sparse-reverse-uniform", L_V, L_T, 3)


def test_random_order_is_a_seeded_bijection_of_the_sparse_uniform_ends():
    uniform = build_pattern("sparse-uniform", L_V, L_T, 4)
    draws = {tuple(random_pattern(L_V, L_T, 4, seed)) for seed in range(6)}
    for pairs in draws:
        assert sorted(i for i, _ in pairs) == sorted(i for i, _ in uniform)
        assert sorted(j for _, j in pairs) == sorted(j for _, j in uniform)
    assert len(draws) > 1  # the seed changes the order
    assert random_pattern(L_V, L_T, 4, 3) == random_pattern(L_V, L_T, 4, 3)


def test_explicit_pairs_are_checked_against_the_depths():
    (variant,) = plan_sweep(["pairs:11>1/5>7"], [False], [8], [0], L_V, L_T)
    assert list(variant.pairs) == [(11, 1), (5, 7)]
    assert variant.num_shortcuts is None and variant.name == "pairs-11x1-5x7-hires-off-seed0"
    with pytest.raises(ValueError, match=r"pairs:13>1.*ViT layer 13 is out of range"):
        plan_sweep(["pairs:13>1"], [False], [2], [0], L_V, L_T)


def test_a_pattern_that_does_not_fit_fails_before_anything_trains():
    with pytest.raises(ValueError, match="sparse-uniform.*need at least 9 LLM layers"):
        plan_sweep(["llava", "sparse-uniform"], [False], [9], [0], L_V, L_T)
    with pytest.raises(ValueError, match="dense-bottom.*12 shortcuts need at least 12 LLM layers"):
        plan_sweep(["dense-bottom"], [False], [], [0], L_V, L_T)


@pytest.mark.parametrize("text", ["", "llava,llava", "sparse-middle", "pairs:1-2"])
def test_bad_pattern_lists_are_refused_with_the_reason(text):
    with pytest.raises(ValueError, match="pattern"):
        parse_patterns(text)


def test_parse_keeps_order_and_accepts_random_and_pairs():
    assert parse_patterns("llava, random,pairs:11>1/7>5") == ["llava", "random", "pairs:11>1/7>5"]


def test_variants_with_the_same_views_share_one_feature_pass_over_the_union_of_their_layers():
    variants = plan_sweep(["llava", "sparse-uniform", "sparse-top"], [False, True], [3], [0, 1], L_V, L_T)
    groups = feature_groups(variants)
    assert [g.hi_res for g in groups] == [False, True]
    for group in groups:
        members = [v for v in variants if v.name in group.variants]
        assert len(members) == 6
        assert set(group.vit_layers) == {i for v in members for i in v.vit_layers}
        assert group.tower_passes_saved == 5


def test_a_variant_preset_builds_the_model_with_the_variant_pairs_hi_res_and_seed():
    preset = load_preset("tiny")
    variants = plan_for_preset(preset, ["random", "sparse-bottom"], [False, True], [2], [3])
    for variant in variants:
        child = variant_preset(preset, variant)
        config = child.sparsecut_config()
        assert config.shortcuts == list(variant.pairs)
        assert config.hi_res is variant.hi_res
        assert all(settings["seed"] == 3 for settings in child.train.values())
        assert child.train.keys() == preset.train.keys()
    assert preset.sparsecut_config().pattern == load_preset("tiny").sparsecut["pattern"]  # the preset is untouched



def test_the_default_sweep_trains_seven_different_models_whose_features_fit_the_cache():
    """Over the sweep preset's depths every pattern of the paper's Table 3 is its own set of pairs (with as many
    LLM layers as ViT layers, dense-uniform would be dense-bottom), and all twelve layers of every image at
    every view fit the sweep's feature cache."""
    from sparsecut_cli.sweep import ALL_PATTERNS

    from sparsecut_core.data.shapes import shapes_split_size
    from sparsecut_core.sweep.runner import FEATURE_DTYPE, MAX_CACHE_BYTES

    preset = load_preset("sweep-dinov2")
    variants = plan_for_preset(preset, parse_patterns(ALL_PATTERNS), [False, True], [None], [0])
    assert len({v.pairs for v in variants if not v.hi_res}) == 7
    config = preset.sparsecut_config()
    layers = {i for v in variants for i in v.vit_layers}
    # the finetuning images (pretraining's are among them) and the test split's
    images = int(preset.train["finetune"]["data"].rsplit(":", 1)[1]) + shapes_split_size("test")
    width = config.vision_config.hidden_size
    per_image = len(layers) * config.num_image_tokens * width * FEATURE_DTYPE.itemsize * (1 + 5)  # off + on views
    assert images * per_image < MAX_CACHE_BYTES


# --- the table (sweep/table.py) ---


def _scores(pattern, seed, true, deranged, hi_res=False, n=None, colour=None, questions=None):
    kinds = {"accuracy/colour": true if colour is None else colour, "accuracy/count": true}
    counted = {} if questions is None else {"n": questions}
    return VariantScores(pattern, hi_res, n, seed, {"accuracy": true, **kinds, **counted}, {"accuracy": deranged})


def test_rows_pool_seeds_with_their_spread_and_the_difference_to_llava_at_the_same_hi_res():
    rows = summarise([
        _scores("llava", 0, 30.0, 20.0), _scores("llava", 1, 34.0, 22.0),
        _scores("sparse-uniform", 0, 40.0, 21.0, n=4), _scores("sparse-uniform", 1, 36.0, 19.0, n=4),
        _scores("sparse-uniform", 0, 50.0, 20.0, n=4, hi_res=True),
    ])
    assert [(r.pattern, r.hi_res, r.seeds) for r in rows] == [
        ("llava", False, 2), ("sparse-uniform", False, 2), ("sparse-uniform", True, 1)]
    su = rows[1]
    assert su.true.mean == 38.0 and abs(su.true.std - 2.8284) < 1e-3
    assert su.vs_baseline == 6.0  # 38 - 32
    assert rows[2].vs_baseline is None  # no llava with hi-res on in this sweep
    assert rows[2].true.std is None


def test_markdown_table_shows_spread_gap_and_kinds():
    table = markdown_table(summarise([
        _scores("llava", 0, 30.0, 20.0, colour=25.0), _scores("llava", 1, 34.0, 22.0, colour=27.0),
        _scores("sparse-top", 0, 20.0, 20.0, n=2),
    ]))
    lines = table.splitlines()
    assert lines[0].split(" | ")[-2:] == ["colour", "count |"]
    assert "| llava |  | off | 2 | 32.0 ± 2.8 | 21.0 ± 1.4 | +11.0 | +0.0 | 26.0 ± 1.4 | 32.0 ± 2.8 |" in lines
    assert "| sparse-top | 2 | off | 1 | 20.0 | 20.0 | +0.0 | -12.0 | 20.0 | 20.0 |" in lines


def test_settings_whose_true_images_do_not_beat_deranged_ones_beyond_two_standard_errors_are_named():
    # 500 questions at 20%: two standard errors are 3.6 points
    rows = summarise([
        _scores("llava", 0, 30.0, 20.0, questions=500),
        _scores("sparse-top", 0, 23.0, 20.0, n=2, questions=500),
    ])
    assert round(rows[1].noise, 2) == 3.58
    assert rows[0].reads_image and not rows[1].reads_image
    note = grounding_note(rows)
    assert note.startswith("1 of 2 settings (sparse-top n=2 hi-res off) does not beat its deranged images") and "3.6 points" in note
    assert grounding_note(rows[:1]) is None
    assert grounding_note(rows[1:]).startswith("No setting beats")
    assert summarise([_scores("llava", 0, 30.0, 20.0)])[0].reads_image is None  # no question count: no verdict
