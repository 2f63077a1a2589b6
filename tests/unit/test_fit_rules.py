"""The prompt fit check's rules on a bank whose geometry is known: what a prompt names, when
it has nothing to aim at, when an image already shows it or lacks it, how far an edit may
move the CLIP, and a scene check that travels in an edit file and judges alike."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from coral_core.editing.fit import (ALREADY_MARGIN, MAX_OVERSHOOT, MAX_REACH, MIN_REACH,
                                    MIN_RELATIVE_RANGE, UNIFORM_BIMODALITY, PromptFit,
                                    SceneCheck, bimodality_coefficient, check_prompt_fit,
                                    off_target_rows, past, prompt_clauses, prompt_parts,
                                    reach_of, text_range, unread_words)
from coral_core.editing.prior import SampleBank

D = 6


def _bank(n: int = 400, seed: int = 0) -> SampleBank:
    """Samples spread over axes 0-4; axis 5 the same for every sample (nothing tells them
    apart along it)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, D, generator=g)
    emb[:, 5] = 0.0
    return SampleBank(torch.zeros(n, 3), emb, "g", "c")


def _axis(i: int, scale: float = 1.0) -> torch.Tensor:
    t = torch.zeros(D)
    t[i] = scale
    return t


# ---- what a prompt names

@pytest.mark.parametrize("prompt, clauses", [
    ("a red square on a blue background", ["a red square", "a blue background"]),
    ("a red square, a blue circle; a green triangle",
     ["a red square", "a blue circle", "a green triangle"]),
    ("a cat And a dog beside a tree", ["a cat", "a dog", "a tree"]),
    ("a face with a beard", ["a face with a beard"]),
    ("on and beside", []),
    ("  a   blue  background ", ["a blue background"]),
    ("", []),
])
def test_a_prompt_is_split_into_the_things_it_names(prompt, clauses) -> None:
    assert prompt_clauses(prompt) == clauses


@given(st.lists(st.sampled_from(["a", "red", "blue", "square", "circle", "face"]),
                min_size=1, max_size=4), st.integers(1, 3))
def test_joining_things_with_on_gives_them_back(words, n) -> None:
    clause = " ".join(words)
    assert prompt_clauses(" on ".join([clause] * n)) == [clause] * n


def test_each_part_leaves_one_content_word_out_with_articles_that_fit() -> None:
    assert prompt_parts("an orange circle") == [(0, "a circle"), (0, "an orange")]
    assert prompt_parts("a red square on a blue background") == [(0, "a square"), (0, "a red")]
    # every picture has a background: a clause naming one is never found missing
    assert prompt_parts("a grey Background.") == []
    assert prompt_parts("a blue sofa on a green backdrop") == [(0, "a sofa"), (0, "a blue")]
    assert prompt_parts("An orange circle") == [(0, "A circle"), (0, "An orange")]
    assert prompt_parts("a red apple") == [(0, "an apple"), (0, "a red")]
    assert prompt_parts("a red Apple") == [(0, "an Apple"), (0, "a red")]
    assert prompt_parts("a dog") == []                      # one content word: no parts
    assert prompt_parts("a dog on a blue sofa") == [(1, "a sofa"), (1, "a blue")]
    assert prompt_parts("the dog.") == []                   # punctuation is no word


@pytest.mark.parametrize("prompt, parts", [
    # what follows "with" is the change an edit makes: only the thing before it must be there
    ("a face with a beard", []),
    ("a smiling face With glasses", [(0, "a face"), (0, "a smiling")]),
    ("a woman wearing red glasses", []),
    ("a blue car with a dent on a green background", [(0, "a car"), (0, "a blue")]),
    ("a red circle with a hole on a blue background", [(0, "a circle"), (0, "a red")]),
    ("with a beard", []),
    # a clause naming what every picture has is skipped, the clauses after it are not
    ("a grey background beside a red square", [(1, "a square"), (1, "a red")]),
    ("a red circle and a green square with a hole",
     [(0, "a circle"), (0, "a red"), (1, "a square"), (1, "a green")]),
])
def test_what_follows_with_is_not_looked_for_in_the_image(prompt, parts) -> None:
    assert prompt_parts(prompt) == parts


# ---- how far an edit may move the CLIP

