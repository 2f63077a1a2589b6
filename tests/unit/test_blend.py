"""The four invariants of multi-layer feed-forward blending, and branch skipping."""
from __future__ import annotations

import pytest
import torch

from coral_core.editing.blend import BlendRunner, blended_synthesis, stacked_synthesis
from fabricate import random_generator, tiny_config


@pytest.fixture(scope="module")
def setup():
    G = random_generator(tiny_config(conv_clamp=None))
    ws = G.mapping_ws(G.z_from_seeds([0, 1]), 0.7)
    delta = torch.randn(1, G.num_ws, G.w_dim) * 0.5
    noise = G.make_noise(2, "random", generator=torch.Generator().manual_seed(3))
    return G, ws, delta, noise


def _masks(G, value: float, batch: int = 2):
    return [torch.full((batch, 1, c.resolution, c.resolution), value) for c in G.conv_layers]


def test_all_masks_zero_is_the_original_bit_for_bit(setup) -> None:
    G, ws, delta, noise = setup
    out = blended_synthesis(G, ws, delta, _masks(G, 0.0), noise)
    assert torch.equal(out, G.synthesize(ws, noise=noise))
    # masks that require grad are computed through both branches: still exact
    m = [t.requires_grad_() for t in _masks(G, 0.0)]
    assert torch.equal(blended_synthesis(G, ws, delta, m, noise), G.synthesize(ws, noise=noise))


def test_all_masks_one_is_the_edited_generator_bit_for_bit(setup) -> None:
    G, ws, delta, noise = setup
    out = blended_synthesis(G, ws, delta, _masks(G, 1.0), noise)
    assert torch.equal(out, G.synthesize(ws + delta, noise=noise))


def test_zero_direction_gives_exactly_zero_mask_gradient(setup) -> None:
    G, ws, _, noise = setup
    masks = [torch.rand(2, 1, c.resolution, c.resolution, requires_grad=True)
             for c in G.conv_layers]
    d = torch.zeros(1, G.num_ws, G.w_dim, requires_grad=True)
    blended_synthesis(G, ws, d, masks, noise).square().sum().backward()
    assert all(m.grad is not None and torch.count_nonzero(m.grad) == 0 for m in masks)
    assert d.grad is not None and d.grad.abs().sum() > 0


def test_no_gradient_reaches_the_generator(setup) -> None:
    G, ws, delta, noise = setup
    G.requires_grad_(False)
    d = delta.clone().requires_grad_()
    masks = [torch.full((2, 1, c.resolution, c.resolution), 0.5, requires_grad=True)
             for c in G.conv_layers]
    blended_synthesis(G, ws, d, masks, noise).mean().backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in masks)


def test_edit_at_an_early_layer_flows_into_later_layers(setup) -> None:
    G, ws, delta, noise = setup
    masks = [None] * len(G.conv_layers)
    masks[0] = torch.ones(2, 1, 4, 4)
    out = blended_synthesis(G, ws, delta, masks, noise)
    base = G.synthesize(ws, noise=noise)
    assert (out - base).abs().max() > 1e-3
    # and differs from a full edit: later layers refuse *new* style changes
    assert (out - G.synthesize(ws + delta, noise=noise)).abs().max() > 1e-3


def test_max_layer_and_branch_skipping(setup) -> None:
    G, ws, delta, noise = setup
    masks = _masks(G, 1.0)
    runner = BlendRunner(ws, [(delta.expand(2, -1, -1), [None, None, masks[2], None,
                                                          torch.zeros(2, 1, 16, 16),
                                                          None, None])], noise)
    G.run_synthesis(2, runner)
    assert runner.edited_layers == [3]  # None and frozen all-zero masks compute one branch
    limited = blended_synthesis(G, ws, delta, masks, noise, max_layer=3)
    manual = blended_synthesis(G, ws, delta, masks[:3] + [None] * 4, noise)
    assert torch.equal(limited, manual)


def test_stacking_two_edits(setup) -> None:
    G, ws, delta, noise = setup
    other = torch.randn_like(delta) * 0.3
    zero = [None] * len(G.conv_layers)
    one = stacked_synthesis(G, ws, [(delta, _masks(G, 1.0)), (other, zero)], noise)
    assert torch.equal(one, G.synthesize(ws + delta, noise=noise))
    both = stacked_synthesis(G, ws, [(delta, _masks(G, 1.0)), (other, _masks(G, 1.0))], noise)
    # the second edit fully replaces: its branch reads w + other on top of the first's features
    assert (both - one).abs().max() > 1e-3


