"""The region selectors as an edit uses them, on hand-made segments: each layer's mask,
the region the final composite keeps, the gate pruning sets and bakes in, and the attention
selector's limit to the clusters it kept."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from coral_core.editing.selectors import (AttentionSelector, SegmentSelector, composite,
                                          weighted_region)

# a generator as the selector sees it: conv layers with their resolution and 1-based index
G = SimpleNamespace(conv_layers=[SimpleNamespace(resolution=r, index=i + 1)
                                 for i, r in enumerate((4, 8, 8))])


@pytest.fixture(autouse=True)
def _no_grad():
    """These tests read masks, they do not train them."""
    with torch.no_grad():
        yield


def _halves(batch: int = 1, res: int = 8) -> torch.Tensor:
    """Segment 0 the left half, segment 1 the right half, segment 2 empty."""
    seg = torch.zeros(batch, 3, res, res)
    seg[:, 0, :, : res // 2] = 1
    seg[:, 1, :, res // 2:] = 1
    return seg


def _set(selector: SegmentSelector, weights: list[list[list[float]]]) -> None:
    w = torch.tensor(weights).clamp(1e-6, 1 - 1e-6)
    with torch.no_grad():
        selector.logits.copy_(torch.logit(w))


@pytest.mark.parametrize("init", [0.5, 0.2, 0.9])
def test_masks_start_at_the_initial_weight_over_every_segment(init) -> None:
    sel = SegmentSelector(num_layers=3, k=3, init=init)
    assert torch.allclose(sel.weights(), torch.full((1, 3, 3), init))
    masks = sel.masks(G, _halves(batch=2))
    assert [tuple(m.shape) for m in masks] == [(2, 1, 4, 4), (2, 1, 8, 8), (2, 1, 8, 8)]
    assert all(torch.allclose(m, torch.full_like(m, init)) for m in masks)


def test_an_initial_weight_of_zero_or_one_still_trains() -> None:
    """A logit of -inf or inf has no gradient: the start is kept just inside (0, 1)."""
    for init in (0.0, 1.0):
        w = SegmentSelector(1, 1, init=init).weights()
        assert 0 < float(w) < 1 and abs(float(w) - init) < 1e-3


def test_each_layer_s_mask_is_its_segments_weighted_and_shrunk_to_its_resolution() -> None:
    sel = SegmentSelector(num_layers=3, k=3)
    _set(sel, [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.25, 1.0]]])
    m4, m8a, m8b = sel.masks(G, _halves())
    assert torch.allclose(m4[0, 0, :, :2], torch.ones(4, 2), atol=1e-5)
    assert torch.allclose(m4[0, 0, :, 2:], torch.zeros(4, 2), atol=1e-5)
    assert torch.allclose(m8a[0, 0, :, 4:], torch.ones(8, 4), atol=1e-5)
    assert float(m8a[0, 0, :, :4].abs().max()) < 1e-5
    assert torch.allclose(m8b[0, 0, :, :4], torch.full((8, 4), 0.5), atol=1e-5)
    assert torch.allclose(m8b[0, 0, :, 4:], torch.full((8, 4), 0.25), atol=1e-5)


def test_a_coarse_cell_straddling_two_segments_is_shared_or_wholly_both() -> None:
    seg = torch.zeros(1, 2, 8, 8)
    seg[:, 0, :, :3] = 1   # the edge falls inside the second 2-px cell of a 4-px layer
    seg[:, 1, :, 3:] = 1
    sel = SegmentSelector(num_layers=3, k=2)
    _set(sel, [[[1.0, 0.0]] * 3])
    area = sel.masks(G, seg)[0]
    assert torch.allclose(area[0, 0, 0], torch.tensor([1.0, 0.5, 0.0, 0.0]), atol=1e-5)
    sel.pool = "max"       # the cell belongs wholly to every segment it touches
    maxed = sel.masks(G, seg)[0]
    assert torch.allclose(maxed[0, 0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-5)
    _set(sel, [[[1.0, 1.0]] * 3])  # both selected: the shared cell is still at most 1
    assert float(sel.masks(G, seg)[0].max()) <= 1.0


def test_one_row_per_image_gives_each_image_its_own_mask() -> None:
    sel = SegmentSelector(num_layers=3, k=3, rows=2)
    _set(sel, [[[1.0, 0.0, 0.0]] * 3, [[0.0, 1.0, 0.0]] * 3])
    m = sel.masks(G, _halves(batch=2))[1]
    assert torch.allclose(m[0, 0, :, :4], torch.ones(8, 4), atol=1e-5)
    assert torch.allclose(m[1, 0, :, 4:], torch.ones(8, 4), atol=1e-5)
    assert float(m[0, 0, :, 4:].max()) < 1e-5 and float(m[1, 0, :, :4].max()) < 1e-5


def test_the_gate_switches_pairs_off_and_baking_it_keeps_the_masks_exactly() -> None:
    sel = SegmentSelector(num_layers=3, k=3)
    _set(sel, [[[0.9, 0.8, 0.1]] * 3])
    sel.gate = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    gated = sel.masks(G, _halves())
    assert torch.allclose(sel.weights()[0, 0], torch.tensor([0.9, 0.0, 0.1]), atol=1e-6)
    assert sel.selection() == [(1, 0), (2, 0), (2, 1)]
    assert sel.active(threshold=0.85)[0].nonzero().tolist() == [[0, 0], [1, 0]]
    sel.bake_gate()
    assert sel.gate is None
    assert all(torch.equal(a, b) for a, b in zip(gated, sel.masks(G, _halves())))
    assert float(sel.masks(G, _halves())[2].abs().max()) == 0.0  # a layer left with nothing
    sel.bake_gate()  # no gate: nothing changes
    assert all(torch.equal(a, b) for a, b in zip(gated, sel.masks(G, _halves())))


def test_the_region_is_the_union_of_selected_segments_at_their_strongest_layer() -> None:
    sel = SegmentSelector(num_layers=3, k=3)
    _set(sel, [[[0.2, 0.0, 0.0], [0.7, 0.0, 0.0], [0.0, 0.4, 0.0]]])
    region = sel.region(_halves(), 16)
    assert region.shape == (1, 1, 16, 16)
    assert torch.allclose(region[0, 0, :, :8], torch.full((16, 8), 0.7), atol=1e-5)
    assert torch.allclose(region[0, 0, :, 8:], torch.full((16, 8), 0.4), atol=1e-5)
    only3 = sel.region(_halves(), 16, layers=[3, 7])  # a layer the edit lacks is ignored
    assert float(only3[0, 0, :, :8].max()) < 1e-5
    assert torch.allclose(only3[0, 0, :, 8:], torch.full((16, 8), 0.4), atol=1e-5)
    only1 = sel.region(_halves(), 16, layers=[1])
    assert torch.allclose(only1[0, 0, :, :8], torch.full((16, 8), 0.2), atol=1e-5)
    sel.gate = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    gated = sel.region(_halves(), 16, gated=True)  # as the hardened edit will use it
    assert torch.equal(gated[0, 0, :, :8], torch.ones(16, 8))
    assert torch.equal(gated[0, 0, :, 8:], torch.zeros(16, 8))
    assert torch.allclose(sel.region(_halves(), 16)[0, 0, :, :8], torch.full((16, 8), 0.7),
                          atol=1e-5)


def test_overlapping_segments_never_make_a_region_above_one() -> None:
    seg = torch.ones(2, 2, 4, 4)
    out = weighted_region(torch.tensor([[0.8, 0.9]]), seg, 4)
    assert torch.allclose(out, torch.ones(2, 1, 4, 4))
    per_image = weighted_region(torch.tensor([[0.3, 0.0], [0.0, 0.6]]), seg, 8)
    assert per_image.shape == (2, 1, 8, 8)
    assert torch.allclose(per_image[0], torch.full((1, 8, 8), 0.3))
    assert torch.allclose(per_image[1], torch.full((1, 8, 8), 0.6))


def test_the_composite_is_exact_outside_and_per_image() -> None:
    torch.manual_seed(0)
    original, edited = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    region = torch.zeros(3, 1, 32, 32)
    region[0, :, 4:28, 4:28] = 1
    region[1, :, :, :16] = 1
    out = composite(edited, original, region)
    outside = (region == 0).expand_as(out)
    assert torch.equal(out[outside], original[outside])
    assert torch.equal(out[2], original[2])  # an empty region: the original exactly
    for i in range(3):  # an image's result does not depend on the rest of its batch
        alone = composite(edited[i:i + 1], original[i:i + 1], region[i:i + 1])
        assert torch.allclose(alone, out[i:i + 1])


def test_a_deep_interior_keeps_the_blend_and_a_soft_region_scales_it() -> None:
    original = torch.zeros(1, 3, 32, 32)
    edited = torch.rand(1, 3, 32, 32)
    region = torch.zeros(1, 1, 32, 32)
    region[..., 4:28, 4:28] = 1
    out = composite(edited, original, region)
    assert torch.allclose(out[..., 8:24, 8:24], edited[..., 8:24, 8:24])
    soft = composite(edited, original, region * 0.4)  # under 0.5 nothing is interior
    assert torch.allclose(soft[..., 4:28, 4:28], 0.4 * edited[..., 4:28, 4:28], atol=1e-6)
    half = composite(edited, original, region * 0.5)  # 0.5 is: its deep interior is kept
    assert torch.allclose(half[..., 8:24, 8:24], 0.5 * edited[..., 8:24, 8:24], atol=1e-6)


def test_a_strip_too_thin_for_an_interior_keeps_its_own_change() -> None:
    original = torch.zeros(1, 3, 32, 32)
    edited = torch.rand(1, 3, 32, 32)
    region = torch.zeros(1, 1, 32, 32)
    region[..., :, 10:12] = 1  # 2 px wide: nowhere 2 px from its edge
    out = composite(edited, original, region)
    assert torch.equal(out[..., :, 10:12], edited[..., :, 10:12])


def test_the_whole_picture_selected_is_the_blend_itself() -> None:
    torch.manual_seed(1)
    original, edited = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert torch.equal(composite(edited, original, torch.ones(1, 1, 16, 16)), edited)


def test_an_attention_selector_reads_each_layer_and_may_be_limited_to_clusters() -> None:
    torch.manual_seed(0)
    sel = AttentionSelector([4, 6, 6], init=0.3)
    feats = [torch.randn(2, 4, 4, 4), torch.randn(2, 6, 8, 8)]  # the last layer not computed
    masks = sel.masks(feats)
    assert masks[2] is None and [tuple(m.shape) for m in masks[:2]] == [(2, 1, 4, 4),
                                                                        (2, 1, 8, 8)]
    assert all(abs(float(m.mean()) - 0.3) < 0.1 for m in masks[:2])  # start near ``init``
    sel.cluster_gate = torch.tensor([[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="segments"):
        sel.masks(feats)
    limited = sel.masks(feats, _halves(batch=2))
    assert limited[2] is None
    assert torch.allclose(limited[1][..., :4], masks[1][..., :4])
    assert float(limited[1][..., 4:].abs().max()) == 0.0
    assert float(limited[0][..., 2:].abs().max()) == 0.0


def test_an_attention_selector_for_a_generator_has_one_head_per_conv_layer() -> None:
    fake = SimpleNamespace(conv_layers=[SimpleNamespace(out_channels=c) for c in (8, 8, 4)])
    sel = AttentionSelector.for_generator(fake, hidden=5)
    assert sel.channels == [8, 8, 4] and len(sel.heads) == 3
    assert sel.heads[2].net[0].in_channels == 4 and sel.heads[2].net[0].out_channels == 5


def test_a_fresh_selector_selects_nothing_yet_and_overlapping_masks_stay_at_most_one() -> None:
    sel = SegmentSelector(num_layers=3, k=2)  # the default start: every weight 0.5
    assert torch.allclose(sel.weights(), torch.full((1, 3, 2), 0.5))
    assert not bool(sel.active().any()) and sel.selection() == []
    overlapping = torch.ones(1, 2, 8, 8)  # two supplied masks covering the same pixels
    _set(sel, [[[1.0, 1.0]] * 3])
    for pool in ("area", "max"):
        sel.pool = pool
        assert all(float(m.max()) <= 1.0 for m in sel.masks(G, overlapping))


def test_per_image_rows_read_each_layer_s_own_weights() -> None:
    sel = SegmentSelector(num_layers=3, k=3, rows=2)
    _set(sel, [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]] * 2)
    m = sel.masks(G, _halves(batch=2))
    assert torch.allclose(m[1][:, 0, :, 4:], torch.ones(2, 8, 4), atol=1e-5)  # layer 2: right
    assert float(m[2].max()) < 1e-5  # layer 3 selected only the empty segment


def test_the_region_picks_layers_by_number_when_layers_and_segments_differ() -> None:
    sel = SegmentSelector(num_layers=4, k=2)
    _set(sel, [[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.9, 0.0]]])
    seg = _halves()[:, :2]
    assert float(sel.region(seg, 8, layers=[4])[0, 0, 0, 0]) == pytest.approx(0.9, abs=1e-5)
    assert float(sel.region(seg, 8, layers=[3]).max()) < 1e-5


def test_the_region_follows_the_picture_s_colour_edge_when_given_it() -> None:
    """Segments from a coarser grid put the edge at column 8; the picture's own edge is at
    column 10: with the picture, the region follows the picture."""
    seg = torch.zeros(1, 2, 16, 16)
    seg[:, 0, :, :8] = 1
    seg[:, 1, :, 8:] = 1
    img = torch.full((1, 3, 16, 16), -1.0)
    img[:, 0, :, 10:] = 1.0
    sel = SegmentSelector(num_layers=1, k=2)
    _set(sel, [[[1.0, 0.0]]])
    blocky = sel.region(seg, 16)
    snapped = sel.region(seg, 16, image=img)
    assert float(blocky[0, 0, 4, 9]) < 1e-5
    assert float(snapped[0, 0, 4, 9]) > 0.9
    assert torch.allclose(weighted_region(torch.tensor([[1.0, 0.0]]), seg, 16, img), snapped,
                          atol=1e-5)


def test_the_edge_band_takes_the_interior_s_change_carried_outward() -> None:
    """A region whose interior changes smoothly (a gradient) and whose band was spoilt: the
    band takes its nearest interior pixels' change, row by row; the interior keeps its own."""
    res = 32
    original = torch.zeros(1, 1, res, res)
    region = torch.zeros(1, 1, res, res)
    region[..., :, :20] = 1.0
    edited = torch.linspace(0, 1, res).reshape(1, 1, res, 1).expand(1, 1, res, res).clone()
    edited[..., :, 18:20] = -5.0  # spoilt next to the edge
    out = composite(edited, original, region)
    band = max(1, round(3 / 64 * res))
    assert band == 2
    # the interior: at least ``band`` px from the region's edge and from the picture's border
    interior = (..., slice(band, res - band), slice(band, 20 - band))
    assert torch.equal(out[interior], edited[interior])
    # each band pixel carries its own row's interior change (the gradient runs down the rows)
    rows = slice(2 * band, res - 2 * band)  # rows away from the picture's border
    for col in range(20 - band, 20):
        assert torch.allclose(out[0, 0, rows, col], edited[0, 0, rows, 0], atol=1e-5), col
    assert torch.equal(out[..., :, 20:], original[..., :, 20:])


