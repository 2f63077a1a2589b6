"""One training step's objective on the tiny generator with a CLIP whose answers are known:
every term enters with its weight, the CAN-only and optional terms stay out unless asked
for, the CLIP term's parts (blended, unmasked, per-image weights) and the composite."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from coral_core.editing.config import LossWeights, TrainConfig
from coral_core.editing.directions import GlobalDirection, LatentMapper
from coral_core.editing.losses import area_betas, area_loss
from coral_core.editing.objective import CoralObjective, layer_masks
from coral_core.editing.selectors import SegmentSelector


class MeanColourClip:
    """Image embedding: the picture's mean colour (normalised); counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode_image(self, img: torch.Tensor, as_displayed: bool = True) -> torch.Tensor:
        self.calls += 1
        return torch.nn.functional.normalize(img.mean((2, 3)) + 1e-3, dim=-1)


TARGET = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, -0.3]]), dim=-1)


def _setup(G, batch: int = 2, **cfg_kw):
    torch.manual_seed(0)
    cfg = TrainConfig(prompt="p", **cfg_kw)
    ws = G.mapping_ws(torch.randn(batch, G.z_dim))
    noise = G.make_noise(batch, "const")
    with torch.no_grad():
        original = G.synthesize(ws, noise=noise)
    direction = GlobalDirection(G.num_ws, G.w_dim, seed=1, init_std=0.5)
    masks = [torch.full((batch, 1, c.resolution, c.resolution), 0.5) for c in G.conv_layers]
    return cfg, ws, noise, original, direction, masks


def _call(G, cfg, ws, noise, original, direction, masks, clip=None, **kw):
    objective = CoralObjective(G, clip or MeanColourClip(), cfg, TARGET, None, None)
    return objective(direction, ws, masks, noise, original, None, 1.0, **kw)


def test_the_total_is_each_term_times_its_weight(G) -> None:
    weights = LossWeights(clip=0.7, l2=0.3, area=0.2, tv=5.0)
    cfg, *rest = _setup(G, weights=weights)
    step = _call(G, cfg, *rest)
    t = step.terms
    assert t["total"] == pytest.approx(0.7 * t["clip"] + 0.3 * t["l2"] + 0.2 * t["area"],
                                       rel=1e-5)
    assert t["tv"] == 0.0 and t["identity"] == 0.0 and t["leak"] == 0.0  # SS, none asked
    direction = rest[3]
    assert t["l2"] == pytest.approx(float(direction.l2().detach()), rel=1e-6)
    masks = rest[4]
    assert t["area"] == pytest.approx(float(area_loss(masks, area_betas(G, weights))),
                                      rel=1e-6)
    assert float(step.total.detach()) == pytest.approx(t["total"])
    assert step.edited.shape == rest[2].shape and step.masks is masks


def test_a_can_edit_pays_for_rough_masks_and_the_leak_term_only_when_weighted(G) -> None:
    cfg, ws, noise, original, direction, masks = _setup(G)
    rough = [m.clone() for m in masks]
    rough[-1][..., ::2, :] = 1.0
    ss = _call(G, cfg, ws, noise, original, direction, rough)
    can_cfg = dataclasses.replace(cfg, variant="can")
    can = _call(G, can_cfg, ws, noise, original, direction, rough)
    assert ss.terms["tv"] == 0.0 and can.terms["tv"] > 0
    assert can.terms["total"] == pytest.approx(ss.terms["total"] + 0.01 * can.terms["tv"],
                                               rel=1e-5)
    leaky_cfg = dataclasses.replace(cfg, weights=LossWeights(leak=0.5))
    leaky = _call(G, leaky_cfg, ws, noise, original, direction, masks)
    assert leaky.terms["leak"] > 0
    plain = _call(G, cfg, ws, noise, original, direction, masks)
    assert leaky.terms["total"] == pytest.approx(plain.terms["total"]
                                                 + 0.5 * leaky.terms["leak"], rel=1e-5)


def test_the_clip_term_mixes_the_blend_and_the_unmasked_edit_by_its_share(G) -> None:
    cfg, ws, noise, original, direction, masks = _setup(G)
    off = [torch.zeros_like(m) for m in masks]  # the blend is then the original picture
    parts = {}
    for share in (0.0, 1.0, 0.25):
        c = dataclasses.replace(cfg, weights=LossWeights(clip_on_edit=share))
        clip = MeanColourClip()
        parts[share] = _call(G, c, ws, noise, original, direction, off, clip=clip)
        assert clip.calls == (1 if share == 0.0 else 2)
    blend_only, unmasked_only = parts[0.0].terms["clip"], parts[1.0].terms["clip"]
    assert blend_only != pytest.approx(unmasked_only)
    assert parts[0.25].terms["clip"] == pytest.approx(0.75 * blend_only + 0.25 * unmasked_only,
                                                      rel=1e-5)
    assert torch.allclose(parts[0.0].edited, original, atol=1e-6)


