"""The region choice's judge on the tiny generator: which images it judges, the loss it
reads per row or per picture, the composited picture it judges with the composite on, and
the CLIP loss regions are compared by."""
from __future__ import annotations

import torch

from coral_core.editing.blend import blended_synthesis
from coral_core.editing.config import TrainConfig
from coral_core.editing.directions import GlobalDirection
from coral_core.editing.losses import clip_loss_per_image
from coral_core.editing.memory import MemoryPlan
from coral_core.editing.objective import layer_masks
from coral_core.editing.region import RegionJudge, judge_loss
from coral_core.editing.selectors import SegmentSelector, composite


def _mean_red(img: torch.Tensor) -> torch.Tensor:
    return img[:, 0].mean((1, 2))


def _judge(G, fits=None, original=None, layers=None):
    torch.manual_seed(0)
    ws = G.mapping_ws(torch.randn(3, G.z_dim))
    noise = G.make_noise(3, "const")
    segs = torch.zeros(3, 2, 8, 8)
    segs[:, 0, :, :4] = 1
    segs[:, 1, :, 4:] = 1
    cfg = TrainConfig(prompt="p")
    return RegionJudge(G, cfg, ws, noise, [], segs, _mean_red,
                       MemoryPlan(recompute=False, bf16=False), fits=fits, original=original,
                       layers=layers)


def _selector(G, rows: int) -> SegmentSelector:
    sel = SegmentSelector(len(G.conv_layers), 2, rows=rows, init=0.9)
    sel.gate = torch.ones(rows, len(G.conv_layers), 2)
    sel.gate[..., 1] = 0.0  # the left half only
    return sel


def _direction(G, rows: int) -> GlobalDirection:
    return GlobalDirection(G.num_ws, G.w_dim, rows=rows, init_std=0.5, seed=3)


def test_the_judge_reads_each_picture_per_row_or_their_mean_for_one_row(G) -> None:
    judge = _judge(G)
    sel, d = _selector(G, 3), _direction(G, 3)
    masks = judge.masks(sel)
    expected_masks = layer_masks(sel, G, [], judge.segs, judge.cfg)
    assert all(torch.equal(a, b) for a, b in zip(masks, expected_masks))
    assert not any(m.requires_grad for m in masks)
    img = blended_synthesis(G, judge.ws, d(judge.ws), masks, judge.noise)
    per_row = judge.loss(sel, masks, d, rows=3)
    assert torch.allclose(per_row, _mean_red(img))
    one, shared = _selector(G, 1), _direction(G, 1)
    img1 = blended_synthesis(G, judge.ws, shared(judge.ws), judge.masks(one), judge.noise)
    mean = judge.loss(one, judge.masks(one), shared, rows=1)
    assert mean.shape == (1,) and torch.allclose(mean, _mean_red(img1).mean(0, keepdim=True))
    each = judge.loss(one, judge.masks(one), shared, rows=1, per_image=True)
    assert each.shape == (1, 3) and torch.allclose(each[0], _mean_red(img1))


def test_only_the_scenes_the_edit_may_act_on_are_judged(G) -> None:
    judge = _judge(G, fits=torch.tensor([1.0, 0.0, 1.0]))
    assert judge.judged().tolist() == [True, False, True]
    one, shared = _selector(G, 1), _direction(G, 1)
    each = judge.loss(one, judge.masks(one), shared, rows=1, per_image=True)
    everyone = _judge(G).loss(one, judge.masks(one), shared, rows=1, per_image=True)
    assert each.shape == (1, 2) and torch.allclose(each[0], everyone[0, [0, 2]])
    assert _judge(G, fits=torch.zeros(3)).judged().tolist() == [True, True, True]


def test_with_the_composite_the_judge_reads_the_picture_the_user_will_get(G) -> None:
    plain = _judge(G)
    with torch.no_grad():
        original = G.synthesize(plain.ws, noise=plain.noise)
    judge = _judge(G, original=original, layers=list(range(1, len(G.conv_layers) + 1)))
    sel, d = _selector(G, 3), _direction(G, 3)
    masks = judge.masks(sel)
    img = blended_synthesis(G, judge.ws, d(judge.ws), masks, judge.noise)
    region = sel.region(judge.segs, G.img_resolution, judge.layers, original, gated=True)
    expected = _mean_red(composite(img, original, region))
    assert torch.allclose(judge.loss(sel, masks, d, rows=3), expected, atol=1e-6)
    assert not torch.allclose(plain.loss(sel, masks, d, rows=3), expected, atol=1e-4)


def test_regions_are_compared_by_the_training_s_loss_or_by_the_direction_from_neutral(
        G, clip) -> None:
    torch.manual_seed(1)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    original = torch.rand(2, 3, 32, 32) * 2 - 1
    target = clip.encode_text(["a red square"])
    source = clip.encode_image(original)
    own = judge_loss(clip, TrainConfig(prompt="a red square"), target, original, None, None,
                     0.4)
    assert torch.allclose(own(img), clip_loss_per_image(clip, img, target))
    cfg = TrainConfig(prompt="a red square", neutral="a green square")
    directional = judge_loss(clip, cfg, target, original, None, None, 0.4)
    text_direction = torch.nn.functional.normalize(
        target - clip.encode_text(["a green square"]), dim=-1)
    expected = clip_loss_per_image(clip, img, target, source, text_direction, 1.0)
    assert torch.allclose(directional(img), expected, atol=1e-6)
    given = judge_loss(clip, cfg, target, original, source, text_direction, 0.4)
    assert torch.allclose(given(img), expected, atol=1e-6)
    training_own = judge_loss(clip, TrainConfig(prompt="a red square", neutral="a green square",
                                                prune_directional=False),
                              target, original, source, text_direction, 0.4)
    assert torch.allclose(training_own(img), clip_loss_per_image(
        clip, img, target, source, text_direction, 0.4), atol=1e-6)
    assert not torch.allclose(training_own(img), expected, atol=1e-4)



def test_an_attention_edit_is_judged_on_the_generator_s_features_and_any_noise(G) -> None:
    from coral_core.editing.selectors import AttentionSelector

    judge = _judge(G)
    judge.noise = G.make_noise(3, "random", generator=torch.Generator().manual_seed(4))
    judge.feats = [torch.randn(3, c.out_channels, c.resolution, c.resolution)
                   for c in G.conv_layers]  # what the attention heads read
    sel = AttentionSelector([c.out_channels for c in G.conv_layers])
    masks = judge.masks(sel)
    assert all(torch.equal(a, b) for a, b in zip(masks, layer_masks(sel, G, judge.feats, None,
                                                                       judge.cfg)))
    d = _direction(G, 1)
    img = blended_synthesis(G, judge.ws, d(judge.ws), masks, judge.noise)
    assert torch.allclose(judge.loss(sel, masks, d, rows=1, per_image=True)[0], _mean_red(img))
    two = _judge(G)
    two.ws, two.segs = two.ws[:2], two.segs[:2]
    two.noise = [None if n is None else n[:2] for n in judge.noise]
    sel2, d2 = _selector(G, 2), _direction(G, 2)
    img2 = blended_synthesis(G, two.ws, d2(two.ws), two.masks(sel2), two.noise)
    assert torch.allclose(two.loss(sel2, two.masks(sel2), d2, rows=2), _mean_red(img2))
