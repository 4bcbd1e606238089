"""Benchmark scorers, one per benchmark family, each matching its official script case for case.

The scripts differ (SPEC "Evaluation"), so there is no shared lenient matcher:
- VQAv2 / VizWiz / TextVQA: LLaVA-1.5's `llava/eval/m4c_evaluator.py` (`normalize_answer`, `vqa_accuracy`).
- GQA: LLaVA's `scripts/convert_gqa_for_eval.py` + GQA's `eval.py` (`gqa_match`).
- POPE: LLaVA's `llava/eval/eval_pope.py` (`pope_answer`, `pope_scores`).
- ScienceQA-IMG: LLaVA's `llava/eval/eval_science_qa.py` (`parse_choice`).
- MMBench: VLMEvalKit's `can_infer` without a judge LLM (`mmbench_choice`, `mmbench_circular_correct`).
- SEED-Bench-IMG: LLaVA's `scripts/convert_seed_for_submission.py` (`seed_choice`).

Inputs are generated answers as LLaVA's `model_vqa*.py` save them: decoded and `.strip()`ped. The
scorers strip only what the official scripts strip, so callers should strip too.
Written by hand: the official scripts are command-line programs over files, not importable functions.
"""

from __future__ import annotations

import re
import string

# ---------------------------------------------------------------------------------------------
# VQA answer normalization (EvalAIAnswerProcessor in LLaVA's m4c_evaluator.py)
# ---------------------------------------------------------------------------------------------

# The VQA contractions table, "written-without-apostrophe written-with" pairs. A few keys can never
# match (uppercase ones after lowercasing; ones containing "'s", which is split off first); they
# are kept so the table reads the same as the official one.
_CONTRACTION_PAIRS = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't
couldn'tve couldn't've  couldnt've couldn't've  didnt didn't  doesnt doesn't
dont don't  hadnt hadn't  hadnt've hadn't've  hadn'tve hadn't've  hasnt hasn't
havent haven't  hed he'd  hed've he'd've  he'dve he'd've  hes he's  howd how'd
howll how'll  hows how's  Id've I'd've  I'dve I'd've  Im I'm  Ive I've  isnt isn't
itd it'd  itd've it'd've  it'dve it'd've  itll it'll  let's let's  maam ma'am
mightnt mightn't  mightnt've mightn't've  mightn'tve mightn't've  mightve might've
mustnt mustn't  mustve must've  neednt needn't  notve not've  oclock o'clock
oughtnt oughtn't  ow's'at 'ow's'at  'ows'at 'ow's'at  'ow'sat 'ow's'at
shant shan't  shed've she'd've  she'dve she'd've  she's she's  shouldve should've
shouldnt shouldn't  shouldnt've shouldn't've  shouldn'tve shouldn't've
somebody'd somebodyd  somebodyd've somebody'd've  somebody'dve somebody'd've
somebodyll somebody'll  somebodys somebody's  someoned someone'd
someoned've someone'd've  someone'dve someone'd've  someonell someone'll
someones someone's  somethingd something'd  somethingd've something'd've
something'dve something'd've  somethingll something'll  thats that's
thered there'd  thered've there'd've  there'dve there'd've  therere there're
theres there's  theyd they'd  theyd've they'd've  they'dve they'd've
theyll they'll  theyre they're  theyve they've  twas 'twas  wasnt wasn't
wed've we'd've  we'dve we'd've  weve we've  werent weren't  whatll what'll
whatre what're  whats what's  whatve what've  whens when's  whered where'd
wheres where's  whereve where've  whod who'd  whod've who'd've  who'dve who'd've
wholl who'll  whos who's  whove who've  whyll why'll  whyre why're  whys why's
wont won't  wouldve would've  wouldnt wouldn't  wouldnt've wouldn't've
wouldn'tve wouldn't've  yall y'all  yall'll y'all'll  y'allll y'all'll
yall'd've y'all'd've  y'alld've y'all'd've  y'all'dve y'all'd've  youd you'd
youd've you'd've  you'dve you'd've  youll you'll  youre you're  youve you've
""".split()
_CONTRACTIONS = dict(zip(_CONTRACTION_PAIRS[0::2], _CONTRACTION_PAIRS[1::2]))

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'  # each character is one mark, in the official order
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a lookahead (a typo for a
# lookbehind) that always passes, so every full stop not followed by a digit goes ("3.5" stays).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call is `sub("", text, re.UNICODE)`: re.UNICODE (32) lands in `count`.
_MAX_PERIODS_REMOVED = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        # A mark next to a space is dropped ("yes !" -> "yes "); one inside a word splits it
        # ("black/white" -> "black white"). The official test is on the text as it came in. (Its
        # extra "digit,digit" test never fires: commas are already gone.)
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def normalize_answer(text: str) -> str:
    """VQA answer normalization, exactly LLaVA-1.5's m4c_evaluator `EvalAIAnswerProcessor`.

    Lowercase; drop "," and "?" ("1,000" -> "1000"); split off "'s"; newlines/tabs -> spaces;
    other punctuation dropped or turned into a space; full stops dropped unless before a digit
    ("3.5" stays); number words zero..ten (and "none") -> digits; articles a/an/the removed;
    contractions written without apostrophe restored ("dont" -> "don't"); single spaces.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def exact_match(prediction: str, answer: str) -> bool:
    """Whether prediction and answer agree after `normalize_answer` (the built-in synthetic benchmark)."""
    return normalize_answer(prediction) == normalize_answer(answer)


