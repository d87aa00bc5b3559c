"""RULER scoring on hand-written cases: post-processing, string_match_all, string_match_part."""
import pytest

from tasks.ruler.scoring import (match_all, match_part, postprocess, rouge1_f, score_sample, string_match_all,
                                 string_match_part)


def test_postprocess_strips_then_maps_control_characters_to_newlines():
    assert postprocess("  \t 123\x00456\x1f789 \n") == "123\n456\n789"
    assert postprocess("a\tb\rc") == "a\nb\nc"
    assert postprocess("\x7f kept") == "\x7f kept"            # DEL is not in [\x00-\x1f]


def test_match_all_is_the_fraction_of_references_found_case_insensitively():
    assert match_all("The numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert match_all("only 1234567", ["1234567", "7654321", "1111111", "2222222"]) == 0.25
    assert match_all("VARS: abcde, FGHIJ", ["ABCDE", "fghij"]) == 1.0
    assert match_all("", ["x"]) == 0.0


def test_control_characters_can_join_or_split_a_match():
    # a tab inside the reference region becomes a newline, so "12\t34" no longer contains "12 34"
    assert match_all("12\t34", ["12 34"]) == 0.0
    assert match_all("12\t34", ["12\n34"]) == 1.0


def test_match_part_is_one_if_any_reference_matches():
    refs = ["Denver Broncos", "the Broncos", "Broncos"]
    assert match_part("The Broncos won.", refs) == 1.0
    assert match_part("Carolina Panthers", refs) == 0.0
    # lm-eval's string_match_part would give 2/3 here (fraction); RULER gives 1
    assert match_part("the broncos", refs) == 1.0


def test_corpus_scores_are_percentages_rounded_to_two_decimals():
    preds = ["1234567", "nothing", "1111111 2222222"]
    refs = [["1234567"], ["7654321"], ["1111111", "3333333", "2222222"]]
    assert string_match_all(preds, refs) == round(100 * (1 + 0 + 2 / 3) / 3, 2) == 55.56
    assert string_match_part(preds, refs) == 66.67


def test_score_sample_dispatches_on_metric_and_rejects_unknown():
    assert score_sample("string_match_all", "a b", ["a", "c"]) == 0.5
    assert score_sample("string_match_part", "a b", ["a", "c"]) == 1.0
    with pytest.raises(ValueError, match="metric must be one of"):
        score_sample("exact_match", "a", ["a"])
    with pytest.raises(ValueError, match="references"):
        match_all("a", [])
    with pytest.raises(ValueError, match="predictions"):
        string_match_all(["a"], [])


def test_rouge1_f_on_the_needle():
    needle = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    assert rouge1_f(needle, needle) == pytest.approx(1.0)
    assert rouge1_f("eat a sandwich and sit in Dolores Park", needle) == pytest.approx(16 / 29)   # P = 1, R = 8/21
    assert rouge1_f("nothing relevant", needle) == 0.0


def test_rouge1_f_is_the_harmonic_mean_of_precision_and_recall():
    assert rouge1_f("a b c d", "a b") == pytest.approx(2 / 3)        # P = 1/2, R = 1
    assert rouge1_f("a b", "a b c d e f") == pytest.approx(1 / 2)    # P = 1, R = 1/3


def test_score_sample_rouge1_f_post_processes_and_takes_the_best_reference():
    assert score_sample("rouge1_f", " eat a\x00sandwich ", ["sit in the park", "eat a sandwich"]) == pytest.approx(1.0)
    assert score_sample("rouge1_f", "park bench", ["sit in the park", "eat a sandwich"]) == pytest.approx(2 / 6)


@pytest.mark.parametrize("call, message", [
    (lambda: match_all("a", []), r"^references must not be empty$"),
    (lambda: match_part("a", []), r"^references must not be empty$"),
    (lambda: string_match_part([], []), r"^no predictions to score$"),
    (lambda: string_match_all(["a"], []), r"^1 predictions but 0 reference lists$"),
    (lambda: score_sample("exact_match", "a", ["a"]),
     r"^metric must be one of string_match_all, string_match_part, rouge1_f, got 'exact_match'$"),
], ids=["match-all-no-refs", "match-part-no-refs", "no-predictions", "length-mismatch", "unknown-metric"])
def test_bad_input_messages_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
