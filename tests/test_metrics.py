"""Benchmark scorers. Expected values are worked out by hand from the official scripts
(LLaVA-1.5's m4c_evaluator.py / eval_pope.py / eval_science_qa.py / convert_gqa_for_eval.py /
convert_seed_for_submission.py, GQA's eval.py, VLMEvalKit's can_infer), not computed by this code."""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecut_core.evaluation.metrics import exact_match, gqa_match, mmbench_choice, mmbench_circular_correct, normalize_answer, parse_choice, pope_answer, pope_scores, seed_choice, vqa_accuracy

# ------------------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize(
    "text, expected",
    [
        ("two", "2"),
        ("Two", "2"),
        ("ONE", "1"),
        ("ten dogs", "10 dogs"),
        ("none", "0"),  # "none" is in the official number map
        ("1,000", "1000"),  # commas are deleted outright, so no "1 000"
        ("1, 2", "1 2"),
        ("3.5", "3.5"),  # a full stop before a digit stays
        ("3.5.", "3.5"),
        ("3.", "3"),
        (".5", ".5"),
        ("e.g.", "eg"),
        ("a dog", "dog"),
        ("The Dog.", "dog"),
        ("An apple a day", "apple day"),
        ("dont", "don't"),
        ("don't", "don't"),
        ("whats", "what's"),
        ("hes", "he's"),
        ("he's", "he 's"),  # "'s" is split off before anything else
        ("It's red.", "it 's red"),
        ("I'm", "i'm"),
        ("Im", "im"),  # the table's "Im" key never matches after lowercasing
        ("somebody'd", "somebodyd"),  # the official table's own oddity
        ("Yes.", "yes"),
        ("Yes!!", "yes"),
        ("What?", "what"),
        ("yes !", "yes"),
        ("  Yes  ", "yes"),
        ("yes\n", "yes"),
        ("red\tand\nwhite", "red and white"),
        ("Unanswerable", "unanswerable"),
    ],
)
def test_normalize_answer_matches_vqa_normalization(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("black/white", "black white"),  # inside a word: the mark becomes a space
        ("x-ray", "x ray"),
        ("5+3=8", "5 3 8"),
        ("(yes)", "yes"),
        ("@home", "home"),
        ("black / white", "black white"),  # touching a space somewhere: the mark is deleted
        ("5 + 3 = 8", "5 3 8"),
        ("t-shirt - red", "tshirt red"),  # ... everywhere, even inside words
        ("black/white /", "blackwhite"),
    ],
)
def test_punctuation_is_deleted_or_spaced_by_the_official_rule(text, expected):
    assert normalize_answer(text) == expected


def test_only_the_first_32_non_decimal_full_stops_are_removed():
    # The official code passes re.UNICODE (== 32) as re.sub's count.
    assert normalize_answer("a." * 40) == "a" * 32 + "a." * 8


def test_exact_match_compares_normalized_answers():
    assert exact_match("Two", "2")
    assert exact_match("a dog.", "Dog")
    assert exact_match("dont", "don't")
    assert not exact_match("dogs", "dog")
    assert not exact_match("3.5", "35")


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("2", ["two"] * 10, 1.0),
        ("dog", ["dog"] * 4 + ["cat"] * 6, 1.0),
        ("dog", ["dog"] * 3 + ["cat"] * 7, 0.9),  # 3 subsets with 2 matches (2/3), 7 with 3 (1)
        ("dog", ["dog"] * 2 + ["cat"] * 8, 0.6),
        ("dog", ["dog"] * 1 + ["cat"] * 9, 0.3),
        ("dog", ["cat"] * 10, 0.0),
        ("A dog.", ["dog"] * 3 + ["cats"] * 7, 0.9),  # the prediction is normalized
        ("yes", ["Yes."] * 10, 1.0),  # so is every ground-truth answer
        ("Unanswerable", ["unanswerable"] * 2 + ["blue"] * 8, 0.6),
    ],
)
def test_vqa_accuracy_averages_leave_one_out_subsets(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize("count", [0, 1, 9, 11])
def test_vqa_accuracy_needs_exactly_ten_answers(count):
    with pytest.raises(ValueError, match=f"expected 10 ground-truth answers, got {count}"):
        vqa_accuracy("dog", ["dog"] * count)


_ANSWER_POOL = ["dog", "a dog", "Dog.", "cat", "two", "2", "yes", "no"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_ANSWER_POOL), st.lists(st.sampled_from(_ANSWER_POOL), min_size=10, max_size=10))
def test_vqa_accuracy_depends_only_on_how_many_annotators_agree(prediction, answers):
    agreeing = sum(exact_match(prediction, answer) for answer in answers)
    expected = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}.get(agreeing, 1.0)
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)
    assert 0.0 <= vqa_accuracy(prediction, answers) <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable))