def test_a_region_at_exactly_one_half_has_an_interior_and_a_band() -> None:
    original = torch.zeros(1, 1, 32, 32)
    edited = torch.rand(1, 1, 32, 32)
    region = torch.zeros(1, 1, 32, 32)
    region[..., 4:28, 4:28] = 0.5
    out = composite(edited, original, region)
    assert not torch.allclose(out[..., 5, 10:20], 0.5 * edited[..., 5, 10:20])  # carried
    assert torch.allclose(out[..., 10:20, 10:20], 0.5 * edited[..., 10:20, 10:20])


def test_a_small_picture_has_a_one_pixel_band() -> None:
    original = torch.zeros(1, 1, 16, 16)
    edited = torch.rand(1, 1, 16, 16)
    region = torch.zeros(1, 1, 16, 16)
    region[..., :, :8] = 1.0
    out = composite(edited, original, region)
    assert torch.equal(out[..., 2:-2, 6], edited[..., 2:-2, 6])      # 2 px in: interior
    assert not torch.equal(out[..., 2:-2, 7], edited[..., 2:-2, 7])  # 1 px in: band


def test_an_attention_selector_s_layout_is_what_edit_files_hold() -> None:
    sel = AttentionSelector([4, 6])
    assert list(sel.state_dict()) == [f"heads.{i}.net.{j}.{p}" for i in range(2)
                                      for j in (0, 2) for p in ("weight", "bias")]
    assert sel.heads[1].net[0].out_channels == 32  # the default hidden width
    feats = [torch.randn(1, 4, 4, 4), torch.randn(1, 6, 8, 8)]
    assert all(abs(float(m.mean()) - 0.5) < 0.1 for m in sel.masks(feats))
    assert len(sel.masks(feats[:1])) == 2
    fake = SimpleNamespace(conv_layers=[SimpleNamespace(out_channels=4)])
    low = AttentionSelector.for_generator(fake, init=0.2)
    assert abs(float(low.masks(feats[:1])[0].mean()) - 0.2) < 0.1