def test_reach_and_past_are_shares_of_the_way_and_of_the_range() -> None:
    assert reach_of([0.1, 0.3], [0.2, 0.3], best=0.5) == [0.25, 0.0]
    assert reach_of([0.5], [0.6], best=0.5) == [round(0.1 / 1e-6, 3)]  # no way to go: huge
    assert past([0.7, 0.4], best=0.5, prompt_range=0.4) == [0.5, -0.25]
    assert past([0.7], best=0.5, prompt_range=0.0) == [round(0.2 / 1e-6, 3)]


def test_off_target_rows_apply_both_bounds_and_only_to_judged_rows() -> None:
    reached = [MIN_REACH, MIN_REACH - 0.01, MAX_REACH, MAX_REACH + 0.1, MAX_REACH + 0.1, 0.0]
    over = [0.0, 0.0, MAX_OVERSHOOT + 0.1, MAX_OVERSHOOT, MAX_OVERSHOOT + 0.01, 0.0]
    far, short = off_target_rows(reached, over, judged=[0, 1, 2, 3, 4])
    assert short == [1]        # exactly MIN_REACH is enough; row 5 is not judged
    assert far == [4]          # both bounds must be passed, each strictly
    _, short = off_target_rows([0.8, 0.9, 0.95], [0.0] * 3, judged=[0, 1, 2], short_below=0.9)
    assert short == [0]        # a caller's higher bar, exactly it enough


def _judged(reached: list[float], **kwargs) -> PromptFit:
    """A fit whose images reached ``reached`` of the way, judged after training."""
    f = PromptFit(relative_range=1.0, already=[False] * len(reached), warnings=[])
    f.reach = lambda text, edited: list(reached)  # type: ignore[method-assign]
    f.past_best = lambda text, edited: [0.0] * len(reached)  # type: ignore[method-assign]
    f.judge_outcome("a red circle", torch.zeros(1, D), torch.zeros(len(reached), D), **kwargs)
    return f


def test_a_caller_that_trains_again_may_raise_the_short_bar_and_only_then() -> None:
    reached = [0.3, 0.7, 0.95]
    plain = _judged(reached, warn_short=False)
    assert plain.short_rows() == [0] and plain.unchanged_rows() == [0]
    raised = _judged(reached, warn_short=False, short_below=0.9)
    assert raised.short_rows() == [0, 1] and raised.unchanged_rows() == [0, 1]
    assert raised.warnings == []  # recorded for training again, not warned about
    # a run that does not train again keeps the rule that leaves images unchanged
    warned = _judged(reached, warn_short=True, short_below=0.9)
    assert warned.short_rows() == [0] and len(warned.warnings) == 1
    # a bar under MIN_REACH does not let a short image through
    assert _judged(reached, warn_short=False, short_below=0.1).short_rows() == [0]


def test_an_image_that_already_matched_is_never_short() -> None:
    """It was not trained towards the prompt, so its low reach says nothing: it is left as
    it was, not trained again."""
    f = PromptFit(relative_range=1.0, already=[True, False], warnings=[])
    f.reach = lambda text, edited: [0.0, 0.0]  # type: ignore[method-assign]
    f.past_best = lambda text, edited: [0.0, 0.0]  # type: ignore[method-assign]
    f.judge_outcome("a red circle", torch.zeros(1, D), torch.zeros(2, D), warn_short=False,
                    short_below=0.9)
    assert f.short_rows() == [1]


# ---- the checks before training

def test_a_prompt_the_bank_cannot_tell_apart_has_nothing_to_aim_at() -> None:
    bank = _bank()
    images = torch.randn(3, D, generator=torch.Generator().manual_seed(0))
    images[:, 0] = -images[:, 0].abs()  # none of them already shows the clear prompt below
    fit = check_prompt_fit(bank, _axis(5), images, "qwzx", top=16)
    assert fit.relative_range < MIN_RELATIVE_RANGE and fit.aimless
    assert len(fit.warnings) == 1 and "finds nothing like it" in fit.warnings[0]
    assert fit.unchanged_rows() == [0, 1, 2]
    clear = check_prompt_fit(bank, _axis(0), images, "a red square", top=16)
    assert clear.relative_range > 0.5 and not clear.aimless and clear.warnings == []


