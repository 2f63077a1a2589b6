"""The eval's pixel scores say what a user sees: a perfect edit scores perfect, and a halo, a
border frame, a reshaped object or a leak each moves the score that names it."""
from __future__ import annotations

import torch

from coral_core.world.render import palette_rgb, render
from coral_core.world.scene import COLOUR_NAMES, random_scenes
from coral_core.world.scoring import (change_shares, grow, iou, outline, psnr_in,
                                      target_shares)


def _background_recoloured():
    """(the scenes, the first one, it with a background colour none of its parts has, that
    colour)."""
    scenes = random_scenes(8, 3)
    one = scenes.select(slice(0, 1)).clone()
    taken = {int(c) for c in one.colour[0]} | {int(one.background[0])}
    new = next(c for c in range(len(COLOUR_NAMES)) if c not in taken)
    after = one.clone()
    after.background[0] = new
    return scenes, one, after, new


def _scene_and_recoloured():
    _, one, after, new = _background_recoloured()
    (img, masks), (ideal, _) = render(one), render(after)
    return img[0], masks[0], ideal[0], new


def test_a_perfect_background_edit_scores_perfect() -> None:
    img, masks, ideal, new = _scene_and_recoloured()
    region = masks[0]
    shares = target_shares(ideal, palette_rgb("cpu"), new, region, 1 - region, border=True)
    assert shares["share_interior"] > 0.99
    assert shares["share_ring"] > 0.95 and shares["share_border"] > 0.99
    outside = region <= 0  # the part's support: an ideal edit changes nothing outside it
    assert psnr_in(ideal, img, outside) > 90
    assert psnr_in(ideal, ideal, region >= 0.5) > 90


def test_a_halo_and_a_frame_lower_the_ring_and_border_shares_only() -> None:
    img, masks, ideal, new = _scene_and_recoloured()
    region = masks[0]
    objects = region < 0.5
    halo = grow(objects, 2) & ~objects
    frame = torch.zeros_like(objects)
    frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = True, True, True, True
    damaged = torch.where((halo | frame)[None], img, ideal)
    s = target_shares(damaged, palette_rgb("cpu"), new, region, 1 - region, border=True)
    assert s["share_interior"] > 0.99
    assert s["share_ring"] < 0.5 and s["share_border"] < 0.8


def test_a_change_left_short_at_its_edge_shows_in_the_edge_share_only() -> None:
    img, masks, ideal, _ = _scene_and_recoloured()
    region = masks[0]
    full = change_shares(ideal, img, ideal, region)
    assert full == {"change_interior": 1.0, "change_edge": 1.0}
    assert change_shares(img, img, ideal, region) == {"change_interior": 0.0,
                                                      "change_edge": 0.0}
    objects = region < 0.5
    halo = grow(objects, 2) & ~objects
    short = change_shares(torch.where(halo[None], img, ideal), img, ideal, region)
    assert short["change_interior"] == 1.0 and 0.0 < short["change_edge"] < 0.9
    # a third of the way is not halfway; going past the ideal is
    third = change_shares(img + (ideal - img) / 3, img, ideal, region)
    past = change_shares(img + (ideal - img) * 1.5, img, ideal, region)
    assert third["change_interior"] == 0.0 and past["change_interior"] == 1.0
    # nothing to judge where the ideal changes nothing
    nothing = change_shares(img, img, img, region)
    assert all(v != v for v in nothing.values())


def test_outline_follows_the_pixels_and_a_reshaped_object_loses_iou() -> None:
    scenes = random_scenes(16, 5)
    i = next(i for i in range(16) if not bool(scenes.present[i, 1]))
    one = scenes.select(slice(i, i + 1)).clone()
    img, masks = render(one)
    truth = masks[0, 1] >= 0.5
    area = grow(truth, 6)
    read = outline(img[0], masks[0, 0] >= 0.99, area)
    assert iou(read, truth) > 0.9
    other = one.clone()
    other.shape[0, 0] = (int(one.shape[0, 0]) + 1) % 3
    img2, masks2 = render(other)
    area = grow(truth | (masks2[0, 1] >= 0.5), 6)
    assert iou(outline(img2[0], masks[0, 0] >= 0.99, area), read) < 0.8


def test_an_edit_is_scored_as_displayed_not_as_drawn() -> None:
    """A generator can draw past [-1, 1] (an edit pushed a red to 1.75); a user sees the
    clamped picture, so the eval scores that: raw and clamped overshoot score the same, and an
    ideal edit whose colours are only pushed further past the range still succeeds."""
    from coral_core.world import assets
    from coral_core.world.evaluate import EvalCase, score_case
    from coral_core.world.judge import load_judge

    judge = load_judge(assets.require(assets.world_assets("shapes").judge))
    scenes, one, after, new = _background_recoloured()
    (original, masks), (ideal, _) = render(one), render(after)
    case = EvalCase(0, "background", "a background", 0, after, masks[0, 0], None, new)
    overshoot = torch.where(masks[:, :1] >= 0.5, ideal * 1.8, ideal)
    assert float(overshoot.abs().max()) > 1.5
    raw = score_case(case, judge, scenes, original, overshoot, [])
    clamped = score_case(case, judge, scenes, original, overshoot.clamp(-1, 1), [])
    assert raw.keys() == clamped.keys()
    for key, value in raw.items():  # NaN (no named object) equals itself here
        assert value == clamped[key] or value != value and clamped[key] != clamped[key], key
    assert raw["success"] and raw["others_preserved"]
    assert raw["psnr_outside"] > 60
