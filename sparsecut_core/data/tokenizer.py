"""A small word-level tokenizer built locally, for tiny test models and smoke runs.

Real checkpoints bring their own tokenizer; this one exists so that tests and toy
training runs need no downloads. Ids are deterministic: special tokens first, then
punctuation and digits, then the given words sorted.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Fixed ids 0..3; the image token takes id 4.
SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")
PUNCTUATION: tuple[str, ...] = tuple(".,?!:;'\"()-/")
DIGITS: tuple[str, ...] = tuple("0123456789")

# Words of LLaVA's prompts (vicuna_v1 system prompt, short-answer, VizWiz and
# multiple-choice instructions), colours, shapes, positions, number words and
# option letters: enough for synthetic VQA on drawn shapes.
TINY_VOCAB: list[str] = [
    "a", "about", "above", "all", "also", "an", "and", "answer", "answers", "any",
    "appears", "are", "area", "around", "arrow", "artificial", "as", "assistant", "at",
    "b", "background", "be", "because", "been", "behind", "being", "below", "best",
    "between", "big", "black", "blue", "both", "bottom", "brief", "briefly", "bright",
    "brown", "but", "by", "c", "can", "caption", "center", "centre", "character",
    "characters", "chat", "choice", "choices", "choose", "circle", "circles", "color",
    "colors", "colour", "colours", "column", "columns", "contain", "containing",
    "contains", "corner", "correct", "could", "count", "cross", "crosses", "curious",
    "cyan", "d", "dark", "describe", "detail", "detailed", "details", "diamond",
    "diamonds", "did", "different", "digit", "digits", "directly", "do", "does", "dot",
    "dots", "drawn", "e", "each", "edge", "eight", "eighteen", "eleven", "ellipse",
    "ellipses", "empty", "explain", "f", "false", "far", "few", "fifteen", "filled",
    "find", "first", "five", "following", "for", "foreground", "four", "fourteen",
    "from", "front", "g", "give", "given", "gives", "gpt", "gray", "green", "grey",
    "grid", "h", "had", "half", "has", "have", "he", "heart", "helpful", "her", "here",
    "hexagon", "hexagons", "his", "how", "human", "i", "identify", "if", "image", "in",
    "include", "includes", "information", "inside", "insufficient", "intelligence",
    "into", "is", "it", "its", "j", "just", "k", "kind", "l", "label", "large", "last",
    "least", "left", "less", "letter", "letters", "light", "like", "line", "lines",
    "list", "located", "look", "looks", "lower", "m", "magenta", "many", "mark", "me",
    "middle", "more", "most", "much", "my", "n", "name", "near", "next", "nine",
    "nineteen", "no", "none", "not", "number", "numbers", "o", "object", "objects",
    "of", "on", "one", "only", "onto", "option", "options", "or", "orange", "other",
    "others", "our", "outline", "outside", "oval", "over", "p", "pentagon", "photo",
    "phrase", "pick", "picture", "pink", "pixel", "pixels", "placed", "plain",
    "please", "point", "polite", "position", "provide", "provided", "purple", "q",
    "quarter", "question", "questions", "r", "read", "rectangle", "rectangles", "red",
    "region", "respond", "right", "row", "rows", "s", "same", "scene", "second", "see",
    "select", "seven", "seventeen", "several", "shape", "shapes", "she", "short",
    "should", "show", "showing", "shown", "shows", "side", "sides", "sign", "single",
    "six", "sixteen", "size", "small", "so", "solid", "some", "square", "squares",
    "star", "stars", "system", "t", "tell", "ten", "text", "than", "that", "the",
    "their", "them", "then", "there", "these", "they", "third", "thirteen", "this",
    "those", "three", "tiny", "to", "too", "top", "total", "triangle", "triangles",
    "true", "twelve", "twenty", "two", "type", "u", "unanswerable", "under", "upper",
    "user", "using", "v", "very", "visible", "w", "was", "we", "were", "what", "when",
    "where", "which", "while", "white", "who", "whose", "why", "will", "with", "word",
    "would", "write", "written", "x", "y", "yellow", "yes", "you", "your", "z", "zero",
]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split on whitespace, isolate each punctuation mark, and split numbers digit by digit."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def _check_words(words: list[str], pre_tokenizer: pre_tokenizers.PreTokenizer) -> list[str]:
    """Lowercase, deduplicate and sort `words`; reject ones the pre-tokenizer would split (unreachable)."""
    cleaned = set()
    for word in words:
        if not isinstance(word, str) or not word:
            raise ValueError(f"words: expected non-empty strings, got {word!r}")
        lowered = word.lower()
        pieces = [piece for piece, _ in pre_tokenizer.pre_tokenize_str(lowered)]
        if pieces != [lowered]:
            raise ValueError(f"words: {word!r} would be split into {pieces}; give single words")
        cleaned.add(lowered)
    return sorted(cleaned)


def build_word_tokenizer(
    words: list[str], *, image_token: str = "<image>", add_bos: bool = True
) -> PreTrainedTokenizerFast:
    """Build a lowercasing word-level tokenizer over `words` (plus punctuation and digits).

    Ids: <unk>=0, <s>=1, </s>=2, <pad>=3, `image_token`=4, then punctuation, digits
    and the sorted words. Unknown words map to <unk>; `image_token` is a special token
    and is never split. With `add_bos`, every encoded text starts with <s> (as Llama).
    """
    clashes = image_token in (*SPECIAL_TOKENS, *PUNCTUATION, *DIGITS)
    if clashes or not image_token or any(c.isspace() for c in image_token):
        raise ValueError(f"image_token: {image_token!r} must be a non-empty, space-free new token")
    pre_tokenizer = _pre_tokenizer()
    reserved = (*SPECIAL_TOKENS, image_token, *PUNCTUATION, *DIGITS)
    extra = [w for w in _check_words(words, pre_tokenizer) if w not in reserved]
    vocab = {token: i for i, token in enumerate((*reserved, *extra))}

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizer
    # The WordPiece decoder joins tokens with spaces; `cleanup` removes the space
    # before punctuation ("circle ." -> "circle.").
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)

    # transformers registers the named special tokens and the image token as added
    # special tokens (matched on the raw text, before lowercasing and splitting) and
    # builds the <s>-prepending post-processor from `add_bos_token`.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=[image_token],
        add_bos_token=add_bos,
        add_eos_token=False,
        model_max_length=2048,
        padding_side="right",
    )