VOCABULARY = frozenset({"a", "an", "red", "square", "circle", "on", "background", "blue"})


def test_a_prompt_of_words_the_clip_never_read_changes_nothing_and_says_which() -> None:
    bank = _bank()
    images = torch.randn(2, D, generator=torch.Generator().manual_seed(1))
    images[:, 0] = -images[:, 0].abs()
    # the CLIP separates the bank along the prompt as well as for a real one: only the word
    # list can tell (the shapes demo CLIP reads "qwzx blorp" as a colour)
    fit = check_prompt_fit(bank, _axis(0), images, "Qwzx blorp!", top=16, vocabulary=VOCABULARY)
    assert fit.relative_range > 0.5 and fit.unread and fit.aimless
    assert fit.unchanged_rows() == [0, 1]
    assert len(fit.warnings) == 1
    assert "never trained on 'qwzx', 'blorp', so the edit changes nothing" in fit.warnings[0]
    assert fit.warnings[0].endswith("it knows only: background, blue, circle, red, square")
    small = check_prompt_fit(_bank(n=32), _axis(0), images, "a dog", 16, vocabulary=VOCABULARY)
    assert small.aimless and "'dog'" in small.warnings[0]  # no best group: still refused


def test_a_prompt_with_some_words_the_clip_read_is_trained_with_a_warning() -> None:
    bank = _bank()
    images = -torch.ones(2, D)
    fit = check_prompt_fit(bank, _axis(0), images, "a qwzx red square", top=16,
                           vocabulary=VOCABULARY)
    assert not fit.aimless and fit.unchanged_rows() == []
    assert fit.warnings == ["prompt 'a qwzx red square': this CLIP was never trained on "
                            "'qwzx' and reads only the rest of the prompt; it knows: "
                            "background, blue, circle, red, square"]
    read = check_prompt_fit(bank, _axis(0), images, "A red square.", 16, vocabulary=VOCABULARY)
    assert not read.unread and read.warnings == []  # every word read: nothing to say
    for vocabulary in (None, frozenset()):  # a CLIP that lists no words: no word is unread
        plain = check_prompt_fit(bank, _axis(0), images, "qwzx blorp", 16, vocabulary=vocabulary)
        assert not plain.unread and plain.warnings == []


@pytest.mark.parametrize("prompt, unread, nothing", [
    ("qwzx blorp", ["qwzx", "blorp"], True),
    ("a blorp, a blorp", ["blorp"], True),         # each word once
    ("a red square on a blue background", [], False),
    ("A RED Circle.", [], False),                   # case and punctuation are no word
    ("a qwzx circle", ["qwzx"], False),
    ("a an the with", [], False),                   # function words are always read
    ("", [], False),
])
def test_unread_words_are_the_content_words_outside_the_vocabulary(prompt, unread,
                                                                   nothing) -> None:
    assert unread_words(prompt, VOCABULARY) == (unread, nothing)
    assert unread_words(prompt, None) == ([], False)


def test_bimodality_is_five_ninths_for_a_flat_spread_a_third_for_a_bell_near_one_for_two_groups(
        ) -> None:
    g = torch.Generator().manual_seed(4)
    n = 200_000
    assert bimodality_coefficient(torch.rand(n, generator=g)) == pytest.approx(5 / 9, abs=0.01)
    assert bimodality_coefficient(torch.randn(n, generator=g)) == pytest.approx(1 / 3, abs=0.01)
    two = torch.cat([torch.randn(700, generator=g) * 0.05, 1 + torch.randn(300, generator=g) * 0.05])
    assert bimodality_coefficient(two) > 0.9
    assert bimodality_coefficient(torch.ones(50)) == 0.0  # no spread: no groups
    assert bimodality_coefficient(torch.tensor([0.0, 1.0, 2.0])) == 0.0  # too few to say


def test_bimodality_on_few_samples_uses_the_unbiased_skewness_and_kurtosis() -> None:
    """Against scipy.stats' skew and kurtosis with bias=False (values computed with scipy
    1.17 once; no scipy at test time): the corrections matter on small samples."""
    assert bimodality_coefficient(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 3.0])) == \
        pytest.approx(0.40254398470067, rel=1e-6)
    assert bimodality_coefficient(torch.tensor([0.1, 0.5, 0.2, 0.9, 1.3, 0.0])) == \
        pytest.approx(0.30233221802661, rel=1e-6)
    assert bimodality_coefficient(torch.tensor([0.0, 1.0, 2.0, 5.0])) > 0  # four: enough