VQA_ANSWERS_PER_QUESTION = 10


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Standard VQA accuracy of one prediction against its 10 human answers, in [0, 1].

    As m4c_evaluator's `TextVQAAccuracyEvaluator` (LLaVA's TextVQA scorer, SPEC's choice for VQAv2
    and VizWiz too): prediction and every answer go through `normalize_answer`; for each of the 10
    leave-one-annotator-out subsets the score is min(1, matches / 3); the mean of the 10 is the
    accuracy. The evaluator asserts exactly 10 answers, so any other count is a ValueError. (The
    VQAv2/VizWiz servers run GT-Vision-Lab's vqaEval.py, which differs only in corner cases: it
    leaves answers unnormalized when all 10 are identical.)
    """
    if len(answers) != VQA_ANSWERS_PER_QUESTION:
        raise ValueError(f"vqa_accuracy: expected {VQA_ANSWERS_PER_QUESTION} ground-truth answers, got {len(answers)}")
    predicted = normalize_answer(prediction)
    truths = [normalize_answer(answer) for answer in answers]
    subset_scores = []
    for left_out in range(len(truths)):
        matches = sum(1 for k, truth in enumerate(truths) if k != left_out and truth == predicted)
        subset_scores.append(min(1.0, matches / 3))
    return sum(subset_scores) / len(subset_scores)


# ---------------------------------------------------------------------------------------------
# GQA
# ---------------------------------------------------------------------------------------------


def gqa_match(prediction: str, answer: str) -> bool:
    """GQA accuracy for one question, as LLaVA-1.5 scores it.

    convert_gqa_for_eval.py writes `prediction.rstrip('.').lower()`; GQA's eval.py then counts
    `predicted == gold`. So: trailing full stops removed and lowercased on the prediction only, no
    whitespace stripping, no article/number handling; the answer is compared as given (GQA's are
    lowercase).
    """
    return prediction.rstrip(".").lower() == answer


# ---------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------

_POPE_NO_WORDS = frozenset({"No", "not", "no"})
POPE_LABELS = ("yes", "no")


def pope_answer(text: str) -> str:
    """"yes" or "no" for a generated POPE answer, as LLaVA's eval_pope.py reads it.

    Only the text before the first "." counts; commas are dropped; the rest is split on single
    spaces, and the words "No", "not" or "no" mean "no"; anything else (even "NO", "no!",
    "Not sure") means "yes".
    """
    first_sentence = text.split(".")[0].replace(",", "")
    return "no" if _POPE_NO_WORDS.intersection(first_sentence.split(" ")) else "yes"


def pope_scores(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """POPE accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class.

    `predictions` are generated answers (each read with `pope_answer`; "yes"/"no" pass through);
    `labels` are "yes"/"no". Where eval_pope.py would divide by zero (nothing predicted "yes" for
    precision, no "yes" label for recall, both zero for F1) the value is 0.0.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_scores: {len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("pope_scores: no predictions to score")
    for k, label in enumerate(labels):
        if label not in POPE_LABELS:
            raise ValueError(f"pope_scores: label {k} is {label!r}, expected 'yes' or 'no'")
    said_yes = [pope_answer(text) == "yes" for text in predictions]
    is_yes = [label == "yes" for label in labels]
    tp = sum(p and t for p, t in zip(said_yes, is_yes))
    fp = sum(p and not t for p, t in zip(said_yes, is_yes))
    tn = sum(not p and not t for p, t in zip(said_yes, is_yes))
    fn = sum(not p and t for p, t in zip(said_yes, is_yes))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(said_yes) / len(said_yes),
    }


# ---------------------------------------------------------------------------------------------
# ScienceQA
# ---------------------------------------------------------------------------------------------

