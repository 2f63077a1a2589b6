"""The prompt fit check's rules on a bank whose geometry is known: what a prompt names, when
it has nothing to aim at, when an image already shows it or lacks it, how far an edit may
move the CLIP, and a scene check that travels in an edit file and judges alike."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from coral_core.editing.fit import (ALREADY_MARGIN, MAX_OVERSHOOT, MAX_REACH, MIN_REACH,
                                    MIN_RELATIVE_RANGE, PromptFit, SceneCheck,
                                    check_prompt_fit, off_target_rows, past, prompt_clauses,
                                    prompt_parts, reach_of)
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
    assert prompt_parts("a red square on a blue background") == [
        (0, "a square"), (0, "a red"), (1, "a background"), (1, "a blue")]
    assert prompt_parts("An orange circle") == [(0, "A circle"), (0, "An orange")]
    assert prompt_parts("a red apple") == [(0, "an apple"), (0, "a red")]
    assert prompt_parts("a red Apple") == [(0, "an Apple"), (0, "a red")]
    assert prompt_parts("a dog") == []                      # one content word: no parts
    assert prompt_parts("a dog on a blue sofa") == [(1, "a sofa"), (1, "a blue")]
    assert prompt_parts("the dog.") == []                   # punctuation is no word


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


# ---- the checks before training

def test_a_prompt_the_bank_cannot_tell_apart_has_nothing_to_aim_at() -> None:
    bank = _bank()
    images = torch.randn(3, D)
    fit = check_prompt_fit(bank, _axis(5), images, "qwzx", top=16)
    assert fit.relative_range < MIN_RELATIVE_RANGE and fit.aimless
    assert len(fit.warnings) == 1 and "finds nothing like it" in fit.warnings[0]
    assert fit.unchanged_rows() == [0, 1, 2]
    clear = check_prompt_fit(bank, _axis(0), images, "a red square", top=16)
    assert clear.relative_range > 0.5 and not clear.aimless and clear.warnings == []


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