def test_a_prompt_exactly_at_the_bounds_is_refused() -> None:
    from coral_core.editing.fit import aimless

    assert aimless(MIN_RELATIVE_RANGE - 1e-9, UNIFORM_BIMODALITY)  # a flat spread: one group
    assert not aimless(MIN_RELATIVE_RANGE, 0.0)  # the range alone suffices at the floor
    assert not aimless(0.0, UNIFORM_BIMODALITY + 1e-9)


@given(st.floats(0.01, 100), st.floats(-50, 50))
def test_bimodality_does_not_depend_on_the_scores_scale_or_offset(scale, shift) -> None:
    scores = torch.tensor([0.0, 0.1, 0.15, 0.9, 1.0, 1.1, 0.3, 0.95], dtype=torch.float64)
    assert bimodality_coefficient(scores * scale + shift) == pytest.approx(
        bimodality_coefficient(scores), rel=1e-6)


def _bank_with_a_small_part(grouped: bool) -> SampleBank:
    """Samples spread widely over axes 0-4; along axis 5 a small difference: a third of the
    samples show it (two groups) or it varies smoothly (one bell) with the same spread."""
    bank = _bank()
    g = torch.Generator().manual_seed(9)
    n = bank.embeddings.shape[0]
    if grouped:
        part = (torch.rand(n, generator=g) < 1 / 3).float() * 0.4
    else:
        part = torch.randn(n, generator=g) * 0.4 * (2 / 9) ** 0.5
    bank.embeddings[:, 5] = part
    return bank


def test_a_small_part_some_pictures_show_is_something_to_aim_at() -> None:
    """A beard on the faces' bank: the CLIP's range for it is small beside the clearest
    direction's, but its scores fall into two groups (faces with and without)."""
    images = torch.randn(2, D)
    grouped = check_prompt_fit(_bank_with_a_small_part(True), _axis(5), images, "a beard", 16)
    smooth = check_prompt_fit(_bank_with_a_small_part(False), _axis(5), images, "qwzx", 16)
    assert grouped.relative_range < MIN_RELATIVE_RANGE and smooth.relative_range < \
        MIN_RELATIVE_RANGE
    assert grouped.bimodality > UNIFORM_BIMODALITY >= smooth.bimodality
    assert not grouped.aimless and not any("finds nothing" in w for w in grouped.warnings)
    assert smooth.aimless and smooth.unchanged_rows() == [0, 1]


def test_an_image_as_good_as_the_best_samples_already_shows_the_prompt() -> None:
    bank = _bank()
    fit = check_prompt_fit(bank, _axis(0), torch.zeros(1, D), "x", top=16)
    best, rng = fit.best_score, fit.prompt_range
    assert best > 1.0 and rng > 1.0
    margin = best - ALREADY_MARGIN * rng
    images = torch.stack([_axis(0, margin + 1e-3), _axis(0, margin - 1e-2), _axis(0, 5.0)])
    fit = check_prompt_fit(bank, _axis(0), images, "a red square", top=16)
    assert fit.already == [True, False, True]
    assert fit.start_scores == pytest.approx([margin + 1e-3, margin - 1e-2, 5.0], abs=1e-4)
    assert len(fit.warnings) == 1 and "image(s) 0, 2 already match" in fit.warnings[0]
    assert fit.unchanged_rows() == [0, 2]


def test_too_small_a_bank_checks_nothing() -> None:
    fit = check_prompt_fit(_bank(n=32), _axis(5), torch.zeros(2, D), "qwzx", top=16)
    assert fit.relative_range == 1.0 and fit.already == [False, False] and fit.warnings == []
    assert not check_prompt_fit(_bank(n=33), _axis(5), torch.zeros(2, D), "qwzx",
                                top=16).relative_range == 1.0


