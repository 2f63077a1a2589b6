"""The prior's region: where the prior's start changes the picture, and the segments split
there, as a user's held edit trains, saves and applies them."""
from __future__ import annotations

import pytest
import torch

from coral_core.editing.apply import apply_edits
from coral_core.editing.edit import Edit
from coral_core.editing.outcome import VISIBLE_STEP
from coral_core.editing.prior_region import (REST_WEIGHT, changed_cells, opening_width,
                                             otsu_threshold, split_pieces, split_where_changed,
                                             start_weights,
                                             visible_change)
from coral_core.editing.trainer import TrainConfig, train_edit


def test_otsu_splits_two_groups_between_them_whatever_their_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    for low_count, high_count in ((3000, 100), (100, 3000), (1500, 1500)):
        values = torch.cat([0.1 + 0.02 * torch.randn(low_count, generator=g),
                            0.8 + 0.02 * torch.randn(high_count, generator=g)])
        t = otsu_threshold(values)
        assert float(values[:low_count].max()) < t < float(values[low_count:].min())
    assert otsu_threshold(torch.full((50,), 0.3)) == pytest.approx(0.3)


def _between_class_variance(values: torch.Tensor, t: float) -> float:
    low, high = values[values <= t], values[values > t]
    if not len(low) or not len(high):
        return 0.0
    return len(low) * len(high) * float(low.mean() - high.mean()) ** 2 / len(values) ** 2


def test_otsu_finds_the_best_split_of_three_uneven_groups() -> None:
    """Against a brute-force search over every gap of the raw values: the histogram's
    threshold separates the groups as well, within what one of its bins can cost."""
    g = torch.Generator().manual_seed(2)
    values = torch.cat([0.05 * torch.rand(2000, generator=g),
                        0.3 + 0.1 * torch.rand(700, generator=g),
                        1.2 + 0.3 * torch.rand(300, generator=g)])
    best = max(values.unique().tolist(), key=lambda c: _between_class_variance(values, c))
    t = otsu_threshold(values)
    assert _between_class_variance(values, t) > 0.995 * _between_class_variance(values, best)
    assert torch.equal(values > t, values > best)  # the same two groups


