"""The loss terms on inputs whose values are known: which layers the area term makes
dear, the CLIP term's global and directional forms, the leak term, the even-change term, and
the mask areas an edit reports."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from coral_core.editing.config import LossWeights
from coral_core.editing.losses import (area_betas, area_loss, clip_loss, clip_loss_per_image,
                                       leak_loss, mask_areas, tv_loss, uneven_change_loss,
                                       uneven_share)
from coral_core.errors import InputError

RES = (4, 8, 8, 16, 16, 32)
G = SimpleNamespace(conv_layers=[SimpleNamespace(resolution=r) for r in RES])


def test_spread_weighting_makes_coarse_layers_dear_in_proportion_to_their_reach() -> None:
    betas = area_betas(G, LossWeights())
    assert sum(betas) / len(betas) == pytest.approx(1.0)
    assert betas[0] / betas[-1] == pytest.approx(32 / 4)   # 1 / resolution
    assert betas[1] == betas[2] and betas[3] == betas[4]
    squared = area_betas(G, LossWeights(area_weighting="spread_area"))
    assert sum(squared) / len(squared) == pytest.approx(1.0)
    assert squared[0] / squared[-1] == pytest.approx((32 / 4) ** 2)


def test_the_other_weightings_and_a_list_of_ones_own() -> None:
    assert area_betas(G, LossWeights(area_weighting="uniform")) == [1.0] * len(RES)
    assert area_betas(G, LossWeights(area_weighting="resolution")) == [r / 32 for r in RES]
    assert area_betas(G, LossWeights(area_weighting="inverse_resolution")) == \
        [4 / r for r in RES]
    own = [0.5, 1, 2, 3, 4, 5]
    assert area_betas(G, LossWeights(area_layer_weights=own)) == own
    with pytest.raises(InputError, match="6 values"):
        area_betas(G, LossWeights(area_layer_weights=[1.0, 2.0]))
    with pytest.raises(InputError, match="area_weighting"):
        area_betas(G, LossWeights(area_weighting="by magic"))


def test_area_and_tv_skip_layers_without_a_mask() -> None:
    assert float(area_loss([None, None], [1.0, 1.0])) == 0.0
    assert float(area_loss([None, torch.full((1, 1, 4, 4), 0.5)], [9.0, 2.0])) == 1.0
    assert float(tv_loss([None, torch.ones(1, 1, 1, 1)])) == 0.0  # a 1-px mask has no edges
    flat = torch.full((1, 1, 8, 8), 0.3)
    assert float(tv_loss([flat])) == 0.0
    step = flat.clone()
    step[..., 4:] = 0.7  # one vertical edge of height 0.4 in 7 neighbour pairs per row
    assert float(tv_loss([step, None])) == pytest.approx(0.4 ** 2 / 7)
    small = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # a 2-px mask has edges too
    assert float(tv_loss([small])) == pytest.approx(1.0)


class DotClip:
    """A CLIP whose image embedding is the picture's mean colour, normalised."""

    def encode_image(self, img: torch.Tensor, as_displayed: bool = True) -> torch.Tensor:
        return torch.nn.functional.normalize(img.mean((2, 3)), dim=-1)


def _img(r: float, g: float, b: float) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.float32).reshape(1, 3, 1, 1).expand(1, 3, 4, 4)


def test_the_global_clip_term_is_one_minus_the_cosine() -> None:
    target = torch.tensor([[1.0, 0.0, 0.0]])
    imgs = torch.cat([_img(1, 0, 0), _img(0, 1, 0), _img(1, 1, 0)])
    per = clip_loss_per_image(DotClip(), imgs, target)
    assert per.tolist() == pytest.approx([0.0, 1.0, 1 - 2 ** -0.5])
    assert float(clip_loss(DotClip(), imgs, target)) == pytest.approx(float(per.mean()))


def test_the_directional_term_reads_the_change_and_mixes_by_its_share() -> None:
    clip = DotClip()
    source = clip.encode_image(_img(0, 1, 0))
    target = torch.tensor([[1.0, 0.0, 0.0]])
    direction = torch.nn.functional.normalize(torch.tensor([[1.0, -1.0, 0.0]]), dim=-1)
    toward = _img(1, 0, 0)  # green -> red: exactly along the text's direction
    assert float(clip_loss_per_image(clip, toward, target, source, direction)) == \
        pytest.approx(0.0, abs=1e-6)
    away = _img(-0.5, 0.5, 0.5 ** 0.5)  # a change orthogonal to the text's direction
    assert float(clip_loss_per_image(clip, away, target, source, direction)) == \
        pytest.approx(1.0, abs=1e-6)
    plain = float(clip_loss_per_image(clip, away, target))
    mixed = float(clip_loss_per_image(clip, away, target, source, direction, 0.25))
    assert mixed == pytest.approx(0.25 * 1.0 + 0.75 * plain, abs=1e-6)
    # without a source embedding (or a text direction) the term is the global one
    assert float(clip_loss_per_image(clip, away, target, None, direction)) == \
        pytest.approx(plain)