def test_an_attention_selector_limited_to_clusters_says_what_it_needs() -> None:
    sel = AttentionSelector([4])
    sel.cluster_gate = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError) as err:
        sel.masks([torch.randn(1, 4, 4, 4)])
    assert str(err.value) == ("this attention selector is limited to some clusters: give the "
                              "catalogue's segments")


def test_a_weight_over_one_half_is_selected_by_default() -> None:
    sel = SegmentSelector(num_layers=2, k=2, init=0.6)
    assert bool(sel.active().all()) and len(sel.selection()) == 4


def test_the_first_band_pixel_takes_the_mean_of_its_interior_neighbours() -> None:
    torch.manual_seed(5)
    original = torch.zeros(1, 1, 32, 32)
    edited = torch.rand(1, 1, 32, 32)
    region = torch.zeros(1, 1, 32, 32)
    region[..., :, :20] = 1.0
    out = composite(edited, original, region)
    for row in range(6, 26):  # column 18 is the band's first, column 17 the interior's last
        assert float(out[0, 0, row, 18]) == pytest.approx(
            float(edited[0, 0, row - 1:row + 2, 17].mean()), abs=1e-5)


def test_an_attention_selector_for_a_generator_has_the_file_s_default_layout() -> None:
    fake = SimpleNamespace(conv_layers=[SimpleNamespace(out_channels=4)])
    sel = AttentionSelector.for_generator(fake)
    assert sel.heads[0].net[0].out_channels == 32
    assert abs(float(sel.masks([torch.randn(1, 4, 4, 4)])[0].mean()) - 0.5) < 0.1
