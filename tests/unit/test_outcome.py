"""What a finished run tells the user and how it leaves images the prompt does not fit:
the empty-edit warnings at their visibility bounds, the zeroing of unfit images, the
prompt-length warning, and the fit figures an edit records."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from coral_core.editing.config import TrainConfig
from coral_core.editing.directions import GlobalDirection
from coral_core.editing.fit import MIN_RELATIVE_RANGE, PromptFit
from coral_core.editing.outcome import (VISIBLE_SHARE, VISIBLE_STEP, empty_edit_warnings,
                                        fit_info, leave_unchanged, user_warnings)
from coral_core.editing.selectors import SegmentSelector


def _images(changed_pixels: int, step: float, side: int = 100) -> tuple[torch.Tensor, ...]:
    """An original and an edit that moves ``changed_pixels`` pixels (one channel) by ``step``."""
    original = torch.zeros(1, 3, side, side)
    edited = original.clone()
    edited[0, 1].view(-1)[:changed_pixels] = step
    return edited, original


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"prompt": "a red square", **kw})


def test_a_visible_edit_of_a_selected_layer_raises_no_warning() -> None:
    edited, original = _images(changed_pixels=100, step=2 * VISIBLE_STEP)  # 1 % of pixels
    masks = [None, torch.full((1, 1, 4, 4), 0.5)]
    assert empty_edit_warnings(masks, edited, original, _cfg()) == []


def test_masks_all_under_one_half_mean_no_layer_was_selected() -> None:
    edited, original = _images(changed_pixels=100, step=2 * VISIBLE_STEP)
    masks = [None, torch.full((1, 1, 4, 4), 0.49), torch.zeros(1, 1, 8, 8)]
    (warning,) = empty_edit_warnings(masks, edited, original, _cfg())
    assert "selected no layer" in warning and "below 0.5" in warning
    # one mask reaching 0.5 anywhere is a selection
    masks[2][0, 0, 3, 3] = 0.5
    assert empty_edit_warnings(masks, edited, original, _cfg()) == []
    # an unmasked edit (no_masks) selects no layer by design: nothing to warn about
    assert empty_edit_warnings([None, None], edited, original, _cfg(no_masks=True)) == []


@pytest.mark.parametrize("pixels, step, warned", [
    (100, 2 * VISIBLE_STEP, False),          # 1 % of the pixels, clearly visible
    (100, 0.9 * VISIBLE_STEP, True),         # under one grey level: nobody sees it
    (int(VISIBLE_SHARE * 10_000), 2 * VISIBLE_STEP, False),   # exactly the visible share
    (int(VISIBLE_SHARE * 10_000) - 1, 2 * VISIBLE_STEP, True),  # one pixel fewer
    (0, 0.0, True),
])
def test_an_edit_that_changes_almost_nothing_says_so(pixels, step, warned) -> None:
    edited, original = _images(pixels, step)
    masks = [torch.ones(1, 1, 4, 4)]
    warnings = empty_edit_warnings(masks, edited, original, _cfg())
    assert bool(warnings) == warned
    if warned:
        visible = pixels if step > VISIBLE_STEP else 0
        assert f"{100 * visible / 10_000:.2f} % of the pixels visibly" in warnings[0]


def test_a_change_is_read_on_its_largest_channel_and_either_sign() -> None:
    edited, original = _images(100, 0.0)
    edited[0, 2].view(-1)[:100] = -2 * VISIBLE_STEP  # only blue, darker
    assert empty_edit_warnings([torch.ones(1, 1, 2, 2)], edited, original, _cfg()) == []


def _fit(rows: int, **kw) -> PromptFit:
    base = dict(relative_range=1.0, already=[False] * rows, warnings=[])
    base.update(kw)
    return PromptFit(**base)


def _trained(rows: int, segments: int = 3, layers: int = 4):
    direction = GlobalDirection(num_ws=6, w_dim=8, rows=rows)
    with torch.no_grad():
        direction.delta.fill_(0.5)
    selector = SegmentSelector(num_layers=layers, k=segments, rows=rows)
    with torch.no_grad():
        selector.logits.fill_(3.0)
    return direction, selector


def test_images_the_prompt_does_not_fit_are_zeroed_and_the_others_kept() -> None:
    direction, selector = _trained(rows=4)
    fit = _fit(4, already=[True, False, False, False], off_target=[False, True, False, False],
               absent=[False, False, False, True])
    leave_unchanged(direction, selector, fit)
    zeroed = [bool((direction.delta[i] == 0).all()) for i in range(4)]
    assert zeroed == [True, True, False, True]
    assert bool((direction.delta[2] == 0.5).all())
    off = [bool((torch.sigmoid(selector.logits[i]) < 1e-6).all()) for i in range(4)]
    assert off == [True, True, False, True]
    assert bool((selector.logits[2] == 3.0).all())


def test_a_prompt_with_nothing_to_aim_at_zeroes_every_image() -> None:
    direction, selector = _trained(rows=3)
    leave_unchanged(direction, selector, _fit(3, relative_range=MIN_RELATIVE_RANGE / 2))
    assert bool((direction.delta == 0).all())
    assert bool((torch.sigmoid(selector.logits) < 1e-6).all())


def test_a_per_prompt_edit_has_one_row_for_every_image() -> None:
    """One shared direction and selection (per prompt): an image the prompt does not fit
    zeroes that one row, i.e. the whole edit."""
    direction, selector = _trained(rows=1)
    leave_unchanged(direction, selector, _fit(4, already=[False, False, True, False]))
    assert bool((direction.delta == 0).all())
    assert bool((torch.sigmoid(selector.logits) < 1e-6).all())


def test_a_fitting_prompt_leaves_the_edit_alone() -> None:
    direction, selector = _trained(rows=2)
    leave_unchanged(direction, selector, _fit(2))
    assert bool((direction.delta == 0.5).all()) and bool((selector.logits == 3.0).all())


class _Tokens:
    context_length = 8

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def _clip(tokenizer=None) -> SimpleNamespace:
    clip = SimpleNamespace(tokenizer=tokenizer)
    from coral_core.clip_model import CoralClip
    clip.tokens_beyond_context = lambda prompt: CoralClip.tokens_beyond_context(clip, prompt)
    return clip


def test_user_warnings_say_the_fit_verdicts_and_a_cut_prompt_first() -> None:
    edited, original = _images(0, 0.0)
    last = ([torch.zeros(1, 1, 2, 2)], edited, original)
    fit = _fit(1, warnings=["prompt 'x': left unchanged"])
    long_prompt = "a b c d e f g"  # 7 words + start/end = 9 tokens > 8
    warnings = user_warnings(_clip(_Tokens()), TrainConfig(prompt=long_prompt), fit, last)
    assert warnings[0] == "prompt 'x': left unchanged"
    assert warnings[1].startswith("prompt: the CLIP reads 8 tokens and the prompt has 9")
    assert len(warnings) == 2  # the empty-edit warnings would only repeat the fit's verdict


def test_user_warnings_fall_back_to_the_empty_edit_check() -> None:
    edited, original = _images(0, 0.0)
    last = ([torch.zeros(1, 1, 2, 2)], edited, original)
    short = TrainConfig(prompt="a b c d e f")  # 8 tokens: fits exactly
    warnings = user_warnings(_clip(_Tokens()), short, None, last)
    assert len(warnings) == 2 and "selected no layer" in warnings[0]
    assert user_warnings(_clip(_Tokens()), short, None, None) == []  # no step ran
    assert user_warnings(_clip(None), short, _fit(1), None) == []  # a tokenizer that can't count


def test_fit_info_records_the_figures_an_edit_keeps() -> None:
    fit = _fit(2, relative_range=0.123456, already=[True, False], absent=[False, True])
    fit.bimodality = 0.81234
    assert fit_info(fit) == {"relative_range": 0.123, "bimodality": 0.812, "aimless": False,
                             "already": [True, False], "absent": [False, True]}
    fit.bimodality = 0.5
    assert fit_info(fit)["aimless"] is True  # a small range and one group
    fit.reached = [0.25, 1.0]
    assert fit_info(fit)["reach"] == [0.25, 1.0]


def test_the_warnings_read_in_full() -> None:
    edited, original = _images(0, 0.0)
    original += 0.3  # a grey picture, not black: the change is edited - original
    edited = original.clone()
    assert empty_edit_warnings([torch.zeros(1, 1, 2, 2)], edited, original, _cfg()) == [
        "the edit selected no layer (every mask stayed below 0.5): it changes almost "
        "nothing. Try more steps, a smaller area weight, or a prompt that names what "
        "should change",
        "the edit changes 0.00 % of the pixels visibly: try more steps or a higher "
        "learning rate, or check the prompt"]
    long_prompt = TrainConfig(prompt="a b c d e f g")
    assert user_warnings(_clip(_Tokens()), long_prompt, _fit(1), None) == [
        "prompt: the CLIP reads 8 tokens and the prompt has 9; the rest was ignored"]


def test_a_change_of_exactly_one_grey_level_is_not_visible() -> None:
    original = torch.zeros(1, 3, 10, 10)
    edited = original.clone()
    edited[0, 0] = VISIBLE_STEP  # every pixel, by exactly the step
    assert len(empty_edit_warnings([torch.ones(1, 1, 2, 2)], edited, original, _cfg())) == 1
    edited[0, 0] += 1e-3
    assert empty_edit_warnings([torch.ones(1, 1, 2, 2)], edited, original, _cfg()) == []


def test_the_visible_share_is_said_to_the_hundredth_of_a_percent() -> None:
    original = torch.zeros(1, 3, 23, 30)      # 690 pixels: one is 0.1449 %
    edited = original.clone()
    edited[0, 0, 0, 0] = 1.0
    (warning,) = empty_edit_warnings([torch.ones(1, 1, 2, 2)], edited, original, _cfg())
    assert warning.startswith("the edit changes 0.14 % of the pixels visibly")


def test_the_run_summary_records_steps_rates_losses_settings_and_selection() -> None:
    from coral_core.editing.outcome import summary_info

    sel = SegmentSelector(num_layers=3, k=2, init=0.1)
    with torch.no_grad():
        sel.logits[0, 1, 0] = 5.0
    cfg = TrainConfig(prompt="a red square", steps=50, batch=3, seed=7, lr=0.02)
    history = [{"total": 1.0}, {"total": 0.7}, {"total": 0.5, "clip": 0.4}]
    info = summary_info(None, SimpleNamespace(selector=sel), cfg, history, 12.3456, True,
                        "cancelled")
    assert info["steps"] == 3 and info["steps_requested"] == 50
    assert info["wall_seconds"] == 12.35 and info["partial"] is True
    assert info["lr"] == {"direction": 0.02, "selector": 0.02}
    assert info["batch"] == 3 and info["seed"] == 7 and info["directional"] is False
    assert info["final_losses"] == {"total": 0.5, "clip": 0.4}
    assert info["loss_weights"] == cfg.weights.to_dict()
    assert info["config"]["prompt"] == "a red square" and info["config"]["steps"] == 50
    assert info["stopped_reason"] == "cancelled"
    assert info["selection"]["pairs"] == [(2, 0)]
    quiet = summary_info(None, SimpleNamespace(selector=sel), cfg, [], 1.0, False, "")
    assert "stopped_reason" not in quiet and quiet["final_losses"] == {}
    assert quiet["steps"] == 0 and quiet["partial"] is False