def test_per_image_weights_choose_whose_clip_loss_counts(G) -> None:
    cfg, ws, noise, original, direction, masks = _setup(G, weights=LossWeights(clip_on_edit=0))
    d = LatentMapper(G.num_ws, G.w_dim)  # image-specific offsets: the two pictures differ
    for block in d.blocks:
        torch.nn.init.normal_(block.out.weight, std=0.3)
    both = _call(G, cfg, ws, noise, original, d, masks).terms["clip"]
    first = _call(G, cfg, ws, noise, original, d, masks,
                  image_weights=torch.tensor([1.0, 0.0])).terms["clip"]
    second = _call(G, cfg, ws, noise, original, d, masks,
                   image_weights=torch.tensor([0.0, 1.0])).terms["clip"]
    assert both == pytest.approx((first + second) / 2, rel=1e-5)
    assert first != pytest.approx(second)
    none = _call(G, cfg, ws, noise, original, d, masks, image_weights=torch.zeros(2))
    assert none.terms["clip"] == 0.0
    assert none.terms["l2"] == pytest.approx(float(d.l2(d(ws)).detach()), rel=1e-5)


def test_the_composite_keeps_the_picture_outside_the_region(G) -> None:
    cfg, ws, noise, original, direction, masks = _setup(G)
    region = torch.zeros(2, 1, G.img_resolution, G.img_resolution)
    region[..., : G.img_resolution // 2, :] = 1.0
    step = _call(G, cfg, ws, noise, original, direction, masks, region=region)
    lower = slice(G.img_resolution // 2, None)
    assert torch.equal(step.edited[..., lower, :], original[..., lower, :])
    free = _call(G, cfg, ws, noise, original, direction, masks)
    assert not torch.equal(free.edited[..., lower, :], original[..., lower, :])


def test_layer_masks_apply_the_edit_s_layer_options(G) -> None:
    cfg = TrainConfig(prompt="p", only_layers=[2, 3], max_layer=2)
    sel = SegmentSelector(len(G.conv_layers), 2)
    segs = torch.zeros(1, 2, 8, 8)
    segs[:, 0] = 1
    masks = layer_masks(sel, G, [], segs, cfg)
    assert [m is not None for m in masks] == [False, True] + [False] * (len(masks) - 2)
    plain = layer_masks(sel, G, [], segs, TrainConfig(prompt="p"), no_masks=True)
    assert all(m is not None and bool((m == 1).all()) for m in plain)


def test_the_directional_clip_term_and_the_unmasked_edit_share_source_direction_and_share(
        G) -> None:
    from coral_core.editing.losses import clip_loss_per_image

    cfg, ws, noise, original, direction, masks = _setup(G, weights=LossWeights(clip_on_edit=0.4))
    clip = MeanColourClip()
    source = clip.encode_image(original)
    text_direction = torch.nn.functional.normalize(torch.tensor([[0.2, -1.0, 0.5]]), dim=-1)
    objective = CoralObjective(G, clip, cfg, TARGET, text_direction, None)
    weights = torch.tensor([1.0, 0.5])
    step = objective(direction, ws, masks, noise, original, source, 0.7, image_weights=weights)
    unmasked = G.synthesize(ws + direction(ws), noise=noise)

    def weighted(images):
        per = clip_loss_per_image(clip, images, TARGET, source, text_direction, 0.7)
        return float((per * weights).sum() / weights.sum())

    expected = 0.6 * weighted(step.edited.detach()) + 0.4 * weighted(unmasked)
    assert step.terms["clip"] == pytest.approx(expected, rel=1e-4)
    weights = torch.ones(2)  # no weights given: every picture alike
    alike = objective(direction, ws, masks, noise, original, source, 0.7)
    assert alike.terms["clip"] == pytest.approx(0.6 * weighted(alike.edited.detach())
                                                + 0.4 * weighted(unmasked), rel=1e-4)


def test_the_step_draws_with_the_noise_it_is_given(G) -> None:
    from coral_core.editing.blend import blended_synthesis

    cfg, ws, _, original, direction, masks = _setup(G)
    noise = G.make_noise(2, "random", generator=torch.Generator().manual_seed(9))
    step = _call(G, cfg, ws, noise, original, direction, masks)
    assert torch.allclose(step.edited, blended_synthesis(G, ws, direction(ws), masks, noise))
    only_unmasked = dataclasses.replace(cfg, weights=LossWeights(clip_on_edit=1.0))
    clip = MeanColourClip()
    term = _call(G, only_unmasked, ws, noise, original, direction, masks, clip=clip)
    from coral_core.editing.losses import clip_loss

    unmasked = G.synthesize(ws + direction(ws), noise=noise)
    assert term.terms["clip"] == pytest.approx(float(clip_loss(clip, unmasked, TARGET)),
                                               rel=1e-5)


def test_an_identity_term_compares_the_edit_with_the_original(G) -> None:
    seen = []

    def identity(edited, original):
        seen.append((edited, original))
        return (edited - original).abs().mean()

    cfg, ws, noise, original, direction, masks = _setup(G, weights=LossWeights(identity=0.5))
    objective = CoralObjective(G, MeanColourClip(), cfg, TARGET, None, identity)
    step = objective(direction, ws, masks, noise, original, None, 1.0)
    (edited, given_original), = seen
    assert edited is step.edited and given_original is original
    assert step.terms["identity"] == pytest.approx(float((edited - original).abs().mean()))
    plain = _call(G, cfg, ws, noise, original, direction, masks)
    assert step.terms["total"] == pytest.approx(plain.terms["total"]
                                                + 0.5 * step.terms["identity"], rel=1e-5)


def test_a_mapper_pays_its_own_l2_weight(G) -> None:
    cfg, ws, noise, original, _, masks = _setup(G, direction="mapper",
                                                weights=LossWeights(clip=0.0, area=0.0))
    mapper = LatentMapper(G.num_ws, G.w_dim)
    step = _call(G, cfg, ws, noise, original, mapper, masks)
    assert step.terms["total"] == pytest.approx(0.8 * step.terms["l2"], rel=1e-5)


def test_layer_masks_read_an_attention_selector_s_features_and_clusters(G) -> None:
    from coral_core.editing.selectors import AttentionSelector

    sel = AttentionSelector([c.out_channels for c in G.conv_layers])
    feats = [torch.randn(1, c.out_channels, c.resolution, c.resolution) for c in G.conv_layers]
    masks = layer_masks(sel, G, feats, None, TrainConfig(prompt="p"))
    assert [m.shape[-1] for m in masks] == [c.resolution for c in G.conv_layers]
    assert not all(bool((m == 1).all()) for m in masks)  # the heads' masks, not "no masks"
    sel.cluster_gate = torch.tensor([[1.0, 0.0]])
    segs = torch.zeros(1, 2, 8, 8)
    segs[:, 1] = 1  # every pixel in the cluster pruning dropped
    limited = layer_masks(sel, G, feats, segs, TrainConfig(prompt="p"))
    assert all(float(m.abs().max()) == 0.0 for m in limited)


def test_with_a_region_an_uneven_change_pays_its_weight_and_without_one_nothing(G) -> None:
    """The even-change term reads the composited picture over the chosen region: off before
    the region choice (no region), and weighted like every other term after it."""
    from coral_core.editing.losses import uneven_change_loss

    ungated = LossWeights(even_change_below=1.0)  # every change's share is at most 1
    cfg, ws, noise, original, direction, masks = _setup(G, weights=ungated)
    assert cfg.weights.even_change > 0  # on by default
    region = torch.zeros(2, 1, G.img_resolution, G.img_resolution)
    region[..., :, : G.img_resolution // 2] = 1
    without = _call(G, cfg, ws, noise, original, direction, masks)
    assert without.terms["even"] == 0.0
    step = _call(G, cfg, ws, noise, original, direction, masks, region=region)
    expected = float(uneven_change_loss(step.edited, original, region))
    assert step.terms["even"] == pytest.approx(expected, rel=1e-5) and expected > 0
    off = dataclasses.replace(cfg, weights=LossWeights(even_change=0.0))
    plain = _call(G, off, ws, noise, original, direction, masks, region=region)
    assert plain.terms["even"] == 0.0
    assert step.terms["total"] == pytest.approx(
        plain.terms["total"] + cfg.weights.even_change * expected, rel=1e-5)
    # a change far from even (this random direction's) is a change of shape: left alone
    gated = _call(G, dataclasses.replace(cfg, weights=LossWeights()), ws, noise, original,
                  direction, masks, region=region)
    assert gated.terms["even"] == 0.0