def _absent_case():
    """Prompt = axis 0 + axis 1 ("a red square"); parts "a square" (axis 1) and "a red"
    (axis 0), one clause."""
    bank = _bank()
    text = (_axis(0) + _axis(1)) / 2 ** 0.5
    parts = torch.stack([_axis(1), _axis(0)])
    return bank, text, parts


def test_an_image_lacking_every_part_of_a_clause_lacks_what_the_prompt_names() -> None:
    bank, text, parts = _absent_case()
    images = torch.stack([_axis(0, -3) + _axis(1, -3),   # neither red nor square
                          _axis(0, -3) + _axis(1, 3),    # a square, not red: recolour it
                          _axis(0, 1.2) + _axis(1, 1.2)])  # short of the best, not far
    fit = check_prompt_fit(bank, text, images, "a red square", top=16,
                           part_embeddings=parts, part_clauses=[0, 0])
    assert fit.absent == [True, False, False]
    assert any("seem to lack what it names" in w for w in fit.warnings)
    assert fit.unchanged_rows() == [0]
    without = check_prompt_fit(bank, text, images, "a red square", top=16)
    assert without.absent == [False, False, False]  # no parts: the check is skipped


def test_a_part_falls_short_only_past_both_its_own_and_the_prompt_s_bound() -> None:
    """A part the bank barely varies along (its own range is tiny) is not short by a gap
    that is large for it but small beside the prompt's range: that is noise."""
    bank = _bank()
    bank.embeddings[:, 4] *= 0.1
    text = (_axis(0) + _axis(4)) / 2 ** 0.5
    scene = SceneCheck.from_bank(bank, text, 16, _axis(4)[None], [0])
    own, whole = 0.5 * float(scene.part_ranges[0]), 0.25 * scene.prompt_range
    assert own < whole
    target = float(scene.part_targets[0])
    between = _axis(4, target - (own + whole) / 2)
    beyond = _axis(4, target - 2 * whole)
    assert scene.absent(torch.stack([between, beyond])) == [False, True]


def test_a_two_thing_prompt_lacks_what_it_names_when_either_thing_is_missing() -> None:
    bank = _bank()
    text = (_axis(0) + _axis(1) + _axis(2) + _axis(3)) / 2
    parts = torch.stack([_axis(1), _axis(0), _axis(3), _axis(2)])
    first_missing = _axis(0, -3) + _axis(1, -3) + _axis(2, 3) + _axis(3, 3)
    both_there = _axis(0, 3) + _axis(1, -3) + _axis(2, -3) + _axis(3, 3)
    fit = check_prompt_fit(bank, text, torch.stack([first_missing, both_there]), "p", top=16,
                           part_embeddings=parts, part_clauses=[0, 0, 1, 1])
    assert fit.absent == [True, False]


def test_a_scene_check_saved_in_an_edit_judges_as_it_did_at_training() -> None:
    bank, text, parts = _absent_case()
    scene = SceneCheck.from_bank(bank, text, 16, parts, [0, 0])
    again = SceneCheck.from_tensors(scene.tensors())
    g = torch.Generator().manual_seed(3)
    images = torch.randn(20, D, generator=g) * 3
    assert again.absent(images) == scene.absent(images)
    assert again.already(images) == scene.already(images)
    assert again.acts_on(images) == [not (a or b) for a, b in
                                     zip(scene.absent(images), scene.already(images))]
    with pytest.raises(ValueError, match="clause numbers"):
        SceneCheck.from_bank(bank, text, 16, parts, [0])


def test_at_apply_the_reach_is_read_per_unit_of_strength() -> None:
    bank, text, _ = _absent_case()
    scene = SceneCheck.from_bank(bank, text, 16)
    start = [0.0]
    half_way = (text * scene.best_score * 0.3)[None]  # 0.3 of the way to the best samples
    assert scene.off_target(start, half_way, [0]) == ([], [0])          # short at strength 1
    assert scene.off_target(start, half_way, [0], strength=0.5) == ([], [])  # 0.6 at 0.5
    far = (text * (scene.best_score + 5 * scene.prompt_range))[None]
    assert scene.off_target(start, far, [0]) == ([0], [])


