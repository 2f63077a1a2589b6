"""Applying edits as a user's batch meets them: strengths, thresholds, stacks, chained
clauses, the scene check's verdicts and warnings, chunked batches with progress, and sweeps.

Edits are built by hand (``handmade_edits``) and the CLIP is a stand-in whose embeddings the
test chooses per image (``ChosenClip``), so every verdict has a known answer and the whole
file runs in seconds.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from coral_core.editing.apply import (ApplyResult, SceneVerdict, apply_edits, apply_in_chunks,
                                      strength_sweep)
from coral_core.editing.fit import SceneCheck
from coral_core.errors import EditMismatchError, InputError
from handmade_edits import ss_edit

DIM = 4
E = torch.eye(DIM)


class ChosenClip:
    """A CLIP stand-in: each original image embeds as the test chose, and an edited image as
    the test chose for the original it came from (the nearest one)."""

    def __init__(self, originals: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                 name: str = "chosen1") -> None:
        self.originals, self.before, self.after, self.name = originals, before, after, name
        self.calls = 0

    def fingerprint(self) -> str:
        return self.name

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        dist = torch.cdist(images.flatten(1), self.originals.flatten(1))
        nearest = dist.argmin(1)
        same = dist.gather(1, nearest[:, None])[:, 0] < 1e-3  # (another batch: rounding)
        return torch.where(same[:, None], self.before[nearest], self.after[nearest])


def _check() -> SceneCheck:
    """A scene check on a 4-d embedding space: the prompt is axis 0 (best samples score 1,
    range 0.5); its two parts, of one clause, are axes 1 and 2. An image embedded on axis 0
    already shows the prompt; on axis 3, neither part: it lacks what the prompt names; on
    axis 1, one part is there: the edit acts."""
    return SceneCheck(E[0].clone(), 1.0, 0.5, E[1:3].clone(), torch.ones(2),
                      torch.full((2,), 0.2), torch.zeros(2), torch.zeros(2, 2))


@pytest.fixture(scope="module")
def ws(G) -> torch.Tensor:
    return G.mapping_ws(G.z_from_seeds([10, 11, 12, 13]))


@pytest.fixture(scope="module")
def originals(G, ws) -> torch.Tensor:
    return G.synthesize_with_features(ws, noise=G.make_noise(4, "const"))[0]


def _checked_edit(G, **fields) -> object:
    return ss_edit(G, scene_check=_check(), scene_check_clip="chosen1", **fields)


def _clip(originals: torch.Tensor, after_scores: list[float], start: float = 0.0
          ) -> ChosenClip:
    """Rows 0-3 start already there, lacking, acting and acting (rows 2 and 3 with the prompt
    score ``start``); after the edit each row's prompt score is ``after_scores`` more."""
    before = torch.stack([E[0], E[3], E[1] + start * E[0], E[1] + start * E[0]])
    after = before + torch.tensor(after_scores)[:, None] * E[0]
    return ChosenClip(originals, before, after)


def test_strength_zero_is_the_original_exactly_and_strength_scales_the_direction(G, ws) -> None:
    edit = ss_edit(G, size=0.5)
    res = apply_edits(G, ws, [edit], strength=0.0)
    assert res.original is not None and torch.equal(res.edited, res.original)
    assert torch.equal(apply_edits(G, ws, [edit], 0.0, return_original=False).edited,
                       res.original)
    doubled = ss_edit(G, size=1.0)
    assert torch.allclose(apply_edits(G, ws, [edit], 2.0).edited,
                          apply_edits(G, ws, [doubled]).edited, atol=1e-5)
    plain = apply_edits(G, ws, [edit])
    assert not torch.equal(plain.edited, plain.original)


@pytest.mark.parametrize("strength,threshold,expect", [
    (100.5, None, "strength must be in -100..100"),
    (-100.5, None, "strength must be in -100..100"),
    (float("nan"), None, "strength must be a finite number"),
    ([1.0, float("inf")], None, "strength must be a finite number"),
    (1.0, 1.5, "threshold must be in 0..1"),
    (1.0, -0.01, "threshold must be in 0..1"),
    ([1.0, 1.0, 1.0], None, "3 strengths for 2 edits"),
    ([1.0], None, "1 strengths for 2 edits"),
])
def test_bad_strengths_and_thresholds_are_refused_by_name(G, ws, strength, threshold,
                                                          expect) -> None:
    with pytest.raises(InputError, match=expect):
        apply_edits(G, ws, [ss_edit(G), ss_edit(G)], strength, threshold)


