import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecut_core.model.patterns import PATTERN_NAMES, build_pattern, resolve_pattern


def test_sparse_uniform_matches_paper_default_for_vicuna7b():
    assert build_pattern("sparse-uniform", 24, 32, 8) == [
        (23, 1), (20, 5), (17, 9), (14, 13), (11, 17), (8, 21), (5, 25), (2, 29)
    ]


def test_sparse_uniform_uses_stride_5_for_vicuna13b():
    assert [j for _, j in build_pattern("sparse-uniform", 24, 40, 8)] == [1, 6, 11, 16, 21, 26, 31, 36]


def test_llava_pattern_is_penultimate_vit_layer_into_first_llm_layer():
    assert build_pattern("llava", 24, 32) == [(23, 1)]


def test_reverse_uniform_aligns_deep_with_deep():
    assert build_pattern("sparse-reverse-uniform", 24, 32, 8) == [
        (2, 1), (5, 5), (8, 9), (11, 13), (14, 17), (17, 21), (20, 25), (23, 29)
    ]


def test_bottom_and_top_use_consecutive_llm_layers():
    assert [j for _, j in build_pattern("sparse-bottom", 24, 32, 8)] == list(range(1, 9))
    assert [j for _, j in build_pattern("sparse-top", 24, 32, 8)] == list(range(25, 33))


def test_dense_patterns_use_every_vit_layer():
    for name in ("dense-uniform", "dense-bottom"):
        pairs = build_pattern(name, 24, 32)
        assert sorted(i for i, _ in pairs) == list(range(1, 25))
    assert [j for _, j in build_pattern("dense-bottom", 24, 32)] == list(range(1, 25))


def _is_u_shape(pairs):
    return all((i1 > i2) == (j1 < j2) for i1, j1 in pairs for i2, j2 in pairs if (i1, j1) != (i2, j2))


def _is_aligned(pairs):
    return all((i1 > i2) == (j1 > j2) for i1, j1 in pairs for i2, j2 in pairs if (i1, j1) != (i2, j2))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATTERN_NAMES), st.integers(2, 48), st.integers(1, 64), st.integers(1, 16))
def test_generated_patterns_are_valid_and_ordered(name, num_vit, num_llm, n):
    try:
        pairs = build_pattern(name, num_vit, num_llm, None if name.startswith("dense") or name == "llava" else n)
    except ValueError:
        return  # too many shortcuts for these depths: a clear error is the contract
    assert resolve_pattern(pairs, num_vit, num_llm) == pairs  # in range, no duplicates
    expected = {"llava": 1}.get(name, num_vit if name.startswith("dense") else n)
    assert len(pairs) == expected
    assert len({i for i, _ in pairs}) == len(pairs) and len({j for _, j in pairs}) == len(pairs)
    if name == "sparse-reverse-uniform":
        assert _is_aligned(pairs)
    else:
        assert _is_u_shape(pairs)


@pytest.mark.parametrize(
    "pattern, message",
    [
        ([], "empty"),
        ([(25, 1)], "ViT layer 25 is out of range"),
        ([(0, 1)], "ViT layer 0 is out of range"),
        ([(23, 33)], "LLM layer 33 is out of range"),
        ([(23, 1), (23, 1)], "appears twice"),
        ("sparse-wide", "unknown pattern"),
    ],
)
def test_invalid_patterns_raise_clear_errors(pattern, message):
    with pytest.raises(ValueError, match=message):
        resolve_pattern(pattern, 24, 32, 8)


def test_too_many_shortcuts_for_the_llm_is_an_error():
    with pytest.raises(ValueError, match="need at least 40 LLM layers"):
        build_pattern("sparse-uniform", 48, 32, 40)
