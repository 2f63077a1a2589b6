"""What a finished training run hands back besides the edit's weights: its summary record
(steps, losses, settings, selection), the warnings a user should read, and the zeroing of
images the prompt does not fit."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..clip_model import CoralClip
from ..stylegan import Generator
from .config import TrainConfig
from .directions import GlobalDirection
from .edit import Edit
from .fit import PromptFit
from .run_record import config_record
from .selectors import SegmentSelector

VISIBLE_STEP = 8 / 255 * 2   # one visible grey level step, in the generator's [-1, 1] units
VISIBLE_SHARE = 0.002         # of the pixels, for the edit to count as visible


def empty_edit_warnings(masks: list, edited: torch.Tensor, original: torch.Tensor,
                        cfg: TrainConfig) -> list[str]:
    """Say so when an edit selected no layer or changes nothing visible, with what to try:
    a silent no-op edit is the worst outcome for a user who queued a long run."""
    out = []
    if not cfg.no_masks and all(m is None or float(m.detach().max()) < 0.5 for m in masks):
        out.append("the edit selected no layer (every mask stayed below 0.5): it changes "
                   "almost nothing. Try more steps, a smaller area weight, or a prompt that "
                   "names what should change")
    changed = ((edited - original).abs().amax(1) > VISIBLE_STEP).float().mean()
    if float(changed) < VISIBLE_SHARE:
        out.append(f"the edit changes {100 * float(changed):.2f} % of the pixels visibly: "
                   "try more steps or a higher learning rate, or check the prompt")
    return out


@torch.no_grad()
def leave_unchanged(direction: nn.Module, selector: nn.Module, fit: PromptFit) -> None:
    """Zero the edit for every image the prompt does not fit (all of them when it has nothing
    to aim at): its direction row is 0 and its masks are empty, so applying it gives the
    original image exactly."""
    rows = list(range(direction.delta.shape[0])) if fit.aimless and isinstance(
        direction, GlobalDirection) else fit.unchanged_rows()
    if not rows or not isinstance(direction, GlobalDirection):
        return
    for i in rows:
        direction.delta[i if direction.delta.shape[0] > 1 else 0].zero_()
        if isinstance(selector, SegmentSelector):
            selector.logits[i if selector.logits.shape[0] > 1 else 0].fill_(-30.0)


def summary_info(G: Generator, edit: Edit, cfg: TrainConfig, history: list[dict[str, float]],
                 wall: float, partial: bool, reason: str) -> dict[str, Any]:
    """The edit's record of its run: steps, learning rates, losses, settings, selection."""
    from .visualize import selection_summary

    info: dict[str, Any] = {
        "steps": len(history), "steps_requested": cfg.steps, "wall_seconds": round(wall, 2),
        "lr": {"direction": cfg.direction_lr(), "selector": cfg.selector_lr()},
        "batch": cfg.batch, "seed": cfg.seed,
        "loss_weights": cfg.weights.to_dict(), "directional": cfg.directional,
        "final_losses": history[-1] if history else {}, "partial": partial,
        "config": config_record(cfg),
    }
    if reason:
        info["stopped_reason"] = reason
    info.update(selection_summary(G, edit))
    return info


def user_warnings(clip: CoralClip, cfg: TrainConfig, fit: PromptFit | None,
                  last: tuple[list, torch.Tensor, torch.Tensor] | None) -> list[str]:
    """Everything the user should read about the edit: the prompt fit's verdicts, a prompt
    cut to the CLIP's context, or (when nothing else was said) an edit that changes nothing.
    ``last``: the last step's masks, edited and original images (None: no step ran)."""
    warnings = list(fit.warnings) if fit is not None else []
    cut = clip.tokens_beyond_context(cfg.prompt)
    if cut:
        warnings.append(f"prompt: the CLIP reads {cut[1]} tokens and the prompt has {cut[0]}; "
                        "the rest was ignored")
    if last is not None and not warnings:
        masks, edited, original = last
        warnings = empty_edit_warnings(masks, edited.detach(), original, cfg)
    return warnings


def fit_info(fit: PromptFit) -> dict[str, Any]:
    """The prompt fit check's figures, as the edit records them."""
    out: dict[str, Any] = {"relative_range": round(fit.relative_range, 3),
                           "bimodality": round(fit.bimodality, 3), "aimless": fit.aimless,
                           "already": fit.already, "absent": fit.absent}
    if fit.reached:
        out["reach"] = fit.reached
    if fit.gain:
        out["gain"], out["rest"] = fit.gain, fit.rest
    return out