def test_no_edit_is_refused_and_bounds_are_accepted(G, ws) -> None:
    with pytest.raises(InputError, match="no edit given"):
        apply_edits(G, ws, [])
    for strength, threshold in ((100.0, 0.0), (-100.0, 1.0)):
        apply_edits(G, ws[:1], [ss_edit(G)], strength, threshold)


def test_each_edit_of_a_stack_takes_its_own_strength(G, ws) -> None:
    a, b = ss_edit(G, seed=1), ss_edit(G, "a green background", seed=2)
    alone = apply_edits(G, ws, [a]).edited
    assert torch.allclose(apply_edits(G, ws, [a, b], [1.0, 0.0]).edited, alone, atol=1e-5)
    both = apply_edits(G, ws, [a, b])
    assert not torch.allclose(both.edited, alone, atol=1e-3)
    assert len(both.masks) == 2 and both.prompts == ["a red circle", "a green background"]


def test_the_cheap_path_gives_the_same_edited_images(G, ws) -> None:
    for edit in (ss_edit(G), ss_edit(G, max_layer=4), ss_edit(G, only_layers=[3, 5])):
        full = apply_edits(G, ws, [edit])
        cheap = apply_edits(G, ws, [edit], return_original=False)
        assert cheap.original is None
        assert torch.allclose(cheap.edited, full.edited, atol=1e-5)


def test_a_threshold_hardens_the_masks(G, ws) -> None:
    weak = ss_edit(G, weights=torch.full((1, len(G.conv_layers), 3), 0.3))
    res = apply_edits(G, ws, [weak], threshold=0.5)
    assert torch.equal(res.edited, res.original)
    strong = apply_edits(G, ws, [weak], threshold=0.3)
    assert all(m is not None and float(m.min()) == 1 for m in strong.masks[0])


def test_a_per_image_edit_is_refused_on_other_latents_unless_transferred(G, ws) -> None:
    edit = ss_edit(G, rows=4, latents=ws.clone())
    assert apply_edits(G, ws, [edit]).transferred == []
    other = G.mapping_ws(G.z_from_seeds([20, 21, 22, 23]))
    with pytest.raises(EditMismatchError):
        apply_edits(G, other, [edit])
    assert apply_edits(G, other, [edit], transfer=True).transferred == ["a red circle"]
    with pytest.raises(EditMismatchError, match="4 directions but 2 latents"):
        apply_edits(G, ws[:2], [ss_edit(G, rows=4)])
    res = apply_edits(G, ws, [edit], clip=ChosenClip(ws, E, E))  # type: ignore[arg-type]
    assert res.scenes == [None] and res.warnings() == []


def test_the_scene_check_leaves_scenes_alone_and_says_why(G, ws, originals) -> None:
    clip = _clip(originals, [0.0, 0.0, 0.8, 2.0])
    res = apply_edits(G, ws, [_checked_edit(G)], clip=clip)  # type: ignore[arg-type]
    verdict = res.scenes[0]
    assert verdict is not None
    assert (verdict.already, verdict.absent, verdict.far, verdict.short) == ([0], [1], [3], [])
    assert verdict.start_scores == [1.0, 0.0, 0.0, 0.0]
    for row in (0, 1, 3):
        assert torch.equal(res.edited[row], originals[row]), row
    assert not torch.equal(res.edited[2], originals[2])
    text = res.warnings()
    assert len(text) == 3
    assert "image(s) 1 seem to lack what it names" in text[0]
    assert "image(s) 0 already match it" in text[1]
    assert "moved the CLIP far past" in text[2] and "image(s) 3" in text[2]


