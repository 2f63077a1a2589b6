"""The demo world (v2): deterministic renders with exact masks, captions that tell the truth,
colours shared between backgrounds and objects, and the binding twins that teach a CLIP where
a colour is."""
from __future__ import annotations

import random

import torch

from coral_core.world.captions import CaptionSpec, caption_for, full_caption
from coral_core.metrics import psnr
from coral_core.world.check import object_ious, segment_by_colour
from coral_core.world.clip_train import _truth, with_twins
from coral_core.world.render import palette_rgb, render
from coral_core.world.scene import (COLOUR_NAMES, SHAPES, normalised_z, random_scenes,
                                    scenes_from_z, swap_background_and_object,
                                    swap_object_colours)


def test_render_is_deterministic_and_masks_partition_the_image() -> None:
    a_img, a_masks = render(random_scenes(16, 3))
    b_img, b_masks = render(random_scenes(16, 3))
    assert torch.equal(a_img, b_img) and torch.equal(a_masks, b_masks)
    assert a_img.shape == (16, 3, 64, 64) and a_img.min() >= -1 and a_img.max() <= 1
    assert torch.allclose(a_masks.sum(1), torch.ones(16, 64, 64), atol=1e-5)
    scenes = random_scenes(16, 3)
    absent = ~scenes.present[:, 1]
    assert torch.all(a_masks[absent, 2] == 0)  # an absent object has an empty mask


def test_the_right_object_is_on_top_where_they_overlap() -> None:
    scenes = random_scenes(1, 0)
    scenes.present[:] = True
    scenes.size[0] = torch.tensor([1, 1])  # two large squares overlap in the middle
    scenes.shape[0] = torch.tensor([1, 1])
    _, masks = render(scenes)
    assert masks[0, 2, 32, 32] == 1 and masks[0, 1, 32, 32] == 0
    assert masks[0, 1].sum() > 0  # the lower one is still visible


def test_object_colour_is_where_the_mask_says() -> None:
    scenes = random_scenes(8, 11)
    img, masks = render(scenes)
    rgb = palette_rgb("cpu")
    for i in range(8):
        inside = masks[i, 1] > 0.99
        pix = (img[i][:, inside].mean(1) + 1) / 2
        assert (pix - rgb[scenes.colour[i, 0]]).abs().max() < 0.15


def test_colours_are_shared_but_never_camouflage_an_object() -> None:
    scenes = random_scenes(4000, 1)
    assert set(scenes.background.tolist()) == set(range(len(COLOUR_NAMES)))
    assert set(scenes.colour[:, 0].tolist()) == set(range(len(COLOUR_NAMES)))
    assert not (scenes.colour == scenes.background[:, None]).any()
    # the example: an orange circle on cyan and a cyan circle on orange both occur
    orange, cyan = COLOUR_NAMES.index("orange"), COLOUR_NAMES.index("cyan")
    pairs = set(zip(scenes.background.tolist(), scenes.colour[:, 0].tolist()))
    assert (cyan, orange) in pairs and (orange, cyan) in pairs


def test_binding_twins_swap_where_the_colour_is() -> None:
    scenes = random_scenes(256, 2)
    twin = swap_background_and_object(scenes)
    assert torch.equal(twin.background, scenes.colour[:, 0])
    assert torch.equal(twin.colour[:, 0], scenes.background)
    assert not (twin.colour == twin.background[:, None]).any()
    swapped = swap_object_colours(scenes)
    two = scenes.present[:, 1]
    assert torch.equal(swapped.colour[two, 0], scenes.colour[two, 1])
    batch = with_twins(scenes, torch.Generator().manual_seed(0))
    assert len(batch) == 512


def test_captions_are_true_of_their_scene_and_the_fast_truth_agrees() -> None:
    scenes = with_twins(random_scenes(48, 5), torch.Generator().manual_seed(1))
    rng = random.Random(0)
    specs = [caption_for(scenes, i, rng) for i in range(len(scenes))]
    for i, spec in enumerate(specs):
        assert spec.true_of(scenes, i), spec.text()
    slow = torch.tensor([[s.true_of(scenes, i) for s in specs] for i in range(len(scenes))])
    assert torch.equal(_truth(specs, scenes), slow.float())
    bg = COLOUR_NAMES[int(scenes.background[0])]
    other = next(b for b in COLOUR_NAMES if b != bg)
    assert not CaptionSpec(background=other).true_of(scenes, 0)
    assert full_caption(scenes, 0).endswith(f"{bg} background")
    assert CaptionSpec(colour="orange", shape="circle").text() == "an orange circle"


def test_scenes_from_z_read_the_normalised_z() -> None:
    z = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    a, b = scenes_from_z(z), scenes_from_z(z * 3.0)  # same direction, same scene
    assert torch.equal(a.colour, b.colour) and torch.equal(a.background, b.background)
    assert torch.allclose(normalised_z(z).square().mean(1), torch.ones(32), atol=1e-5)
    assert set(a.shape.flatten().tolist()) <= set(range(len(SHAPES)))
    d = a.describe(0)
    assert d["background"] in COLOUR_NAMES and 1 <= len(d["objects"]) <= 2


def test_fidelity_measures_are_perfect_on_renders_and_low_on_wrong_scenes() -> None:
    scenes = random_scenes(32, 9)
    img, masks = render(scenes)
    assert torch.all(psnr(img, img) >= 99)
    assert torch.all(object_ious(img, scenes, img) == 1)
    assert torch.equal(segment_by_colour(img, scenes)[:, 0, 0], torch.zeros(32).long())
    wrong, _ = render(random_scenes(32, 10))
    assert psnr(wrong, img).median() < 20
    assert object_ious(wrong, scenes, img).median() < 0.9
    # the render's own labels agree with its visible masks away from anti-aliased edges
    labels = segment_by_colour(img, scenes)
    solid = masks[:, 0] > 0.999
    assert (labels[solid] == 0).float().mean() > 0.99


def test_step_features_of_the_demo_mapping_are_exact_steps() -> None:
    from coral_core.world.gan_train import build_demo_generator, scene_thresholds

    G = build_demo_generator()
    z = torch.randn(4000, G.z_dim, generator=torch.Generator().manual_seed(0))
    zn = normalised_z(z)
    h = G.mapping.fc1(G.mapping.fc0(zn))
    for s, (dim, t) in enumerate(scene_thresholds()):
        far = (zn[:, dim] - t).abs() > 0.02
        ideal = torch.where(zn[:, dim] > t, 1.0, 0.2) * 2 ** 0.5
        assert torch.allclose(h[far, s], ideal[far], atol=1e-4), s
    assert not any(p.requires_grad for p in G.mapping.fc0.parameters())