def test_normalized_answers_are_lowercase_single_spaced_without_articles_or_punctuation(text):
    out = normalize_answer(text)
    assert out == out.lower() and out == out.strip() and "  " not in out
    assert not set(out) & set(';/[]"{}()=+\\_-><@`,?!\n\t')
    assert not {"a", "an", "the"} & set(out.split())


# Without an "s" no contraction can produce "'s", and with at most 32 full stops all of them go.
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrtuvwxyz0123456789 .,'-/?!()\n", max_size=30))
def test_normalizing_twice_changes_nothing_without_s_contractions(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once


# ------------------------------------------------------------------------------------------ GQA


@pytest.mark.parametrize(
    "prediction, answer, expected",
    [
        ("yes", "yes", True),
        ("Yes.", "yes", True),  # trailing full stops go, then lowercase
        ("Left..", "left", True),
        ("T-shirt.", "t-shirt", True),
        ("the left", "left", False),  # no article removal
        ("two", "2", False),  # no number words
        (" left", "left", False),  # no whitespace stripping
        ("green. ", "green", False),
        ("yes", "Yes", False),  # the answer is compared as given
    ],
)
def test_gqa_match_is_rstrip_period_lowercase_exact(prediction, answer, expected):
    assert gqa_match(prediction, answer) is expected


# ------------------------------------------------------------------------------------------ POPE


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No.", "no"),
        ("No, there is not.", "no"),
        ("Yes, there is a dog.", "yes"),
        ("There is no dog.", "no"),
        ("I do not think so", "no"),
        ("not sure", "no"),
        ("Not sure", "yes"),  # "Not" is not one of "No"/"not"/"no"
        ("NO", "yes"),
        ("no!", "yes"),  # only commas are removed, so "no!" is not the word "no"
        ("Nope", "yes"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("Yes, no doubt.", "no"),
        ("No\nthere is", "yes"),  # words are split on single spaces only
        ("", "yes"),
    ],
)
def test_pope_answer_follows_eval_pope_word_rule(text, expected):
    assert pope_answer(text) == expected