def test_an_edit_that_barely_acts_is_undone_there(G, ws, originals) -> None:
    clip = _clip(originals, [0.0, 0.0, 0.49, 0.5])
    res = apply_edits(G, ws, [_checked_edit(G)], clip=clip)  # type: ignore[arg-type]
    verdict = res.scenes[0]
    assert verdict is not None and verdict.short == [2] and verdict.far == []
    assert torch.equal(res.edited[2], originals[2])
    assert not torch.equal(res.edited[3], originals[3])
    assert "got under half way" in res.warnings()[-1] and "image(s) 2" in res.warnings()[-1]


def test_the_reach_is_read_per_unit_of_strength(G, ws, originals) -> None:
    """Half strength is meant to go half way: 0.4 of the way at strength 0.5 is 0.8."""
    clip = _clip(originals, [0.0, 0.0, 0.4, 0.2])
    res = apply_edits(G, ws, [_checked_edit(G)], 0.5, clip=clip)  # type: ignore[arg-type]
    assert res.scenes[0] is not None and res.scenes[0].short == [3]
    reversed_ = apply_edits(G, ws, [_checked_edit(G)], -1.0,
                            clip=_clip(originals, [0.0, 0.0, 0.0, 0.0]))  # type: ignore[arg-type]
    assert reversed_.scenes[0] is not None and reversed_.scenes[0].short == []


def test_far_needs_both_the_ratio_and_the_overshoot(G, ws, originals) -> None:
    """The best samples score 1 with a range of 0.5. From a start of 0.9, +0.18 is 1.8 times
    the way but only 0.16 ranges past the best: not far (the overshoot bound is 0.2); +0.22
    is 2.2 times the way and 0.24 ranges past: far. From 0, +1.2 is 0.4 ranges past the best
    but only 1.2 times the way: not far either."""
    clip = _clip(originals, [0.0, 0.0, 0.18, 0.22], start=0.9)
    verdict = apply_edits(G, ws, [_checked_edit(G)], clip=clip).scenes[0]  # type: ignore[arg-type]
    assert verdict is not None and verdict.far == [3] and verdict.short == []
    clip = _clip(originals, [0.0, 0.0, 1.2, 1.2])
    verdict = apply_edits(G, ws, [_checked_edit(G)], clip=clip).scenes[0]  # type: ignore[arg-type]
    assert verdict is not None and verdict.far == [] and verdict.short == []


def test_a_stack_is_not_judged_for_reach(G, ws, originals) -> None:
    clip = _clip(originals, [0.0, 0.0, 5.0, 5.0])
    res = apply_edits(G, ws, [_checked_edit(G), ss_edit(G, "a blue sky", seed=3)],
                      clip=clip)  # type: ignore[arg-type]
    assert res.scenes[0] is not None and res.scenes[0].far == []
    assert res.scenes[1] is not None and res.scenes[1].left() == []
    assert not torch.equal(res.edited[0], originals[0])  # the second edit acts on row 0


def test_the_rows_every_edit_leaves_stay_exactly_as_they_were(G, ws, originals) -> None:
    """Exactly, not up to the blend's rounding: with masks of 0.3 a blend of a row with itself
    is not always bit for bit the row."""
    clip = _clip(originals, [0.0, 0.0, 0.8, 0.8])
    soft = torch.full((1, len(G.conv_layers), 3), 0.3)
    res = apply_edits(G, ws, [_checked_edit(G, weights=soft)], clip=clip)  # type: ignore[arg-type]
    assert torch.equal(res.edited[:2], originals[:2])
    res = apply_edits(G, ws, [_checked_edit(G), _checked_edit(G, seed=4)],
                      clip=clip)  # type: ignore[arg-type]
    assert torch.equal(res.edited[:2], originals[:2])
    assert not torch.equal(res.edited[2:], originals[2:])


def test_another_clip_leaves_the_scenes_unchecked_and_says_so(G, ws, originals) -> None:
    clip = _clip(originals, [0.0] * 4)
    clip.name = "someone_else"
    edit = _checked_edit(G, clip_model_id="ViT-B-32/openai")
    res = apply_edits(G, ws, [edit], clip=clip)  # type: ignore[arg-type]
    verdict = res.scenes[0]
    assert verdict is not None and verdict.left() == [] and verdict.start_scores == []
    assert res.warnings() == ["edit 'a red circle': scenes not checked (the edit was trained "
                              "with another CLIP (ViT-B-32/openai); give that CLIP)"]
    assert not torch.equal(res.edited[0], originals[0])
    assert clip.calls == 0