# eval_science_qa.py's `--options` default: letters beyond E are never read as an answer.
_SQA_LETTERS = ("A", "B", "C", "D", "E")
# Unescaped "." as in the script: any one character must follow the letter.
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_choice(text: str, options: list[str]) -> str | None:
    """The option letter LLaVA's eval_science_qa.py reads from `text`, or None where it fails.

    The answer is `text` if it is exactly a letter A-E; else its first character if it starts with
    "X. " (letter, full stop, space); else the single match of "The answer is ([A-Z])." (any one
    character after the letter). A letter past the question's options (only `len(options)`
    matters) is None, and so are "(A)", "b", "Answer: B" and texts with two "The answer is" matches.
    """
    if text in _SQA_LETTERS:
        letter = text
    elif len(text) >= 3 and text[0] in _SQA_LETTERS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _SQA_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
    return letter if letter in _SQA_LETTERS[: len(options)] else None


# ---------------------------------------------------------------------------------------------
# MMBench (VLMEvalKit vlmeval/utils/matching_util.py `can_infer`, commit e8e78f05)
# ---------------------------------------------------------------------------------------------

_MMB_API_FAILURE = "Failed to obtain answer via API"
_MMB_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_MMB_SEPARATORS = ".()[],:;!*#{}"
_MMB_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_MMB_NO_ANSWER = "Z"  # VLMEvalKit's letter for "refused / none of the options"


def _mmbench_letter(text: str, options: dict[str, str]) -> str | None:
    """`can_infer_option`: an option letter standing alone among the last 4 words, or "Z"."""
    if _MMB_API_FAILURE in text:
        return None
    if any(refusal in text for refusal in _MMB_REFUSALS):
        return _MMB_NO_ANSWER
    spaced = text
    for separator in _MMB_SEPARATORS:
        spaced = spaced.replace(separator, " ")
    words = spaced.split()
    named = [letter for letter in options if letter in words]
    if len(named) == 1:
        # (VLMEvalKit's "A might be a quantifier" rejection runs only with VERBOSE set; off here.)
        if words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and _MMB_NO_ANSWER in words:
        return _MMB_NO_ANSWER
    match = _MMB_ANSWER_IS.search(text)
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    return None


def _mmbench_text(text: str, options: dict[str, str]) -> str | None:
    """`can_infer_text`: the single option whose text occurs in a not-too-long answer."""
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(str(option)) for option in options.values()):
        return None
    found = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return found[0] if len(found) == 1 else None


def mmbench_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter VLMEvalKit's `can_infer` extracts from `text`, or None (no judge LLM).

    `options` maps letter -> option text. First a letter standing alone as a word (after
    ".()[],:;!*#{}" become spaces) that is the only option letter present and among the last 4
    words, or "answer is X" / "correct answer is **X**"; else the single option whose text is a
    substring of the lowercased answer, when the answer is at most twice the options' total length.
    VLMEvalKit's "Z" (a refusal, or a standalone "Z") is returned as None: it is never right.
    """
    if not options:
        raise ValueError("mmbench_choice: options is empty")
    for letter in options:
        if len(letter) != 1 or letter not in string.ascii_uppercase:
            raise ValueError(f"mmbench_choice: option key {letter!r} is not a single letter A-Z")
    letter = _mmbench_letter(text, options) or _mmbench_text(text, options)
    return letter if letter in options else None


def mmbench_circular_correct(predicted: list[str | None], answers: list[str]) -> bool:
    """MMBench CircularEval: a question counts only if every rotation of its options was answered right.

    `predicted[k]` and `answers[k]` are the extracted and the true letter for rotation k.
    """
    if len(predicted) != len(answers):
        raise ValueError(f"mmbench_circular_correct: {len(predicted)} predictions but {len(answers)} answers")
    if not answers:
        raise ValueError("mmbench_circular_correct: no rotations to score")
    return all(guess is not None and guess == answer for guess, answer in zip(predicted, answers))


# ---------------------------------------------------------------------------------------------
# SEED-Bench
# ---------------------------------------------------------------------------------------------


def seed_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter of a SEED-Bench-IMG answer, by VLMEvalKit's extraction (SPEC: SEED's own matching).

    SEED-Bench-IMG is one of VLMEvalKit's multiple-choice datasets, scored with the same
    `can_infer` as MMBench (without the circular pass): "A.", "(A)" and the option's text
    all choose their option. LLaVA-1.5's convert_seed_for_submission.py is stricter (only
    the bare letter counts); SPEC follows VLMEvalKit.
    """
    return mmbench_choice(text, options)