def test_pope_scores_with_yes_as_positive_class():
    predictions = ["Yes", "No", "yes", "No, there is not.", "Yes"]
    labels = ["yes", "no", "no", "yes", "yes"]
    # TP = 2 (0, 4), FP = 1 (2), TN = 1 (1), FN = 1 (3)
    assert pope_scores(predictions, labels) == pytest.approx(
        {"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.6}
    )


def test_pope_scores_are_zero_where_the_script_would_divide_by_zero():
    # Never says yes: precision 0/0 and F1 0/0 -> 0.0.
    assert pope_scores(["No", "no."], ["yes", "no"]) == {
        "accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0,
    }  # fmt: skip
    # No "yes" label: recall 0/0 -> 0.0.
    assert pope_scores(["Yes", "No"], ["no", "no"]) == {
        "accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.5,
    }  # fmt: skip


def test_pope_scores_reject_bad_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope_scores(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="label 1 is 'Yes'"):
        pope_scores(["yes", "no"], ["no", "Yes"])
    with pytest.raises(ValueError, match="label 0 is 'maybe'"):
        pope_scores(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="no predictions"):
        pope_scores([], [])


# ------------------------------------------------------------------------------------------ ScienceQA


@pytest.mark.parametrize(
    "text, n_options, expected",
    [
        ("A", 4, "A"),
        ("B. the dog", 4, "B"),
        ("A. ", 4, "A"),
        ("B.  x", 4, "B"),
        ("The answer is C.", 4, "C"),
        ("The answer is B,", 4, "B"),  # the pattern's "." is any character
        ("I think The answer is D!", 4, "D"),
        ("The answer is B", 4, None),  # ... but one must follow the letter
        ("The answer is A. The answer is B.", 4, None),  # two matches
        ("The answer is b.", 4, None),
        ("(A)", 4, None),
        ("b", 4, None),
        ("Answer: B", 4, None),
        ("A.", 4, None),
        ("C.x", 4, None),
        (" A", 4, None),
        ("A\n", 4, None),
        ("E", 4, None),  # beyond the question's options
        ("E", 5, "E"),
        ("The answer is E.", 4, None),
        ("F", 6, None),  # the script only knows letters A-E
        ("A", 0, None),
    ],
)
def test_parse_choice_follows_eval_science_qa(text, n_options, expected):
    assert parse_choice(text, [f"option {k}" for k in range(n_options)]) == expected


# ------------------------------------------------------------------------------------------ MMBench

_OPTIONS = {"A": "cat", "B": "dog", "C": "red", "D": "apple"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C)", "C"),
        ("C: red", "C"),
        ("Answer: D", "D"),
        ("The answer is B.", "B"),
        ("The answer is **C**", "C"),
        ("dog", "B"),  # no letter: the single option text found in the answer
        ("I think it is a dog", "B"),  # lowercase "a" is not option A
        ("the correct answer is apple", "A"),  # VLMEvalKit's "answer is X" regex is case-blind
        ("A B", None),  # two letters
        ("red apple", None),  # two option texts
        ("B is the answer because the picture clearly shows a dog", None),  # letter too early, text too long
        ("Cannot determine the answer", None),  # VLMEvalKit's "Z"
        ("Z", None),
        ("a", None),
    ],
)
def test_mmbench_choice_follows_vlmevalkit_can_infer(text, expected):
    assert mmbench_choice(text, dict(_OPTIONS)) == expected


def test_mmbench_choice_needs_a_unique_option_text():
    assert mmbench_choice("the cat", {"A": "cat", "B": "the cat"}) is None


def test_mmbench_choice_rejects_bad_options():
    with pytest.raises(ValueError, match="options is empty"):
        mmbench_choice("A", {})
    with pytest.raises(ValueError, match="option key 'AB'"):
        mmbench_choice("A", {"AB": "cat"})


def test_mmbench_circular_needs_every_rotation_right():
    assert mmbench_circular_correct(["A", "B", "C", "D"], ["A", "B", "C", "D"])
    assert not mmbench_circular_correct(["A", "B", "C", "A"], ["A", "B", "C", "D"])
    assert not mmbench_circular_correct(["A", None], ["A", "B"])
    with pytest.raises(ValueError, match="3 predictions but 2 answers"):
        mmbench_circular_correct(["A", "B", "C"], ["A", "B"])
    with pytest.raises(ValueError, match="no rotations"):
        mmbench_circular_correct([], [])


# ------------------------------------------------------------------------------------------ SEED-Bench


@pytest.mark.parametrize(
    "text, expected",
    [("A", "A"), ("D", "D"), ("A.", "A"), ("(A)", "A"), (" A", "A"), ("a", None), ("E", None), ("cat", "A"),
     ("The answer is B.", "B"), ("A or B", None)],
)
def test_seed_choice_reads_letters_and_option_texts_as_vlmevalkit(text, expected):
    assert seed_choice(text, dict(_OPTIONS)) == expected