def test_without_a_clip_or_a_check_every_scene_is_edited(G, ws, originals) -> None:
    res = apply_edits(G, ws, [_checked_edit(G)])
    assert res.scenes[0] is not None and res.scenes[0].left() == [] and res.warnings() == []
    assert not any(torch.equal(res.edited[i], originals[i]) for i in range(4))
    clip = _clip(originals, [0.0] * 4)
    res = apply_edits(G, ws, [ss_edit(G)], clip=clip)  # type: ignore[arg-type]
    assert res.scenes[0] is not None and res.scenes[0].left() == [] and clip.calls == 0


def test_scenes_where_the_edit_selects_nothing_are_named(G, ws, originals) -> None:
    segs = torch.zeros(4, 2, 8, 8)
    segs[:, 0] = 1
    segs[3] = 0  # the fourth scene has no segment the edit selects
    clip = _clip(originals, [0.0, 0.0, 0.8, 0.8])
    res = apply_edits(G, ws, [_checked_edit(G, k=2, segments=segs)],
                      clip=clip)  # type: ignore[arg-type]
    verdict = res.scenes[0]
    assert verdict is not None and verdict.empty == [3]  # rows 0 and 1 are already left
    assert any("selects no region in image(s) 3" in w for w in res.warnings())
    composite = apply_edits(G, ws, [_checked_edit(G, k=2, segments=segs, composite=True)],
                            clip=clip)  # type: ignore[arg-type]
    assert composite.scenes[0] is not None and composite.scenes[0].empty == [3]
    assert torch.equal(composite.edited[3], originals[3])


def test_a_composite_keeps_the_original_outside_the_region(G, ws, originals) -> None:
    segs = torch.zeros(1, 2, 8, 8)
    segs[:, 0, :, :4] = 1
    segs[:, 1, :, 4:] = 1
    weights = torch.zeros(1, len(G.conv_layers), 2)
    weights[0, :, 0] = 1.0
    edit = ss_edit(G, k=2, segments=segs, weights=weights, composite=True)
    res = apply_edits(G, ws, [edit])
    right = G.img_resolution // 2 + 2  # past the snapped edge
    assert torch.equal(res.edited[..., right:], originals[..., right:])
    assert not torch.equal(res.edited[..., :4], originals[..., :4])


def test_a_chained_prompt_gives_each_pixel_the_last_clause_that_moved_it(G, ws) -> None:
    first = ss_edit(G, "a red circle", seed=5)
    second = ss_edit(G, "a green background", seed=6)
    chained = replace(first, then=second)
    res = apply_edits(G, ws, [chained])
    assert res.prompts == ["a red circle", "a green background"] and len(res.masks) == 2
    alone = apply_edits(G, ws, [second]).edited
    assert torch.allclose(res.edited, alone)  # the second clause moved every pixel
    segs = torch.zeros(1, 2, 8, 8)
    segs[:, 0, :, :4] = 1
    segs[:, 1, :, 4:] = 1
    weights = torch.zeros(1, len(G.conv_layers), 2)
    weights[0, :, 1] = 1.0
    right_only = ss_edit(G, "a green background", k=2, segments=segs, weights=weights,
                         composite=True, seed=6)
    res = apply_edits(G, ws, [replace(first, then=right_only)])
    left_alone = apply_edits(G, ws, [first]).edited
    right_alone = apply_edits(G, ws, [right_only]).edited
    moved = (right_alone - res.original).abs().amax(1, keepdim=True) > 0
    assert torch.equal(torch.where(moved, right_alone, left_alone), res.edited)