def test_after_training_short_and_far_edits_are_left_unchanged_with_a_warning() -> None:
    fit = PromptFit(1.0, [False, False, False, True], [], start_scores=[0.0, 0.0, 0.0, 1.0],
                    best_score=1.0, prompt_range=1.0)
    text = torch.tensor([1.0, 0.0])
    edited = torch.tensor([[0.9, 0.0], [0.2, 0.0], [3.0, 0.0], [0.0, 0.0]])
    fit.judge_outcome("a red square", text, edited)
    assert fit.reached[:3] == [0.9, 0.2, 3.0]
    assert fit.off_target == [False, True, True, False]  # row 3 already matched: not judged
    assert fit.unchanged_rows() == [1, 2, 3]
    assert any("image(s) 1 got only 20%" in w for w in fit.warnings)
    assert any("image(s) 2 moved the CLIP 2.0 of the prompt's range past" in w
               for w in fit.warnings)


def test_the_fit_warnings_read_in_full() -> None:
    bank = _bank()
    fit = check_prompt_fit(bank, _axis(5), torch.zeros(1, D), "qwzx", top=16)
    assert fit.warnings == [
        "prompt 'qwzx': the CLIP finds nothing like it in this generator's pictures (it "
        "separates them 0.00 as well as the clearest direction; at least 0.25 expected, or "
        "two groups of them), so the edit changes nothing; describe something the generator "
        "draws"]
    already = check_prompt_fit(bank, _axis(0), torch.stack([_axis(0, 9.0)] * 2), "a red", 16)
    assert already.warnings == ["prompt 'a red': image(s) 0, 1 already match it as well as "
                                "the generator's best samples do, so they are left unchanged"]
    bank2, text, parts = _absent_case()
    lacking = _axis(0, -3) + _axis(1, -3)
    absent = check_prompt_fit(bank2, text, torch.stack([lacking, _axis(0, 1.2), lacking]),
                              "a red square", 16, part_embeddings=parts, part_clauses=[0, 0])
    assert absent.warnings == [
        "prompt 'a red square': image(s) 0, 2 seem to lack what it names (with any one word "
        "left out, the rest is still far from the generator's best pictures of the prompt), "
        "so they are left unchanged; name something in the image, or switch this check off "
        "(coral train --no-absent-check; Train Edit Advanced: absent_check off)"]


def test_the_after_training_warnings_read_in_full() -> None:
    fit = PromptFit(1.0, [False] * 4, [], start_scores=[0.0] * 4, best_score=1.0,
                    prompt_range=1.0)
    edited = torch.tensor([[0.2, 0.0], [0.3, 0.0], [3.0, 0.0], [4.0, 0.0]])
    fit.judge_outcome("p", torch.tensor([1.0, 0.0]), edited)
    assert fit.warnings == [
        "prompt 'p': the edit of image(s) 0, 1 got only 20% of the way to the generator's "
        "best pictures of it, so they are left unchanged: the prompt may name something the "
        "image lacks, or a change this edit cannot make (try more steps)",
        "prompt 'p': the edit of image(s) 2, 3 moved the CLIP 3.0 of the prompt's range past "
        "the generator's own best pictures of it, so they are left unchanged: the CLIP "
        "reacts to words that name nothing this generator draws; describe something it draws"]


def test_reach_and_past_are_kept_to_three_places() -> None:
    assert reach_of([0.0], [1 / 3], 1.0) == [0.333]
    assert past([1 + 1 / 3], 1.0, 1.0) == [0.333]


def test_the_bank_s_figures_are_the_best_samples_against_the_mean() -> None:
    bank = _bank()
    scores = bank.embeddings @ _axis(0)
    best = float(scores.topk(16).values.mean())
    fit = check_prompt_fit(bank, _axis(0), torch.zeros(1, D), "x", top=16)
    assert fit.best_score == pytest.approx(best, rel=1e-5)
    assert fit.prompt_range == pytest.approx(best - float(scores.mean()), rel=1e-5)
    assert 0.5 < fit.relative_range <= 1.0 + 1e-6  # one axis of five: near the clearest