def _pictures(step: float, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey picture and the same with a square raised by ``step`` and every pixel moved by
    up to ``noise`` (what the prior's start does: a clear change and a faint shimmer)."""
    g = torch.Generator().manual_seed(1)
    image = torch.zeros(1, 3, 16, 16)
    moved = image + noise * torch.rand(1, 3, 16, 16, generator=g)
    moved[:, :, 4:8, 6:12] += step
    return moved, image


def test_the_visible_change_is_the_clear_change_not_the_shimmer() -> None:
    moved, image = _pictures(step=0.5, noise=0.9 * VISIBLE_STEP)
    want = torch.zeros(1, 1, 16, 16)
    want[:, :, 4:8, 6:12] = 1
    assert torch.equal(visible_change(moved, image), want)
    # a change no eye sees is no region, however Otsu would split it
    faint, image = _pictures(step=0.5 * VISIBLE_STEP, noise=0.2 * VISIBLE_STEP)
    assert not visible_change(faint, image).any()
    # each picture of a batch is judged by its own threshold
    both = visible_change(torch.cat([moved, faint]), torch.cat([image, image]))
    assert torch.equal(both[0], want[0]) and not both[1].any()


def test_an_outline_that_moved_is_no_region_but_the_milder_change_beside_it_is() -> None:
    """What the prior of "a blue background" does: the background shifts a little, the
    head's outline a lot but one pixel wide. The region is the background."""
    image = torch.zeros(1, 3, 32, 32)
    moved = image.clone()
    moved[:, :, :, :16] += 0.2           # the background (left half) shifts mildly
    moved[:, :, 4:28, 20] += 1.5         # a 1-px outline jumps
    got = visible_change(moved, image)
    assert torch.equal(got[0, 0, :, :16], torch.ones(32, 16))
    assert not got[0, 0, :, 16:].any()
    assert opening_width(32) == opening_width(64) == 3 and opening_width(1024) == 49
    # the same at 128 px on a grey picture, with an outline 4 px wide (7 px opening)
    image = torch.full((1, 3, 128, 128), 0.3)
    moved = image.clone()
    moved[:, :, :, :64] -= 0.2
    moved[:, :, 8:120, 80:84] += 1.5
    got = visible_change(moved, image)
    assert got.shape == (1, 1, 128, 128)
    assert got[0, 0, :, :64].all() and not got[0, 0, :, 64:].any()


def test_a_cell_with_any_changed_pixel_is_changed() -> None:
    changed = torch.zeros(1, 1, 8, 8)
    changed[0, 0, 5, 2] = 1  # one pixel of cell (2, 1) at 4x4 cells
    cells = changed_cells(changed, 4)
    assert cells.shape == (1, 1, 4, 4) and cells.sum() == 1 and cells[0, 0, 2, 1] == 1


def test_split_pieces_keep_a_partition_and_put_the_changed_half_first() -> None:
    ids = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    pieces = torch.nn.functional.one_hot(ids, 3).permute(2, 0, 1)[None].float()
    cells = torch.zeros(1, 1, 4, 4)
    cells[0, 0, 1:3, 1:3] = 1  # a change across all three pieces
    split = split_pieces(pieces, cells)
    assert split.shape == (1, 6, 4, 4)
    assert torch.equal(split.sum(1), torch.ones(1, 4, 4))
    assert torch.equal(split[:, :3].sum(1, keepdim=True), cells)
    assert torch.equal(split[:, :3] + split[:, 3:], pieces)
    # a piece the prior changes mostly is changed whole: its region is that piece
    cells[0, 0, 0, 0] = cells[0, 0, 0, 1] = 1  # now 3 of piece 0's 4 cells
    split = split_pieces(pieces, cells)
    assert torch.equal(split[:, 0], pieces[:, 0]) and not split[:, 3].any()
    assert torch.equal(split[:, 1], pieces[:, 1] * cells[:, 0])  # 1 of 4: still split
    cells[0, 0, 0, 2] = 1  # 2 of piece 1's 4 cells: half is enough
    assert torch.equal(split_pieces(pieces, cells)[:, 1], pieces[:, 1])
    assert torch.equal(split.sum(1), torch.ones(1, 4, 4))
    assert start_weights(3, 0.5).tolist() == [0.5] * 3 + [pytest.approx(REST_WEIGHT)] * 3


def test_a_background_repainted_more_in_the_middle_than_at_its_frame_stays_whole() -> None:
    """What the prior's start of "a green background" does on a red one: the whole background
    changes, the middle more than a frame along the border, and the object too. Otsu's
    threshold alone cuts the background into a changed middle and an unchanged frame, which the
    edit then never selects (the frame of the old colour); counting the cells changed by half
    the threshold, the background goes whole to the changed half. A change the threshold puts
    only in part of a piece (hair growing over a corner of the background) still splits it."""
    image = torch.zeros(1, 3, 32, 32)
    moved = image.clone()
    moved[:, :, :, :] += 0.9                 # the frame: repainted, less
    moved[:, :, 6:26, 6:26] += 0.9           # the middle: repainted most (1.8)
    moved[:, :, 12:20, 12:20] = 1.2          # the object, changed in between
    ids = torch.zeros(32, 32, dtype=torch.long)
    ids[12:20, 12:20] = 1
    pieces = torch.nn.functional.one_hot(ids, 2).permute(2, 0, 1)[None].float()
    cells = changed_cells(visible_change(moved, image), 32)
    background = pieces[:, 0]
    assert 0.3 < float((cells[:, 0] * background).sum() / background.sum()) < 0.5
    old = split_pieces(pieces, cells)
    assert old[:, 2].sum() > 300             # the old rule: an unchanged frame
    graded = changed_cells(visible_change(moved, image, 0.5), 32)
    split = split_pieces(pieces, cells, graded)
    assert torch.equal(split[:, 0], background) and not split[:, 2].any()
    assert torch.equal(split_where_changed(pieces, moved, image, 0.5), split)
    assert torch.equal(split_where_changed(pieces, moved, image, 1.0), old)
    assert torch.equal(split.sum(1), torch.ones(1, 32, 32))
    # a change confined to a corner of the background still splits it there
    corner = image.clone()
    corner[:, :, :10, :10] += 1.5
    cells = changed_cells(visible_change(corner, image), 32)
    graded = changed_cells(visible_change(corner, image, 0.5), 32)
    split = split_pieces(pieces, cells, graded)
    assert torch.equal(split[:, 0], background * cells[:, 0])
    assert float(split[:, 2].sum()) == float(background.sum()) - 100
    # the share never reaches below one visible grey level
    faint = image + 0.9 * VISIBLE_STEP
    faint[:, :, :4, :4] += 1.0
    assert int(visible_change(faint, image, 0.01).sum()) == 16


def test_the_graded_share_is_a_share(G) -> None:
    from coral_core.errors import InputError

    TrainConfig("p", prior_region_graded=1.0).validate(G)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="prior_region_graded"):
            TrainConfig("p", prior_region_graded=bad).validate(G)


def test_a_held_edit_splits_its_segments_where_the_prior_acts_and_applies_as_trained(
        G, clip, tmp_path) -> None:
    """As a user's --hold-to-prior edit: the saved edit holds the split segments (twice the
    pieces, a partition of the picture), the summary says how much of it the prior changes,
    and applying the saved file gives what training gave. prior_region off, or a free
    direction, keeps the catalogue's pieces."""
    ws = G.mapping_ws(G.z_from_seeds([7]))
    common = dict(prompt="a red background", steps=4, batch=1, seed=7, catalogue_dir=tmp_path,
                  prior_samples=32, prior_top=4, check_fit=False, along_prior=True,
                  prune_at=0.5, contest_steps=1,
                  prior_region_graded=1.0)  # the random generator's start repaints it all
    held = train_edit(G, clip, TrainConfig(**common), latents=ws).edit
    pieces = TrainConfig("p").segment_pieces
    assert held.segments is not None and held.segments.shape[1] == 2 * pieces
    assert torch.allclose(held.segments.sum(1), torch.ones_like(held.segments[:, 0]))
    share = held.info["prior"]["region_share"][0]
    assert 0 < share < 1
    assert float(held.segments[:, :pieces].sum(1).mean()) == pytest.approx(share, abs=1e-3)
    path = held.save(tmp_path / "held.safetensors")
    again = apply_edits(G, ws, [Edit.load(path)])
    first = apply_edits(G, ws, [held])
    assert torch.equal(again.edited, first.edited)
    for off in ({"prior_region": False}, {"along_prior": False}):
        edit = train_edit(G, clip, TrainConfig(**{**common, **off}), latents=ws).edit
        assert edit.segments is None and "region_share" not in edit.info["prior"]
    # asked for with a free direction, it splits too
    free = train_edit(G, clip, TrainConfig(**{**common, "along_prior": False,
                                              "prior_region": True}), latents=ws).edit
    assert free.segments is not None and free.segments.shape[1] == 2 * pieces


def test_prior_region_follows_the_held_direction_unless_set() -> None:
    assert TrainConfig("p").prior_region_for(True) is True
    assert TrainConfig("p").prior_region_for(False) is False
    assert TrainConfig("p", prior_region=False).prior_region_for(True) is False
    assert TrainConfig("p", prior_region=True).prior_region_for(False) is True


def test_prior_region_is_on_off_or_automatic(G) -> None:
    from coral_core.errors import InputError

    for value in (None, True, False):
        TrainConfig("p", prior_region=value).validate(G)
    with pytest.raises(InputError, match="prior_region must be one of"):
        TrainConfig("p", prior_region="yes").validate(G)  # type: ignore[arg-type]