def _box_masks(G, places: list[tuple[float, float]], size: float):
    """Masks that are soft on one square per sample (top-left corners and side as fractions of
    the side) and exactly 0 elsewhere."""
    out = []
    for c in G.conv_layers:
        r = c.resolution
        m = torch.zeros(len(places), 1, r, r)
        side = max(1, int(size * r))
        for i, (top, left) in enumerate(places):
            y0, x0 = int(top * r), int(left * r)
            m[i, :, y0:y0 + side, x0:x0 + side] = torch.rand(
                1, min(side, r - y0), min(side, r - x0)) * 0.5 + 0.5
        out.append(m)
    return out


# one box at the image border or inside (batch 1 and a shared box), and two samples with
# objects in opposite corners (the union is most of the map: one box per sample)
PLACES = [[(0.0, 0.0)], [(0.3, 0.55)], [(0.6, 0.6), (0.6, 0.6)], [(0.75, 0.0)],
          [(0.0, 0.0), (0.6, 0.62)]]


@pytest.mark.parametrize("places", PLACES)
def test_edited_branch_on_mask_boxes_equals_the_whole_map(setup, places, monkeypatch) -> None:
    """Cropping the edited branch to the masks' boxes (plus the receptive field) changes
    nothing but convolution rounding, at the image border and inside, for plain and
    upsampling convs, with one box for the batch or one per sample."""
    import coral_core.editing.blend as blend

    G, ws, delta, noise = setup
    torch.manual_seed(1)
    masks = _box_masks(G, places, size=0.35)
    ws_b = ws[: len(places)]
    noise_b = [None if n is None else n[: len(places)] for n in noise]
    boxed = blended_synthesis(G, ws_b, delta, masks, noise_b)
    parts = [blend.mask_parts(m) for m in masks]
    assert any(p is not None and len(p) == len(set(places)) for p in parts)  # crops ran
    monkeypatch.setattr(blend, "BOX_MAX_FRACTION", 0.0)  # never crop
    whole = blended_synthesis(G, ws_b, delta, masks, noise_b)
    assert torch.allclose(boxed, whole, atol=1e-5), (boxed - whole).abs().max()
    # and the edit really changed the picture inside the box
    assert (whole - G.synthesize(ws_b, noise=noise_b)).abs().max() > 1e-2


@pytest.mark.parametrize("places", [[(0.2, 0.4), (0.2, 0.4)], [(0.0, 0.0), (0.6, 0.62)]])
def test_gradients_through_mask_boxes_equal_the_whole_map(setup, places, monkeypatch) -> None:
    import coral_core.editing.blend as blend

    G, ws, delta, noise = setup
    torch.manual_seed(2)
    base = _box_masks(G, places, 0.35)

    def grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        d = delta.clone().requires_grad_()
        masks = [m.clone().requires_grad_() for m in base]
        blended_synthesis(G, ws, d, masks, noise).square().sum().backward()
        return d.grad, [m.grad for m in masks]

    d_box, m_box = grads()
    monkeypatch.setattr(blend, "BOX_MAX_FRACTION", 0.0)
    d_whole, m_whole = grads()
    assert torch.allclose(d_box, d_whole, rtol=1e-4, atol=1e-5)
    for a, b, m in zip(m_box, m_whole, base):
        # outside the boxes the mask is exactly 0 and its gradient (f_e - f_o) is not
        # computed there: a selector's parameters get none from such pixels either way (an SS
        # weight reaches only its segment's pixels; sigmoid(x) underflows to 0 with derivative 0)
        inside = m.ne(0)
        assert torch.allclose(a[inside], b[inside], rtol=1e-4, atol=1e-5)


def test_mask_parts_union_per_sample_or_whole_map() -> None:
    from coral_core.editing.blend import mask_parts

    m = torch.zeros(2, 1, 16, 16)
    m[0, :, 2:5, 3:6] = 0.7
    m[1, :, 6:8, 1:2] = 0.1
    assert mask_parts(m) == [(slice(None), (2, 8, 1, 6))]  # one box for both
    far = torch.zeros(3, 1, 16, 16)
    far[0, :, 0:4, 0:4] = 1.0
    far[2, :, 12:16, 12:16] = 1.0
    # the union is the whole map; sample 1 has nothing to edit
    assert mask_parts(far) == [(slice(0, 1), (0, 4, 0, 4)), (slice(2, 3), (12, 16, 12, 16))]
    assert mask_parts(torch.zeros(1, 1, 8, 8)) is None
    assert mask_parts(torch.ones(2, 1, 8, 8)) is None  # the whole map: not worth a crop


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and x.dtype == y.dtype
                                      and torch.equal(x, y)) for x, y in zip(a, b))