def test_the_leak_term_is_the_share_of_the_change_outside_the_finest_mask() -> None:
    original = torch.zeros(1, 3, 8, 8)
    edited = original.clone()
    edited[..., :, :4] = 1.0          # all the change on the left half
    left = torch.zeros(1, 1, 8, 8)
    left[..., :, :4] = 1
    right = 1 - left
    coarse_all = torch.ones(1, 1, 4, 4)
    assert float(leak_loss(edited, original, [coarse_all, left])) == pytest.approx(0.0)
    assert float(leak_loss(edited, original, [coarse_all, right])) == pytest.approx(1.0,
                                                                                    abs=1e-6)
    # two masks at the finest resolution: their union is the footprint
    assert float(leak_loss(edited, original, [left, right, None])) == pytest.approx(0.0)
    assert float(leak_loss(edited, original, [left, left])) == pytest.approx(0.0)
    edited[..., :, 6:] = 1.0           # a third of the change now outside the left half
    assert float(leak_loss(edited, original, [None, left])) == pytest.approx(1 / 3, abs=1e-6)
    assert float(leak_loss(edited, original, [None, None])) == 0.0
    assert float(leak_loss(original, original, [left])) == 0.0  # no change: nothing leaks


def test_the_leak_term_weighs_the_change_by_its_energy() -> None:
    original = torch.zeros(1, 3, 8, 8)
    edited = original.clone()
    edited[..., :, 0] = 1.0      # inside: 8 px x 3 channels, 1.0 each
    edited[..., :, 7] = 0.5      # outside: the same count at half the size
    left = torch.zeros(1, 1, 8, 8)
    left[..., :, :4] = 1
    assert float(leak_loss(edited, original, [left])) == pytest.approx(0.2, abs=1e-6)


def test_the_leak_term_is_the_mean_of_each_image_s_share() -> None:
    original = torch.zeros(2, 3, 8, 8)
    edited = original.clone()
    edited[0, :, :, :4] = 1.0   # image 0: inside
    edited[1, :, :, 4:] = 0.1   # image 1: all outside, and a small change
    left = torch.zeros(2, 1, 8, 8)
    left[..., :, :4] = 1
    assert float(leak_loss(edited, original, [left])) == pytest.approx(0.5, abs=1e-6)


def test_mask_areas_are_each_layer_s_mean_and_zero_where_there_is_none() -> None:
    half = torch.zeros(1, 1, 2, 2)
    half[..., 0, :] = 1
    masks = [None, torch.full((2, 1, 4, 4), 0.25), half]
    assert mask_areas(masks) == [0.0, 0.25, 0.5]


def test_the_batch_clip_term_is_the_mean_of_each_picture_s_own() -> None:
    clip = DotClip()
    source = torch.cat([clip.encode_image(_img(0, 1, 0)), clip.encode_image(_img(0, 0, 1))])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    direction = torch.nn.functional.normalize(torch.tensor([[1.0, -1.0, 0.0]]), dim=-1)
    imgs = torch.cat([_img(1, 0, 0), _img(0.3, 0.2, 1.0)])
    per = clip_loss_per_image(clip, imgs, target, source, direction, 0.6)
    alone = [float(clip_loss_per_image(clip, imgs[i:i + 1], target, source[i:i + 1],
                                       direction, 0.6)) for i in range(2)]
    assert per.tolist() == pytest.approx(alone, abs=1e-6)
    assert per[0] != pytest.approx(per[1])
    assert float(clip_loss(clip, imgs, target, source, direction, 0.6)) == \
        pytest.approx(sum(alone) / 2, abs=1e-6)
    assert float(clip_loss(clip, imgs, target, source, direction)) == pytest.approx(
        float(clip_loss_per_image(clip, imgs, target, source, direction, 1.0).mean()))