def test_chunks_give_one_call_s_result_and_report_progress(G, ws, originals) -> None:
    clip = _clip(originals, [0.0, 0.0, 0.8, 2.0])
    edit = _checked_edit(G)
    whole = apply_edits(G, ws, [edit], clip=clip)  # type: ignore[arg-type]
    seen: list[tuple[int, int]] = []
    parts = apply_in_chunks(G, ws, [edit], chunk=3, clip=clip,  # type: ignore[arg-type]
                            progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 4), (3, 4), (4, 4)]
    assert torch.allclose(parts.edited, whole.edited, atol=1e-5)
    assert parts.original is not None and torch.allclose(parts.original, whole.original,
                                                         atol=1e-5)
    assert [m is None for m in parts.masks[0]] == [m is None for m in whole.masks[0]]
    assert all(m.shape[0] == 4 for m in parts.masks[0] if m is not None)
    v, w = parts.scenes[0], whole.scenes[0]
    assert v is not None and w is not None
    assert (v.already, v.absent, v.far, v.short) == (w.already, w.absent, w.far, w.short)
    assert parts.warnings() == whole.warnings()
    assert parts.transferred == [] and parts.prompts == ["a red circle"]


def test_a_chunked_apply_can_be_cancelled_between_chunks(G, ws) -> None:
    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        apply_in_chunks(G, ws, [ss_edit(G)], chunk=2, progress=progress)


def test_a_per_image_edit_is_applied_in_one_go_whatever_the_chunk(G, ws) -> None:
    seen: list[tuple[int, int]] = []
    edit = ss_edit(G, rows=4, latents=ws.clone())
    res = apply_in_chunks(G, ws, [edit], chunk=1,
                          progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 4), (4, 4)] and res.edited.shape[0] == 4
    one = apply_in_chunks(G, ws, [ss_edit(G)], chunk=4, progress=lambda d, t: seen.append((d, t)))
    assert seen[-2:] == [(0, 4), (4, 4)] and one.edited.shape[0] == 4


def test_merged_verdicts_count_rows_from_the_batch_start() -> None:
    from coral_core.editing.apply import _merged

    a = SceneVerdict(already=[0], absent=[1], empty=[2], far=[0], short=[1])
    b = SceneVerdict(already=[1], unchecked="why")
    merged = _merged([a, b], [0, 5])
    assert merged is not None
    assert (merged.already, merged.absent, merged.empty, merged.far, merged.short) == \
        ([0, 6], [1], [2], [0], [1])
    assert merged.unchecked == "why"
    assert _merged([None, None], [0, 2]) is None
    assert a.offset(3).left() == [3, 4]
    assert a.left() == [0, 1]


def test_long_row_lists_are_cut_short_in_words() -> None:
    verdict = SceneVerdict(absent=list(range(15)))
    res = ApplyResult(torch.zeros(1), None, [], scenes=[verdict], prompts=["p"])
    assert "image(s) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 3 more seem" in res.warnings()[0]
    exact = ApplyResult(torch.zeros(1), None, [], scenes=[SceneVerdict(absent=list(range(12)))],
                        prompts=["p"])
    assert "11 seem" in exact.warnings()[0] and "more" not in exact.warnings()[0]


def test_all_warnings_put_training_s_first(G) -> None:
    edit = ss_edit(G, info={"warnings": ["trained on 2 scenes"]})
    res = ApplyResult(torch.zeros(1), None, [], scenes=[SceneVerdict(unchecked="no CLIP")],
                      prompts=["a red circle"])
    assert res.all_warnings([edit, ss_edit(G)]) == [
        "trained on 2 scenes", "edit 'a red circle': scenes not checked (no CLIP)"]


def test_a_sweep_runs_from_the_original(G, ws) -> None:
    edit = ss_edit(G, size=0.5)
    sweep = strength_sweep(G, ws[:2], edit, [0.0, 1.0, 2.0])
    assert sweep.shape == (3, 2, 3, G.img_resolution, G.img_resolution)
    assert torch.equal(sweep[0], apply_edits(G, ws[:2], [edit]).original)
    assert torch.allclose(sweep[2], apply_edits(G, ws[:2], [edit], 2.0).edited, atol=1e-6)


# ---- stacks, clauses and chunks in detail ----------------------------------------------------------