def test_the_clearest_direction_is_looked_for_on_both_sides() -> None:
    """All variance along axis 0, skewed: a few samples far on the negative side. The prompt
    pointing there is the clearest direction (relative range 1), the other side is not."""
    emb = torch.zeros(400, D)
    emb[:, 0] = 0.1
    emb[:10, 0] = -4.0
    emb[:, 1] = torch.linspace(-0.01, 0.01, 400)
    bank = SampleBank(torch.zeros(400, 3), emb, "g", "c")
    neg = check_prompt_fit(bank, _axis(0, -1.0), torch.zeros(1, D), "x", top=16)
    pos = check_prompt_fit(bank, _axis(0), torch.zeros(1, D), "x", top=16)
    assert neg.relative_range == pytest.approx(1.0, rel=1e-4)
    assert pos.relative_range < 0.2


def test_a_bank_of_small_scores_is_judged_by_its_own_scale() -> None:
    bank = _bank()
    bank.embeddings.mul_(0.05)  # every range about 0.1
    fit = check_prompt_fit(bank, _axis(0), torch.stack([_axis(0, 1.0), _axis(0, -1.0)]),
                           "x", top=16)
    assert 0.5 < fit.relative_range <= 1.0 + 1e-6
    assert fit.already == [True, False]
    bank2, text, parts = _absent_case()
    bank2.embeddings.mul_(0.05)
    lacking = (_axis(0, -3) + _axis(1, -3)) * 0.05
    fit = check_prompt_fit(bank2, text, lacking[None], "a red square", 16,
                           part_embeddings=parts, part_clauses=[0, 0])
    assert fit.absent == [True]


def test_a_prompt_the_bank_cannot_tell_apart_never_finds_anything_there_or_missing() -> None:
    bank = _bank()
    parts = torch.stack([_axis(5), _axis(5, 2.0)])
    fit = check_prompt_fit(bank, _axis(5), torch.stack([_axis(0, 3.0), _axis(5, -3.0)]),
                           "qwzx blorp", 16, part_embeddings=parts, part_clauses=[0, 0])
    assert fit.already == [False, False] and fit.absent == [False, False]


def test_a_part_is_read_freed_of_what_the_other_parts_of_its_clause_explain() -> None:
    """On this bank "a square" (axis 1) goes with "a red" (axis 0). A picture short on red by
    3 is short on square by 2.7 just through that: freed of it, the square is there."""
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(400, D, generator=g)
    emb[:, 1] = 0.9 * emb[:, 0] + 0.3 * emb[:, 1]
    emb[:, 5] = 0.0
    bank = SampleBank(torch.zeros(400, 3), emb, "g", "c")
    text = (_axis(0) + _axis(1)) / 2 ** 0.5
    parts = torch.stack([_axis(1), _axis(0)])
    image = (_axis(0, -3) + _axis(1, -2.7))[None]
    scene = SceneCheck.from_bank(bank, text, 16, parts, [0, 0])
    assert scene.part_coefs[0, 1] == pytest.approx(0.9, abs=0.1)
    assert scene.part_coefs[1, 0] != 0 and scene.part_coefs[0, 0] == 0
    assert scene.absent(image) == [False]
    raw = SceneCheck.from_tensors({k: v for k, v in scene.tensors().items()
                                   if k != "part_coefs"})  # an edit saved before the fit
    assert raw.part_coefs is None and raw.absent(image) == [True]
    apart = SceneCheck.from_bank(bank, text, 16, parts, [0, 1])  # two clauses: nothing shared
    assert float(apart.part_coefs.abs().max()) == 0.0


def test_a_scene_check_travels_in_a_file_with_every_figure() -> None:
    bank, text, parts = _absent_case()
    for scene in (SceneCheck.from_bank(bank, text, 16, parts, [0, 1]),
                  SceneCheck.from_bank(bank, text, 16)):
        tensors = scene.tensors()
        assert set(tensors) == {"text", "parts", "stats", "part_stats", "part_coefs"}
        again = SceneCheck.from_tensors(tensors)
        assert again.best_score == pytest.approx(scene.best_score)
        assert again.prompt_range == pytest.approx(scene.prompt_range)
        for name in ("text", "parts", "part_targets", "part_ranges", "part_clauses",
                     "part_coefs"):
            assert torch.equal(getattr(again, name), getattr(scene, name)), name
    assert SceneCheck.from_bank(bank, text, 16).tensors()["part_stats"].shape == (0, 3)
    scene = SceneCheck.from_bank(bank, text, 16, parts, [0, 0])
    own = [float(((bank.embeddings @ p).topk(16).values.mean() - (bank.embeddings @ p).mean()))
           for p in parts]
    assert scene.part_ranges.tolist() == pytest.approx(own, rel=0.05)


