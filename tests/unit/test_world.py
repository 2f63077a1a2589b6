"""The demo world: deterministic renders with exact masks, captions that tell the truth."""
from __future__ import annotations

import random

import torch

from coral_core.world.captions import CaptionSpec, caption_for, full_caption
from coral_core.world.render import render
from coral_core.world.scene import (BG_NAMES, OBJ_NAMES, SHAPES, random_scenes, scenes_from_z)


def test_render_is_deterministic_and_masks_partition_the_image() -> None:
    a_img, a_masks = render(random_scenes(16, 3))
    b_img, b_masks = render(random_scenes(16, 3))
    assert torch.equal(a_img, b_img) and torch.equal(a_masks, b_masks)
    assert a_img.shape == (16, 3, 32, 32) and a_img.min() >= -1 and a_img.max() <= 1
    assert torch.allclose(a_masks.sum(1), torch.ones(16, 32, 32), atol=1e-5)
    scenes = random_scenes(16, 3)
    absent = ~scenes.present[:, 1]
    assert torch.all(a_masks[absent, 2] == 0)  # an absent object has an empty mask


def test_object_masks_say_who_is_on_top() -> None:
    scenes = random_scenes(1, 0)
    scenes.present[:] = True
    scenes.cx[0] = torch.tensor([0.5, 0.5])
    scenes.cy[0] = torch.tensor([0.5, 0.5])
    scenes.size[0] = torch.tensor([1, 0])  # large object under a small one
    scenes.shape[0] = torch.tensor([1, 1])
    _, masks = render(scenes)
    assert masks[0, 2, 16, 16] == 1 and masks[0, 1, 16, 16] == 0  # the top one owns the centre
    assert masks[0, 1].sum() > 0  # the lower one is still visible around it


def test_object_colour_is_where_the_mask_says() -> None:
    from coral_core.world.scene import OBJECT_COLOURS

    scenes = random_scenes(8, 11)
    img, masks = render(scenes)
    for i in range(8):
        inside = masks[i, 1] > 0.99
        colour = torch.tensor(OBJECT_COLOURS[OBJ_NAMES[int(scenes.colour[i, 0])]])
        if inside.any():
            pix = (img[i][:, inside].mean(1) + 1) / 2
            assert (pix - colour).abs().max() < 0.2


def test_captions_are_true_of_their_scene() -> None:
    scenes = random_scenes(64, 5)
    rng = random.Random(0)
    for i in range(64):
        spec = caption_for(scenes, i, rng)
        assert spec.true_of(scenes, i), spec.text()
    bg = BG_NAMES[int(scenes.background[0])]
    other = next(b for b in BG_NAMES if b != bg)
    assert not CaptionSpec(background=other).true_of(scenes, 0)
    assert full_caption(scenes, 0).endswith(f"{bg} background")
    assert CaptionSpec(colour="orange", shape="circle").text() == "an orange circle"


def test_scenes_from_z_are_a_fixed_function_of_z() -> None:
    z = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    a, b = scenes_from_z(z), scenes_from_z(z.clone())
    assert torch.equal(a.colour, b.colour) and torch.equal(a.cx, b.cx)
    assert set(a.shape.flatten().tolist()) <= set(range(len(SHAPES)))
    d = a.describe(0)
    assert d["background"] in BG_NAMES and 1 <= len(d["objects"]) <= 2