def test_in_a_stack_a_scene_one_edit_leaves_takes_only_the_others_change(G, ws,
                                                                         originals) -> None:
    """Rows 0 and 1 are left by the checked edit (already there, lacking): they get the plain
    edit's change alone."""
    clip = _clip(originals, [0.0, 0.0, 0.8, 0.8])
    plain = ss_edit(G, "a blue sky", seed=3, weights=torch.full((1, len(G.conv_layers), 3), 0.5))
    stacked = apply_edits(G, ws, [_checked_edit(G), plain], clip=clip)  # type: ignore[arg-type]
    alone = apply_edits(G, ws, [plain]).edited
    assert torch.allclose(stacked.edited[:2], alone[:2], atol=1e-5)
    assert not torch.allclose(stacked.edited[2:], alone[2:], atol=1e-3)
    off = apply_edits(G, ws, [_checked_edit(G), plain], [1.0, 0.0],
                      clip=clip)  # type: ignore[arg-type]
    assert torch.equal(off.edited[:2], originals[:2])  # the only active edit leaves them


def test_a_barely_moved_scene_is_not_judged(G, ws, originals) -> None:
    """A scene the edit changed by less than half an 8-bit step has no verdict (its CLIP
    score would read as 'short'); from half a step on it is judged."""
    edit = _checked_edit(G, size=0.05)
    change = (apply_edits(G, ws, [edit]).edited - originals).flatten(1).abs().amax(1)
    clip = _clip(originals, [0.0, 0.0, 0.0, 0.0])  # no scene moves its score: all would be short
    half_step = (2 / 255) / 2
    for strength in (0.0031 / float(change[2:].max()), 0.01 / float(change.min())):
        res = apply_edits(G, ws, [edit], strength, clip=clip)  # type: ignore[arg-type]
        unchecked = apply_edits(G, ws, [edit], strength).edited
        moved = (unchecked - originals).flatten(1).abs().amax(1)
        verdict = res.scenes[0]
        assert verdict is not None
        if float(moved[2:].max()) < half_step:
            assert verdict.short == [], strength
        else:
            assert float(moved[2:].min()) > half_step * 2.2
            assert verdict.short == [2, 3], strength


def test_a_per_image_edit_carrying_a_scene_check_applies_without_one(G, ws, originals) -> None:
    edit = ss_edit(G, rows=4, latents=ws.clone(), scene_check=_check(), scene_check_clip="chosen1")
    res = apply_edits(G, ws, [edit], clip=_clip(originals, [0.0] * 4))  # type: ignore[arg-type]
    assert res.scenes == [None] and not torch.equal(res.edited, originals)


def test_an_edit_acting_on_no_layer_selects_nothing_anywhere(G, ws, originals) -> None:
    clip = _clip(originals, [0.0, 0.0, 0.8, 0.8])
    edit = _checked_edit(G, only_layers=[len(G.conv_layers) + 1])  # the last W+ entry: no conv
    res = apply_edits(G, ws, [edit], clip=clip)  # type: ignore[arg-type]
    assert res.scenes[0] is not None and res.scenes[0].empty == [2, 3]
    assert torch.equal(res.edited, originals)


def test_each_scene_s_composite_region_is_its_own(G, ws, originals) -> None:
    segs = torch.zeros(4, 2, 8, 8)
    segs[0::2, 0, :, :4] = 1
    segs[0::2, 1, :, 4:] = 1
    segs[1::2, 0, :, 4:] = 1  # odd scenes: the selected segment is the right half
    segs[1::2, 1, :, :4] = 1
    weights = torch.zeros(1, len(G.conv_layers), 2)
    weights[0, :, 0] = 1.0
    res = apply_edits(G, ws, [ss_edit(G, k=2, segments=segs, weights=weights, composite=True)])
    assert torch.equal(res.edited[0::2, ..., 18:], originals[0::2, ..., 18:])
    assert torch.equal(res.edited[1::2, ..., :14], originals[1::2, ..., :14])
    assert not torch.equal(res.edited[1::2, ..., 18:], originals[1::2, ..., 18:])