def test_a_scene_check_s_mistakes_are_named() -> None:
    bank, text, parts = _absent_case()
    with pytest.raises(ValueError) as err:
        SceneCheck.from_bank(bank, text, 16, parts, [0, 0, 1])
    assert str(err.value) == "3 clause numbers for 2 parts"


def test_at_apply_strength_one_is_the_default() -> None:
    bank, text, _ = _absent_case()
    scene = SceneCheck.from_bank(bank, text, 16)
    most_of_the_way = (text * scene.best_score * 0.8)[None]
    assert scene.off_target([0.0], most_of_the_way, [0]) == ([], [])
    assert scene.off_target([0.0], most_of_the_way, [0], strength=2.0) == ([], [0])


def test_a_bank_s_figures_do_not_depend_on_where_its_samples_sit() -> None:
    """Every sample moved by the same offset: ranges (best against the mean) are the same."""
    bank, text, parts = _absent_case()
    moved = SampleBank(bank.ws, bank.embeddings + torch.tensor([1.5, -2.0, 3.0, 2.0, 0.0, 1.0]),
                       "g", "c")
    here = check_prompt_fit(bank, _axis(0), torch.zeros(1, D), "x", top=16)
    there = check_prompt_fit(moved, _axis(0), torch.zeros(1, D), "x", top=16)
    assert there.relative_range == pytest.approx(here.relative_range, rel=1e-4)
    a = SceneCheck.from_bank(bank, text, 16, parts, [0, 1])
    b = SceneCheck.from_bank(moved, text, 16, parts, [0, 1])
    assert b.part_ranges.tolist() == pytest.approx(a.part_ranges.tolist(), rel=1e-4)
    assert b.prompt_range == pytest.approx(a.prompt_range, rel=1e-4)


def test_parts_after_a_lone_one_are_still_freed_and_each_other_part_gets_its_own_share() -> None:
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(400, D, generator=g)
    emb[:, 2] = 0.8 * emb[:, 1] + 0.2 * emb[:, 2]
    emb[:, 3] = 0.5 * emb[:, 1] - 0.9 * emb[:, 0] + 0.2 * emb[:, 3]
    bank = SampleBank(torch.zeros(400, 3), emb, "g", "c")
    text = (_axis(0) + _axis(1) + _axis(2)) / 3 ** 0.5
    lone_first = SceneCheck.from_bank(bank, text, 16, torch.stack([_axis(4), _axis(1),
                                                                  _axis(2)]), [0, 1, 1])
    assert float(lone_first.part_coefs[2, 1]) == pytest.approx(0.8, abs=0.15)
    three = SceneCheck.from_bank(bank, text, 16, torch.stack([_axis(3), _axis(0), _axis(1)]),
                                 [0, 0, 0])
    c0, c1 = float(three.part_coefs[0, 1]), float(three.part_coefs[0, 2])
    assert c0 == pytest.approx(-0.9, abs=0.15) and c1 == pytest.approx(0.5, abs=0.15)
    old = SceneCheck.from_tensors({k: v for k, v in three.tensors().items()
                                   if k != "part_coefs"})
    assert torch.equal(old.tensors()["part_coefs"], torch.zeros(3, 3))  # re-saved: raw scores


def test_part_words_are_read_without_their_punctuation() -> None:
    assert prompt_parts("a. dog") == []        # "a." is an article, not a second word
    assert (0, "a hat.") in prompt_parts("an orange hat.")


def test_a_text_s_range_is_its_best_samples_mean_score_above_the_bank_s_mean() -> None:
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0], [7.0, 0.0]])
    bank = SampleBank(torch.zeros(4, 3), emb, "g", "c")
    assert text_range(bank, torch.tensor([1.0, 0.0]), top=2) == pytest.approx(6.0 - 4.0)
    assert text_range(bank, torch.tensor([[0.5, 9.0]]), top=1) == pytest.approx(3.5 - 2.0)
    assert text_range(bank, torch.tensor([1.0, 0.0]), top=10) == pytest.approx(0.0)  # all