def test_tv_sees_every_mask_after_a_missing_one_and_edges_both_ways() -> None:
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:, :] = 1.0  # a horizontal edge
    assert float(tv_loss([None, step])) == pytest.approx(1.0 / 7)
    both = step.clone()
    both[..., :, 4:] = 1.0
    assert float(tv_loss([both])) == pytest.approx(2 * 4 / 56)


def test_a_coarse_footprint_is_read_at_pixel_centres() -> None:
    """A 2x2 mask over an 8x8 picture, upsampled with pixel centres aligned (as every
    resize in the project): column 2 lies 0.875 inside the left half's footprint."""
    original = torch.full((1, 3, 8, 8), 0.5)
    edited = original.clone()
    edited[..., :, 2] += 1.0
    left = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert float(leak_loss(edited, original, [left])) == pytest.approx(0.125, abs=1e-6)


def _recolour(shift: tuple[float, float, float], size: int = 16) -> tuple[torch.Tensor, ...]:
    """An original picture, the same picture with ``shift`` added everywhere, and a region
    of the left half."""
    torch.manual_seed(0)
    original = torch.rand(2, 3, size, size) * 0.5 - 0.25
    edited = original + torch.tensor(shift).view(1, 3, 1, 1)
    region = torch.zeros(2, 1, size, size)
    region[..., : size // 2] = 1
    return original, edited, region


def test_an_even_change_costs_nothing_and_a_ring_of_the_old_colour_costs() -> None:
    original, edited, region = _recolour((0.6, -0.2, 0.1))
    assert float(uneven_change_loss(edited, original, region)) == pytest.approx(0, abs=1e-6)
    ringed = edited.clone()
    ringed[..., 4:8, 4:8] = original[..., 4:8, 4:8]  # an eighth of it left as it was
    assert float(uneven_change_loss(ringed, original, region)) == pytest.approx(1 / 7, rel=0.05)
    # what happens outside the region is not its business
    elsewhere = edited.clone()
    elsewhere[..., 12:, 12:] = original[..., 12:, 12:]
    assert float(uneven_change_loss(elsewhere, original, region)) == pytest.approx(0, abs=1e-6)


def test_the_even_change_term_is_relative_to_the_size_of_the_change() -> None:
    """A large recolour with a ring pays what a small one with the same ring pays: the term
    must not pull a recolour short of its colour."""
    original, _, region = _recolour((0, 0, 0))
    costs = []
    for size in (0.3, 0.6):
        change = torch.full_like(original, size)
        change[..., 2:4, 2:4] = 0
        costs.append(float(uneven_change_loss(original + change, original, region)))
    assert costs[0] == pytest.approx(costs[1], rel=0.05)
    assert costs[0] > 0


def test_the_even_change_term_reads_the_picture_as_displayed() -> None:
    """A pixel pushed past white shows white: the overshoot is no change."""
    original = torch.zeros(1, 3, 8, 8)
    region = torch.ones(1, 1, 8, 8)
    edited = torch.ones(1, 3, 8, 8)
    edited[..., :2, :] = 5.0  # shows as 1.0, like the rest
    assert float(uneven_change_loss(edited, original, region)) == pytest.approx(0, abs=1e-6)


def test_the_even_change_term_is_the_mean_of_each_image_s_own() -> None:
    original, edited, region = _recolour((0.5, 0.5, 0.5))
    ringed = edited.clone()
    ringed[0, :, 4:8, 4:8] = original[0, :, 4:8, 4:8]
    both = float(uneven_change_loss(ringed, original, region))
    first = float(uneven_change_loss(ringed[:1], original[:1], region[:1]))
    assert both == pytest.approx(first / 2, rel=1e-5)


def test_a_change_of_shape_is_not_asked_to_be_even_and_a_recolour_with_a_ring_is() -> None:
    """The gate reads how uneven the change already is: a recolour with a ring of the old
    colour is mostly even (small share) and pays; a change in one corner of the region only
    (a shape drawn, a part that is not the whole region) is left alone."""
    original, edited, region = _recolour((0.6, -0.2, 0.1))
    ringed = edited.clone()
    ringed[..., 4:6, 4:6] = original[..., 4:6, 4:6]
    corner = original.clone()
    corner[..., :4, :4] += 0.8
    shares = {"ringed": uneven_share(ringed, original, region),
              "corner": uneven_share(corner, original, region)}
    assert bool((shares["ringed"] < 0.1).all()) and bool((shares["corner"] > 0.5).all())
    assert float(uneven_change_loss(ringed, original, region, only_below=0.15)) == \
        pytest.approx(float(uneven_change_loss(ringed, original, region)), rel=1e-6)
    assert float(uneven_change_loss(corner, original, region)) > 1
    assert float(uneven_change_loss(corner, original, region, only_below=0.15)) == 0
    # per image: one of each in a batch pays half of the ringed one's cost
    both = torch.cat([ringed[:1], corner[1:]])
    assert float(uneven_change_loss(both, original, region, only_below=0.15)) == \
        pytest.approx(float(uneven_change_loss(ringed[:1], original[:1], region[:1])) / 2,
                      rel=1e-5)


def test_the_gate_passes_no_gradient_and_the_term_does() -> None:
    original, edited, region = _recolour((0.3, 0.3, 0.3))
    edited = edited.clone()
    edited[..., 2:4, 2:4] = original[..., 2:4, 2:4]
    edited.requires_grad_(True)
    uneven_change_loss(edited, original, region, only_below=0.5).backward()
    assert edited.grad is not None and float(edited.grad.abs().sum()) > 0
    # outside the region nothing is pulled
    assert float(edited.grad[..., 8:].abs().sum()) == 0


def test_the_even_change_term_stays_calm_where_little_or_nothing_changes() -> None:
    """No region, a one-pixel region, no change yet, or a change too small to see: the term
    is finite and at or near zero (it must not push an edit that has barely begun)."""
    original, edited, region = _recolour((0.5, -0.5, 0.2))
    nothing = torch.zeros_like(region)
    assert float(uneven_change_loss(edited, original, nothing)) == 0
    one = torch.zeros_like(region)
    one[..., 3, 3] = 1
    assert float(uneven_change_loss(edited, original, one)) == pytest.approx(0, abs=1e-6)
    assert float(uneven_share(edited, original, one).max()) == pytest.approx(0, abs=1e-6)
    assert float(uneven_change_loss(original, original, region)) == 0
    faint = original + 0.02
    faint[..., 4:8, 4:8] = original[..., 4:8, 4:8]  # an eighth not changed, but 0.02 is faint
    value = float(uneven_change_loss(faint, original, region))
    assert 0 <= value < 0.02
    shares = uneven_share(faint, original, region)
    assert bool(((shares >= 0) & (shares < 0.02)).all())
    assert float(uneven_share(original + 0.6 * (faint - original) / 0.02, original,
                              region).min()) > 0.1  # the same pattern, plainly visible


def test_each_image_s_share_is_its_own_and_the_bound_is_inclusive() -> None:
    original, edited, region = _recolour((0.6, -0.2, 0.1))
    mixed = edited.clone()
    mixed[0, :, 4:8, 4:8] = original[0, :, 4:8, 4:8]
    mixed[1, :, :4, :] = original[1, :, :4, :]  # a quarter of its region
    together = uneven_share(mixed, original, region)
    alone = torch.cat([uneven_share(mixed[i:i + 1], original[i:i + 1], region[i:i + 1])
                       for i in range(2)])
    assert torch.allclose(together, alone) and float((together[0] - together[1]).abs()) > 0.01
    first = float(together[0])
    at_bound = float(uneven_change_loss(mixed[:1], original[:1], region[:1], only_below=first))
    assert at_bound == pytest.approx(float(uneven_change_loss(mixed[:1], original[:1],
                                                              region[:1])), rel=1e-6)
    assert at_bound > 0


def test_the_even_change_term_reads_both_pictures_clamped_both_ways() -> None:
    region = torch.ones(1, 1, 8, 8)
    original = torch.full((1, 3, 8, 8), 0.5)
    original[..., :2, :] = 1.6   # drawn past white: shows white
    original[..., 6:, :] = -1.7  # past black: shows black
    edited = torch.full((1, 3, 8, 8), -0.5)
    edited[..., :2, :] = 0.0
    edited[..., 6:, :] = -2.5    # pushed further past black: still black, no change shown
    # shown: rows 0-1 change by -1, rows 2-5 by -1, rows 6-7 by 0: a quarter unchanged
    assert float(uneven_share(edited, original, region)) == pytest.approx(0.25, rel=0.05)
    even = edited.clone()
    even[..., 6:, :] = -1.0      # shows black, as the original did: still no change
    assert float(uneven_share(even, original, region)) == pytest.approx(0.25, rel=0.05)
    assert float(uneven_change_loss(edited, original, region)) == \
        pytest.approx(float(uneven_change_loss(even, original, region)), rel=1e-5)