def test_a_chained_prompt_passes_every_option_to_each_clause(G, ws, originals) -> None:
    weak = torch.full((1, len(G.conv_layers), 3), 0.7)  # whole masks under a 0.6 threshold
    first = ss_edit(G, seed=5, weights=weak)
    second = ss_edit(G, "a green background", seed=6, weights=weak)
    chained = replace(first, then=second)
    res = apply_edits(G, ws, [chained], [0.5], threshold=0.6)
    expect = apply_edits(G, ws, [second], 0.5, threshold=0.6).edited
    assert torch.allclose(res.edited, expect)
    per_image = replace(ss_edit(G, rows=4, latents=ws.clone()),
                        then=ss_edit(G, "b", rows=4, latents=ws.clone()))
    other = G.mapping_ws(G.z_from_seeds([30, 31, 32, 33]))
    moved = apply_edits(G, other, [per_image], transfer=True)
    assert moved.transferred == ["a red circle"]
    checked = replace(_checked_edit(G), then=_checked_edit(G, prompt="a green background"))
    clip = _clip(originals, [0.0, 0.0, 0.8, 0.8])
    verdicts = apply_edits(G, ws, [checked], clip=clip).scenes  # type: ignore[arg-type]
    assert [v.left() if v else None for v in verdicts] == [[0, 1], [0, 1]]


def test_chunks_keep_layers_without_masks_and_pass_the_threshold(G, ws) -> None:
    edit = ss_edit(G, only_layers=[2, 3], weights=torch.full((1, len(G.conv_layers), 3), 0.55))
    whole = apply_edits(G, ws, [edit], threshold=0.6)
    parts = apply_in_chunks(G, ws, [edit], threshold=0.6, chunk=3)
    assert [m is None for m in parts.masks[0]] == [i not in (1, 2) for i in range(7)]
    assert torch.allclose(parts.edited, whole.edited, atol=1e-5)
    assert torch.equal(parts.edited, parts.original)  # 0.55 is under the threshold


def test_chunks_refuse_a_per_image_edit_on_other_latents_unless_transferred(G, ws) -> None:
    edit = ss_edit(G, rows=2, latents=ws[:2].clone())
    other = G.mapping_ws(G.z_from_seeds([50, 51]))
    with pytest.raises(EditMismatchError):
        apply_in_chunks(G, other, [edit], chunk=1)
    res = apply_in_chunks(G, other, [edit], chunk=1, transfer=True)
    assert res.transferred == ["a red circle"]
    default = apply_in_chunks(G, ws, [ss_edit(G)])  # the memory budget's chunk: all four
    assert torch.allclose(default.edited, apply_edits(G, ws, [ss_edit(G)]).edited, atol=1e-5)


def test_warnings_read_in_full() -> None:
    verdicts = [None, SceneVerdict(absent=[0], already=[1], empty=[2], far=[3], short=[4],
                                   unchecked="why")]
    res = ApplyResult(torch.zeros(1), None, [], scenes=verdicts, prompts=["first", "p"])
    assert res.warnings() == [
        "edit 'p': scenes not checked (why)",
        "edit 'p': image(s) 0 seem to lack what it names, so they are left unchanged (switch "
        "the scene check off to edit them anyway)",
        "edit 'p': image(s) 1 already match it as well as the generator's best samples do, so "
        "they are left unchanged",
        "edit 'p': selects no region in image(s) 2, which stay as they were (a per-prompt "
        "edit's regions come from the scenes it was trained on; train a per-image edit for "
        "these)",
        "edit 'p': moved the CLIP far past the generator's own best pictures of it in image(s) "
        "3, so they are left unchanged: the CLIP reacts to words that name nothing this "
        "generator draws there; describe something it draws",
        "edit 'p': got under half way to the generator's best pictures of it in image(s) 4, so "
        "they are left unchanged: the change it learned does not take there (train a "
        "per-image edit for these)"]
    many = ApplyResult(torch.zeros(1), None, [], scenes=[SceneVerdict(absent=list(range(13)))],
                       prompts=["p"])
    assert "11 and 1 more seem" in many.warnings()[0]
    assert SceneVerdict(unchecked="why").offset(2).unchecked == "why"


def test_an_edit_of_an_unnamed_clip_says_so(G, ws, originals) -> None:
    clip = _clip(originals, [0.0] * 4)
    clip.name = "other"
    res = apply_edits(G, ws, [_checked_edit(G)], clip=clip)  # type: ignore[arg-type]
    assert "(the edit was trained with another CLIP (unknown); give that CLIP)" in \
        res.warnings()[0]
    with pytest.raises(InputError) as err:
        apply_edits(G, ws, [])
    assert str(err.value) == "no edit given"
