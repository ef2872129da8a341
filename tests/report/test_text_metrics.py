"""VQA accuracy, BLEU-4, CIDEr-D, object mention recall and count accuracy on cases small enough to check by hand."""

import math

import numpy as np
import pytest

from tokenforge.data.sources.scenes import scene_captions, scene_layout
from tokenforge.errors import TokenforgeError
from tokenforge.report.text_metrics import (
    caption_scores,
    caption_tokens,
    object_mention_recall,
    vqa_accuracy,
    vqa_normalize,
    vqa_score,
)


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two", "2"),
        ("none", "0"),
        ("the dog.", "dog"),
        ("yes!", "yes"),
        ("An Apple", "apple"),
        ("  a\tred\ncube ", "red cube"),
        ("1,000", "1000"),  # a digit-comma-digit: punctuation is deleted, not spaced
        ("1.5", "1.5"),  # a period before a digit stays
        ("5.", "5"),
        ("red-green", "red green"),  # punctuation between words becomes a space ...
        ("red - green", "red green"),  # ... or is deleted when next to a space
        ("dont", "don't"),
        ("whats that?", "what's that"),
    ],
)
def test_vqa_normalize(raw, normalised):
    assert vqa_normalize(raw) == normalised


def ten(matching: int) -> list[str]:
    return ["yes"] * matching + ["no"] * (10 - matching)