def test_an_edits_layer_options_shape_its_masks_in_one_order():
    """What a user's layer options do to the masks an edit applies with (1-based layers)."""
    from coral_core.editing.blend import mask_policy

    soft = torch.tensor([[0.2, 0.7, 0.9]], dtype=torch.float64)
    masks = [None, soft, soft * 0.5, soft]
    assert _same(mask_policy(masks), masks)  # no option: the selector's masks as they are
    ones = torch.ones_like(soft)
    assert _same(mask_policy(masks, no_masks=True), [None, ones, ones, ones])
    assert _same(mask_policy(masks, only_layers=[2, 4]), [None, soft, None, soft])
    hard = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)  # 0.7 >= 0.7: kept
    assert _same(mask_policy(masks, threshold=0.7),
                 [None, hard, torch.zeros_like(soft), hard])
    assert _same(mask_policy(masks, max_layer=2), [None, soft, None, None])
    # together: the baseline's ones limited to the named layers, then the layer cap
    assert _same(mask_policy(masks, no_masks=True, only_layers=[2, 4], max_layer=3),
                 [None, ones, None, None])


@pytest.fixture(scope="module")
def resnet_setup():
    """A resnet-architecture generator: its second conv of a block runs with gain sqrt(1/2)."""
    G = random_generator(tiny_config(conv_clamp=None, architecture="resnet"), seed=4)
    ws = G.mapping_ws(G.z_from_seeds([5, 6]), 0.7)
    delta = torch.randn(1, G.num_ws, G.w_dim) * 0.5
    return G, ws, delta, G.make_noise(2, "const")


def test_a_resnet_generator_blends_to_its_own_edited_picture(resnet_setup) -> None:
    G, ws, delta, noise = resnet_setup
    full = blended_synthesis(G, ws, delta, _masks(G, 1.0), noise)
    assert torch.equal(full, G.synthesize(ws + delta, noise=noise))
    none = blended_synthesis(G, ws, delta, _masks(G, 0.0), noise)
    assert torch.equal(none, G.synthesize(ws, noise=noise))


@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_boxes_equal_the_whole_map_on_a_resnet_and_without_noise(resnet_setup, noise_mode,
                                                                 monkeypatch) -> None:
    import coral_core.editing.blend as blend

    G, ws, delta, _ = resnet_setup
    noise = G.make_noise(2, noise_mode)
    torch.manual_seed(2)
    masks = _box_masks(G, [(0.1, 0.2), (0.55, 0.5)], size=0.3)
    boxed = blended_synthesis(G, ws, delta, masks, noise)
    assert any(blend.mask_parts(m) is not None for m in masks)  # crops ran
    monkeypatch.setattr(blend, "BOX_MAX_FRACTION", 0.0)
    whole = blended_synthesis(G, ws, delta, masks, noise)
    assert torch.allclose(boxed, whole, atol=1e-5), (boxed - whole).abs().max()
    assert (whole - G.synthesize(ws, noise=noise)).abs().max() > 1e-2


def test_without_noise_given_the_blend_draws_the_generator_s_constant_noise(setup) -> None:
    G, ws, delta, _ = setup
    masks = _masks(G, 0.5)
    const = G.make_noise(2, "const")
    assert torch.equal(blended_synthesis(G, ws, delta, masks),
                       blended_synthesis(G, ws, delta, masks, const))
    with pytest.raises(ValueError) as err:
        stacked_synthesis(G, ws, [(delta, masks)], original_features=[torch.zeros(1)])
    assert str(err.value) == "reusing original features needs the noise they were made with"
    with pytest.raises(ValueError) as err:
        stacked_synthesis(G, ws, [(delta, masks[:-1])], const)
    assert str(err.value) == (f"expected {len(G.conv_layers)} masks (one per conv layer), "
                              f"got {len(G.conv_layers) - 1}")
