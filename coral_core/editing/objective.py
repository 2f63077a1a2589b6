"""The paper's objective for one training step (CoralStyleCLIP, Revanur et al., CVPR 2023).

    masks m_l   from the selector (segment selection: weights over segments per layer;
                CAN: an attention head per layer on the generator's features)
    x_b         blended synthesis: at layer l, f_l = m_l * f_l(w + d) + (1 - m_l) * f_l(w)
    loss        clip(x_b, prompt) + l2 * |d|^2 + area * sum_l beta_l * |m_l|  (+ tv * TV(m), CAN)

The project's departures hook in here at named points, each switchable in ``TrainConfig``
(``--preset paper`` switches them all off): ``region`` (the composite that keeps everything
outside the chosen region exact, from the region choice on; with it, ``even_change`` asks
the change to be alike across that region), ``clip_on_edit`` (part of the CLIP
term read on the unmasked G(w + d)), the directional CLIP share, and the leak and identity
terms. Everything around the step (region choice, prior, checkpoints) lives in the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..clip_model import CoralClip
from ..stylegan import Generator
from .blend import blended_synthesis, mask_policy
from .config import TrainConfig
from .directions import GlobalDirection, LatentMapper
from .losses import (area_betas, area_loss, clip_loss, clip_loss_per_image, leak_loss, tv_loss,
                     uneven_change_loss)
from .selectors import AttentionSelector, SegmentSelector, composite

LOSS_NAMES = ("total", "clip", "l2", "area", "tv", "identity", "leak", "even")


def layer_masks(selector: SegmentSelector | AttentionSelector, G: Generator, feats: list[torch.Tensor],
                segs: torch.Tensor | None, cfg: TrainConfig, no_masks: bool = False
                ) -> list[torch.Tensor | None]:
    """One mask per conv layer from either selector, with the config's layer limits applied
    (``only_layers``, ``max_layer``; ``no_masks`` blends nothing: the plain edit)."""
    raw: list[torch.Tensor] | list[torch.Tensor | None]
    if isinstance(selector, SegmentSelector):
        assert segs is not None  # segment selection always has segments
        raw = selector.masks(G, segs)
    else:
        assert isinstance(selector, AttentionSelector)
        raw = selector.masks(feats, segs)
    return mask_policy(raw, no_masks=no_masks, only_layers=cfg.only_layers,
                       max_layer=cfg.max_layer)


@dataclass
class StepLoss:
    """One step's objective: ``total`` to minimise, each term's value, and what the step drew
    (the blended images and the masks, for previews and the empty-edit check)."""
    total: torch.Tensor
    terms: dict[str, float]
    edited: torch.Tensor
    masks: list[torch.Tensor | None]


class CoralObjective:
    """The loss of one step, given the direction, the masks and the original pass."""

    def __init__(self, G: Generator, clip: CoralClip, cfg: TrainConfig, target: torch.Tensor,
                 text_direction: torch.Tensor | None, identity: nn.Module | None) -> None:
        self.G, self.clip, self.cfg = G, clip, cfg
        self.target, self.text_direction = target, text_direction
        self.identity = identity
        self.betas = area_betas(G, cfg.weights)
        self.l2_weight = cfg.weights.l2_for(cfg.direction)

    def __call__(self, direction: GlobalDirection | LatentMapper, ws: torch.Tensor,
                 masks: list[torch.Tensor | None], noise: list, original: torch.Tensor,
                 source: torch.Tensor | None, directional_share: float,
                 region: torch.Tensor | None = None, recompute: bool = False,
                 image_weights: torch.Tensor | None = None) -> StepLoss:
        """``image_weights`` [B]: each image's share in the CLIP term (None: all alike;
        all 0: no CLIP term this step, the regularisers alone)."""
        G, w = self.G, self.cfg.weights
        delta = direction(ws)
        edited = blended_synthesis(G, ws, delta, masks, noise, recompute=recompute)
        if region is not None:  # departure: the composite (selectors.composite)
            edited = composite(edited, original, region)
        l_clip = self._clip(edited, source, directional_share, image_weights)
        if w.clip_on_edit > 0:  # departure: part of the CLIP term on the unmasked edit
            unmasked = G.synthesize(ws + delta, noise=noise)
            l_clip = (1 - w.clip_on_edit) * l_clip + w.clip_on_edit * self._clip(
                unmasked, source, directional_share, image_weights)
        zero = torch.zeros((), device=ws.device)
        l_l2 = direction.l2() if isinstance(direction, GlobalDirection) else direction.l2(delta)
        l_area = area_loss(masks, self.betas)
        l_tv = tv_loss(masks) if self.cfg.variant == "can" else zero
        l_id = self.identity(edited, original) if self.identity is not None else zero
        l_leak = leak_loss(edited, original, masks) if w.leak > 0 else zero
        l_even = uneven_change_loss(edited, original, region, w.even_change_below) \
            if region is not None and w.even_change > 0 else zero
        total = (w.clip * l_clip + self.l2_weight * l_l2 + w.area * l_area + w.tv * l_tv
                 + w.identity * l_id + w.leak * l_leak + w.even_change * l_even)
        values = (total, l_clip, l_l2, l_area, l_tv, l_id, l_leak, l_even)
        return StepLoss(total, {name: float(v.detach()) for name, v in zip(LOSS_NAMES, values)},
                        edited, masks)

    def _clip(self, images: torch.Tensor, source: torch.Tensor | None, share: float,
              image_weights: torch.Tensor | None = None) -> Any:
        if image_weights is None:
            return clip_loss(self.clip, images, self.target, source, self.text_direction, share,
                             self.cfg.clip_sees_display)
        per_image = clip_loss_per_image(self.clip, images, self.target, source,
                                        self.text_direction, share, self.cfg.clip_sees_display)
        return (per_image * image_weights).sum() / image_weights.sum().clamp_min(1.0)