def test_vqa_score_ten_answers_is_the_official_leave_one_out_accuracy():
    # m matches of 10: the m subsets of 9 leaving out a match hold m-1 matches, the other 10-m hold m;
    # each subset scores min(1, matches/3), and the 10 are averaged.
    assert vqa_score("yes", ten(0)) == 0.0
    # 1: (1*0 + 9*(1/3)) / 10 = 0.3
    assert vqa_score("yes", ten(1)) == pytest.approx(0.3)
    # 2: (2*(1/3) + 8*(2/3)) / 10 = (2/3 + 16/3) / 10 = 0.6
    assert vqa_score("yes", ten(2)) == pytest.approx(0.6)
    # 3: (3*(2/3) + 7*1) / 10 = (2 + 7) / 10 = 0.9
    assert vqa_score("yes", ten(3)) == pytest.approx(0.9)
    # 4 or more: every subset holds at least 3 matches
    for m in (4, 7, 10):
        assert vqa_score("yes", ten(m)) == 1.0
    # answers and prediction are normalised before matching
    assert vqa_score("Yes!", ["yes."] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert vqa_score("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_vqa_score_with_fewer_answers_is_exact_match():
    assert vqa_score("The cube.", ["cube"]) == 1.0
    assert vqa_score("cubes", ["cube"]) == 0.0
    assert vqa_score("Two", ["2"]) == 1.0
    assert vqa_score("3", ["2", "3", "4"]) == 1.0  # one of several


def test_vqa_accuracy_is_the_mean():
    assert vqa_accuracy(["yes", "no", "2"], [ten(2), ["no"], ["two"]]) == pytest.approx((0.6 + 1 + 1) / 3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: vqa_accuracy([], []),
        lambda: vqa_accuracy(["yes"], [["yes"], ["no"]]),
        lambda: vqa_score("yes", []),
        lambda: caption_scores([], []),
        lambda: caption_scores(["a dog"], [["a dog"], ["a cat"]]),
        lambda: caption_scores(["a dog"], [[]]),
        lambda: caption_scores(["a dog"], [["!"]]),
    ],
)
def test_bad_input_is_a_tokenforge_error(call):
    with pytest.raises(TokenforgeError):
        call()


def test_caption_tokens_drop_punctuation_and_case():
    assert caption_tokens("A dog, running.") == "a dog running"
    assert caption_tokens("The dog's  ball!") == "the dog s ball"


def test_bleu4_of_identical_captions_is_one():
    scores = caption_scores(["A man rides a red horse."], [["a man rides a red horse"]])
    assert scores["bleu4"] == pytest.approx(1.0, abs=1e-6)


def test_bleu4_without_a_shared_4gram_is_about_zero():
    # every word is shared (unigram precision 1) but no bigram, so no 4-gram either
    scores = caption_scores(["a b c d"], [["d c b a"]])
    assert scores["bleu4"] == pytest.approx(0.0, abs=1e-6)


def test_bleu4_brevity_penalty_by_hand():
    # "a b c d" is an exact prefix of "a b c d e f": n-gram precisions 4/4, 3/3, 2/2, 1/1 = 1, so BLEU-4 is the
    # brevity penalty exp(1 - r/c) with r = 6, c = 4: exp(-0.5) = 0.6065 (pycocoevalcap's epsilons are ~1e-9)
    scores = caption_scores(["a b c d"], [["a b c d e f"]])
    assert scores["bleu4"] == pytest.approx(math.exp(-0.5), abs=1e-3)


def test_cider_identical_captions_score_above_zero_and_unrelated_ones_zero():
    refs = [["a dog runs on grass"], ["two cats sleep on a sofa"]]
    same = caption_scores(["a dog runs on grass", "two cats sleep on a sofa"], refs)
    assert same["cider"] > 0
    unrelated = caption_scores(["purple elephants fly", "quantum soup"], refs)
    assert unrelated["cider"] == 0.0


def test_cider_of_a_one_image_set_is_zero():
    # the IDF comes from the evaluated set: with one image every n-gram weight is log(1) - log(1) = 0
    assert caption_scores(["a dog"], [["a dog"]])["cider"] == 0.0


def test_cider_d_by_hand():
    # Two images, so the IDF weight of an n-gram is log(2) - log(max(1, df)) with df the number of images whose
    # references hold it: every n-gram here is in one image's references or in none (df 0 counts as 1), so
    # every weight is w = log 2 and each TF-IDF vector is w times 0/1 counts.
    #
    # Image 0: "a b d" against "a b c".
    #   1-grams {a, b, d} vs {a, b, c}: clipped dot 2 w^2 / (sqrt3 w * sqrt3 w) = 2/3
    #   2-grams {ab, bd} vs {ab, bc}: w^2 / (sqrt2 w * sqrt2 w) = 1/2
    #   3-grams {abd} vs {abc}: 0;  4-grams: none: 0
    #   length penalty: CIDEr-D's "length" is the bigram count, 2 vs 2: exp(0) = 1
    #   score = 10 * mean(2/3, 1/2, 0, 0) = 10 * (7/6) / 4
    image0 = 10 * (2 / 3 + 1 / 2) / 4
    # Image 1: "e f" against "e f g".
    #   1-grams {e, f} vs {e, f, g}: 2 w^2 / (sqrt2 w * sqrt3 w) = 2/sqrt6
    #   2-grams {ef} vs {ef, fg}: w^2 / (w * sqrt2 w) = 1/sqrt2
    #   3-, 4-grams: the prediction has none: 0
    #   length penalty: bigram counts 1 vs 2, d = -1: exp(-d^2 / (2 * 6^2)) = exp(-1/72)
    image1 = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    scores = caption_scores(["a b d", "e f"], [["a b c"], ["e f g"]])
    assert scores["cider"] == pytest.approx((image0 + image1) / 2, rel=1e-9)  # = 3.33657


def obj(color, shape, size="small"):
    return {"color": color, "shape": shape, "size": size, "x": 0.5, "y": 0.5}


def test_object_recall_all_objects_named():
    scenes = [[obj("red", "cube", "large"), obj("blue", "sphere")], [obj("green", "cone")]]
    predictions = ["A large red cube and a small Blue Sphere.", "a small green cone"]
    scores = object_mention_recall(predictions, scenes)
    assert scores == {"object_recall": 1.0, "shape_recall": 1.0, "count_accuracy": 0.0}  # no caption states a total


def test_object_recall_needs_colour_and_shape_together():
    scenes = [[obj("red", "cube"), obj("blue", "sphere")]]
    wrong_colours = object_mention_recall(["a small green cube and a small red sphere"], scenes)
    assert wrong_colours == {"object_recall": 0.0, "shape_recall": 1.0, "count_accuracy": 0.0}
    # the right words apart ("red" before "small", not before "cube") are no mention of a red cube
    assert object_mention_recall(["a red small cube"], [[obj("red", "cube")]])["object_recall"] == 0.0
    # one of two objects named, the other's shape not at all
    half = object_mention_recall(["a red cube"], scenes)
    assert half == {"object_recall": 0.5, "shape_recall": 0.5, "count_accuracy": 0.0}


def test_object_recall_accepts_plurals_and_is_no_count():
    scenes = [[obj("red", "cube"), obj("red", "cube", "large"), obj("grey", "cylinder")]]
    scores = object_mention_recall(["two red cubes and cylinders"], scenes)
    assert scores == {"object_recall": 2 / 3, "shape_recall": 1.0, "count_accuracy": 0.0}
    # one mention covers both red cubes: a word match, not a count match
    assert object_mention_recall(["a red cube"], scenes)["object_recall"] == 2 / 3


def test_object_recall_skips_images_without_a_layout():
    assert object_mention_recall(["a dog", "a cat"], [None, None]) == {}
    assert object_mention_recall([], []) == {}
    mixed = object_mention_recall(["a dog", "a red cube"], [None, [obj("red", "cube")]])
    assert mixed == {"object_recall": 1.0, "shape_recall": 1.0, "count_accuracy": 0.0}
    # the image without a layout is not in count_accuracy's denominator either
    counted = object_mention_recall(["one object", "one object: a red cube"], [None, [obj("red", "cube")]])
    assert counted["count_accuracy"] == 1.0
    with pytest.raises(TokenforgeError, match="object_mention_recall"):
        object_mention_recall(["a red cube"], [])


def count_accuracy(predictions, scenes):
    return object_mention_recall(predictions, scenes)["count_accuracy"]


THREE = [obj("red", "cube"), obj("blue", "cube"), obj("green", "sphere")]


def test_count_accuracy_right_wrong_and_no_count():
    assert count_accuracy(["Three objects: two cubes and a sphere."], [THREE]) == 1.0
    assert count_accuracy(["two objects: two cubes"], [THREE]) == 0.0  # a wrong total
    assert count_accuracy(["a red cube, a blue cube and a green sphere"], [THREE]) == 0.0  # no total stated
    assert count_accuracy(["three objects", "three objects"], [THREE, THREE[:2]]) == 0.5


def test_count_accuracy_needs_the_number_word_right_before_object():
    # "three" counting something else, or apart from "objects", states no total
    assert count_accuracy(["three cubes and spheres"], [THREE]) == 0.0
    assert count_accuracy(["three red objects"], [THREE]) == 0.0
    assert count_accuracy(["objects three"], [THREE]) == 0.0


def test_count_accuracy_singular_one_object():
    one = [[obj("red", "cube")]]
    assert count_accuracy(["one object: a cube"], one) == 1.0
    assert count_accuracy(["one objects"], one) == 1.0  # "object" or "objects", whatever the number
    assert count_accuracy(["an object: a cube"], one) == 0.0  # only the number words count
    assert count_accuracy(["two objects"], one) == 0.0


def test_count_accuracy_several_totals_are_wrong():
    # naming every total is no way to score: any wrong total stated makes the caption wrong
    assert count_accuracy(["two objects three objects four objects"], [THREE]) == 0.0
    assert count_accuracy(["three objects: three objects"], [THREE]) == 1.0  # the same total twice


def test_count_accuracy_has_a_chance_level():
    scenes = [THREE[:2], THREE, THREE, [*THREE, obj("grey", "cone")]]
    assert count_accuracy(["three objects"] * 4, scenes) == 0.5  # the share of 3-object scenes


def test_count_accuracy_reads_the_scenes_sources_count_caption():
    """The source's count caption (its NUMBER_WORDS) states every layout's total; its listing caption none."""
    rng = np.random.default_rng(0)
    scenes = [scene_layout(rng, n, n) for n in range(1, 10)]
    captions = [scene_captions(scene) for scene in scenes]
    assert count_accuracy([count for _, count in captions], scenes) == 1.0
    assert count_accuracy([listing for listing, _ in captions], scenes) == 0.0


def test_count_accuracy_refuses_a_layout_beyond_the_number_words():
    with pytest.raises(TokenforgeError, match="10 objects"):
        object_mention_recall(["ten objects"], [[obj("red", "cube")] * 10])
