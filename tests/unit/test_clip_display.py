"""The CLIP reads the picture a user gets: generator output clamped to [-1, 1]. An edit can
then gain nothing by pushing a colour past the range, yet a pixel drawn past it can still be
brought back; the paper's raw reading stays one setting away."""
from __future__ import annotations

import torch

from coral_core.clip_model import displayed
from coral_core.editing.presets import preset_config


def test_the_displayed_picture_is_the_clamped_one() -> None:
    img = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.7, 1.0, 2.5])
    assert torch.equal(displayed(img), img.clamp(-1, 1))


def test_a_pixel_past_the_range_takes_only_the_gradient_that_brings_it_back() -> None:
    #                 in range  above, twice   below, twice
    img = torch.tensor([0.5, -0.5, 1.5, 1.5, -1.5, -1.5], requires_grad=True)
    # the loss falls as each pixel moves the way its weight says (descent: x -= lr * grad)
    wants_up = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    (-(displayed(img) * wants_up).sum()).backward()
    assert img.grad is not None
    # in range: every gradient; above: only "down" (grad > 0); below: only "up" (grad < 0)
    assert img.grad.tolist() == [-1.0, 1.0, 0.0, 1.0, -1.0, 0.0]


def test_the_clip_reads_the_displayed_picture_unless_told_otherwise(clip) -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 32, 32, generator=g) * 2  # a third of it past the range
    with torch.no_grad():
        shown = clip.encode_image(img)
        assert torch.allclose(shown, clip.encode_image(img.clamp(-1, 1)))
        raw = clip.encode_image(img, as_displayed=False)
        assert not torch.allclose(raw, shown, atol=1e-4)


def test_a_colour_past_the_range_buys_no_clip_score() -> None:
    """With a CLIP that sees only colour, asked for red: on the raw output a red of 3 scores
    above a red of 1.5 and its gradient asks for more; on the displayed picture both score as
    a red of 1, and nothing asks to push it further (the paper's raw reading, as_displayed
    False, still does)."""
    from colour_clip import ColourClip

    from coral_core.editing.losses import clip_loss

    clip = ColourClip()
    target = clip.encode_text(["red"])

    def loss_and_grad(red: float, as_displayed: bool) -> tuple[float, float]:
        img = torch.full((1, 3, 8, 8), -0.5)
        img[:, 0, :4] = red  # the top half past the range
        img.requires_grad_(True)
        loss = clip_loss(clip, img, target, as_displayed=as_displayed)
        loss.backward()
        assert img.grad is not None
        return float(loss), float(img.grad[0, 0, :4].sum())

    shown_15, grad_shown = loss_and_grad(1.5, True)
    shown_3, _ = loss_and_grad(3.0, True)
    assert shown_15 == shown_3 and grad_shown == 0.0
    raw_15, grad_raw = loss_and_grad(1.5, False)
    raw_3, _ = loss_and_grad(3.0, False)
    assert raw_3 < raw_15 and grad_raw < 0  # raw: redder past the range still pays


def test_the_paper_preset_reads_the_raw_output() -> None:
    assert preset_config("paper", prompt="x").clip_sees_display is False
    assert preset_config("coral", prompt="x").clip_sees_display is True
