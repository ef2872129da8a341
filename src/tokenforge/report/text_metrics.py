"""Scores of generated text: VQA accuracy for answers, BLEU-4 and CIDEr-D for captions (pure Python, no I/O).

VQA accuracy follows the official evaluation (the VQA API's vqaEval.py, Antol et al. 2015):

- `vqa_normalize` cleans an answer as vqaEval does: newlines and tabs become spaces; punctuation in
  ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! becomes a space, or is deleted when the answer has it next to a
  space or has a digit-comma-digit ("1,000" -> "1000"); a period not followed by a digit is deleted ("5." -> "5",
  "1.5" stays); then the answer is lowercased and split into words, number words up to ten become digits
  ("two" -> "2", "none" -> "0"), the articles a / an / the are dropped, and contractions written without their
  apostrophe get it back ("dont" -> "don't"). The contraction table is a subset of vqaEval's: the common
  forms, without its entries that never match (capitalised keys, applied after lowercasing) or that map the wrong
  way ("somebody'd" -> "somebodyd"). vqaEval also deletes only the first 32 periods of an answer (a flag passed
  as the count of `re.sub`); here all are, which differs only on answers with more than 32 periods.
- `vqa_score` with 10 (or more) reference answers, as VQA v2 has: the prediction is compared with each subset
  of all answers but one, scored min(1, matches / 3), and the subsets' scores averaged; so an answer given by
  3 annotators out of 10 scores 0.9, by 4 or more 1.0. With fewer answers (CLEVR and our scenes have one), it
  is exact match after normalisation: 1.0 when the prediction equals one of them, else 0.0.
  One deliberate difference: vqaEval normalises only the prediction fully, and the reference answers only for
  punctuation, because VQA's answers were already normalised when the data set was made; ours (CLEVR, scene
  questions, user data) may not be, so both sides get the full `vqa_normalize`. On VQA v2's own answers this
  rarely changes anything, since they are already in normalised form (digits, no articles).

Captions are scored with pycocoevalcap's `Bleu(4)` and `Cider()` (the COCO caption evaluation code), which
are pure Python. Its PTB tokenizer needs Java, so it is not used; captions are instead lowercased and every
punctuation character becomes a space, which like the PTB tokenizer's punctuation removal scores words only
("A dog, running." -> "a dog running"). It differs from the PTB tokenizer on words with inner punctuation:
"dog's" gives "dog s" (PTB: "dog 's") and "well-known" gives "well known" (PTB: one word); both sides are
tokenised the same way, so matches are unaffected.

- BLEU-4 is the corpus BLEU (Papineni et al. 2002) of the whole set: clipped n-gram counts for n = 1..4 are
  summed over all captions, their precisions combined by geometric mean, times the brevity penalty
  exp(1 - r/c) when the total prediction length c is below the total reference length r (each prediction
  takes the reference closest to its own length). pycocoevalcap adds tiny epsilons (1e-15, 1e-9) to the
  counts, so a perfect score is 1.0 to about 1e-9 and "no 4-gram matches" gives a tiny positive number.
- CIDEr is CIDEr-D (Vedantam et al. 2015; pycocoevalcap's `Cider` is the D variant): per image, the n-gram
  (n = 1..4) TF-IDF vectors of prediction and each reference, a clipped cosine similarity per n, times a
  Gaussian length penalty exp(-d^2 / 72) with d the difference of the two captions' bigram counts, the mean
  over n and over references, times 10; the score is the mean over images. The IDF is computed from the
  references of the evaluated set itself: log(number of images / number of images whose references hold
  the n-gram). So a CIDEr score depends on the whole set it is computed on (the same caption scores
  differently in a different set), and on a set of one image every weight is log(1/1) = 0, so CIDEr is 0.0.

Whether a caption names what is in the image, for images with a scene layout (the `scenes` source's "scene"
objects): `object_mention_recall` gives the share of objects whose colour and shape are named together
("red cube", or "red cubes"), and of those whose shape is named at all; a word match on `caption_tokens`, not a
count ("a red cube" mentions both red cubes of an image). Its count_accuracy is the share of images whose caption
states their total object count as the scenes' count caption does ("three objects"), and no other total.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokenforge.errors import TokenforgeError

# ---- VQA accuracy ----

# With this many reference answers or more, vqa_score is the official leave-one-out accuracy.
VQA_ANNOTATORS = 10

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# A subset of vqaEval.py's table (see the module docstring): an answer word written without its apostrophe.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "oclock": "o'clock",
    "shant": "shan't",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # vqaEval's "(?!<=\d)(\.)(?!\d)": its first group never matches a "."


def _punctuation(text: str) -> str:
    """vqaEval's processPunctuation: the conditions look at the answer as given, not as being rewritten."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        if delete_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def vqa_normalize(answer: str) -> str:
    """`answer` normalised as the official VQA evaluation does (see the module docstring):
    "Two" -> "2", "the dog." -> "dog", "yes!" -> "yes", "1,000" -> "1000", "dont" -> "don't"."""
    if not isinstance(answer, str):
        raise TokenforgeError(f"vqa answer: expected a string, got {type(answer).__name__}")
    text = _punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of one predicted answer against its reference answers (see the module docstring).

    With n >= 10 answers, m of which equal the prediction after normalisation: the n subsets leaving out one
    answer hold m - 1 matches (the m that leave out a match) or m (the other n - m), so the score is
    (m * min(1, (m-1)/3) + (n-m) * min(1, m/3)) / n: 0.3 for m = 1, 0.6 for 2, 0.9 for 3, 1.0 for 4 or more.
    With fewer answers: 1.0 if the prediction equals one of them after normalisation, else 0.0.
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise TokenforgeError("vqa_score: each question needs a non-empty list of reference answers")
    pred = vqa_normalize(prediction)
    refs = [vqa_normalize(a) for a in answers]
    n = len(refs)
    m = sum(ref == pred for ref in refs)
    if n < VQA_ANNOTATORS:
        return 1.0 if m else 0.0
    return (m * min(1.0, (m - 1) / 3) + (n - m) * min(1.0, m / 3)) / n


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """The mean `vqa_score` over questions; `answers[i]` are question i's reference answers."""
    if len(predictions) == 0:
        raise TokenforgeError("vqa_accuracy: no predictions to score")
    if len(predictions) != len(answers):
        raise TokenforgeError(
            f"vqa_accuracy: {len(predictions)} predictions but {len(answers)} lists of reference answers"
        )
    return sum(vqa_score(p, a) for p, a in zip(predictions, answers)) / len(predictions)


# ---- captions ----

_NOT_WORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


def caption_tokens(text: str) -> str:
    """`text` as the caption metrics see it: lowercased, every punctuation character a space, words joined by
    single spaces (in place of pycocoevalcap's PTB tokenizer, which needs Java; see the module docstring)."""
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", text.lower())).strip()


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr-D of predicted captions: {"bleu4": ..., "cider": ...}.

    `predictions[i]` is the caption generated for image i and `references[i]` its reference captions (one or
    more). Both are tokenised with `caption_tokens`. CIDEr is on pycocoevalcap's scale (papers print it x100)
    and its IDF comes from these references, so it depends on the whole set (see the module docstring).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(predictions) == 0:
        raise TokenforgeError("caption_scores: no predictions to score")
    if len(predictions) != len(references):
        raise TokenforgeError(
            f"caption_scores: {len(predictions)} predictions but {len(references)} lists of reference captions"
        )
    res: dict[int, list[str]] = {}
    gts: dict[int, list[str]] = {}
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise TokenforgeError(f"caption_scores: prediction {i} is a {type(pred).__name__}, not a string")
        if isinstance(refs, str) or len(refs) == 0 or not all(isinstance(r, str) for r in refs):
            raise TokenforgeError(f"caption_scores: references of caption {i} must be a non-empty list of strings")
        res[i] = [caption_tokens(pred)]
        gts[i] = [caption_tokens(r) for r in refs]
    if not any(ref for refs in gts.values() for ref in refs):
        raise TokenforgeError("caption_scores: every reference caption is empty")

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def _states_total(pairs: set[tuple[str, str]], count: int, number_words: Sequence[str]) -> bool:
    """Whether a caption's word pairs state a total of `count` objects ("three objects", "one object") and no other
    total: every number word followed by "object" or "objects" is `count`'s, and there is one."""
    if count >= len(number_words):
        raise TokenforgeError(
            f"object_mention_recall: a scene layout of {count} objects; the count words stop at {len(number_words) - 1}"
        )
    stated = {word for word, noun in pairs if noun in ("object", "objects") and word in number_words}
    return stated == {number_words[count]}


def object_mention_recall(predictions: Sequence[str], scenes: Sequence[Sequence[dict] | None]) -> dict[str, float]:
    """How well the predicted captions describe the scene layouts: {"object_recall", "shape_recall", "count_accuracy"}.

    `scenes[i]` is image i's layout (its objects, each with "color" and "shape"; the `scenes` source's record
    "scene") or None for an image without one, which is skipped. Over every object of every layout:
    object_recall = the share whose colour word followed by its shape word, singular or plural ("red cube",
    "red cubes"), appears in that image's prediction; shape_recall = the share whose shape word (singular or
    plural) appears in it. Words are compared after `caption_tokens` (lowercase, punctuation a space). A mention
    is a word match, not a count match. Over every image with a layout: count_accuracy = the share whose
    prediction states the layout's number of objects as the source's count caption does, its number word
    (`scenes.NUMBER_WORDS`) right before "object" or "objects" ("three objects: two cubes and a sphere"); a
    prediction stating no total, a wrong one, or several different ones is wrong, so a caption that always says
    "three objects" scores the share of 3-object scenes. {} when there is no object to count (no image has a
    layout).
    """
    from tokenforge.data.sources.scenes import NUMBER_WORDS  # here, not on top: it loads numpy and PIL

    if len(predictions) != len(scenes):
        raise TokenforgeError(f"object_mention_recall: {len(predictions)} predictions but {len(scenes)} scene layouts")
    objects = named = shapes = layouts = counted = 0
    for prediction, scene in zip(predictions, scenes):
        words = caption_tokens(prediction).split()
        pairs = set(zip(words, words[1:]))
        if scene is not None:
            layouts += 1
            counted += _states_total(pairs, len(scene), NUMBER_WORDS)
        for obj in scene or ():
            color, shape = caption_tokens(obj["color"]), caption_tokens(obj["shape"])
            objects += 1
            named += (color, shape) in pairs or (color, shape + "s") in pairs
            shapes += shape in words or shape + "s" in words
    if not objects:
        return {}
    return {"object_recall": named / objects, "shape_recall": shapes / objects, "count_accuracy": counted / layouts}
