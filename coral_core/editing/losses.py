"""Loss terms of CoralStyleCLIP: CLIP (global or directional), L2, area, TV, identity."""
from __future__ import annotations

from typing import Sequence

import torch

from ..clip_model import CoralClip
from ..errors import InputError
from ..stylegan import Generator
from .config import AREA_WEIGHTINGS, LossWeights  # noqa: F401 (their home: config.py)


def area_betas(G: Generator, weights: LossWeights) -> list[float]:
    """beta_l per conv layer: decides whether edits prefer coarse or fine layers."""
    if weights.area_layer_weights is not None:
        betas = list(weights.area_layer_weights)
        if len(betas) != len(G.conv_layers):
            raise InputError(f"area_layer_weights needs {len(G.conv_layers)} values (one per "
                             f"conv layer), got {len(betas)}")
        return betas
    if weights.area_weighting not in AREA_WEIGHTINGS:
        raise InputError(f"area_weighting must be one of {AREA_WEIGHTINGS}")
    res = [c.resolution for c in G.conv_layers]
    if weights.area_weighting == "spread":
        # In proportion to how far a change at that layer spreads in the image: about the
        # image side over the layer's resolution (a 4-px layer's change covers a quarter of the
        # picture; measured spill on the v1 demo: all layers 28 dB next to a mask edge, 16-px and
        # finer 36 dB, the last layer none). Normalised to mean 1, so the area weight means the
        # same at any depth: the same default suits 7, 9 or 17 conv layers.
        raw = [1.0 / r for r in res]
        mean = sum(raw) / len(raw)
        return [x / mean for x in raw]
    if weights.area_weighting == "spread_area":
        # the same by the AREA a change at that layer reaches ((side / resolution) ** 2)
        raw = [1.0 / r ** 2 for r in res]
        mean = sum(raw) / len(raw)
        return [x / mean for x in raw]
    if weights.area_weighting == "resolution":  # fine layers cost more
        return [r / max(res) for r in res]
    if weights.area_weighting == "inverse_resolution":  # coarse layers cost more
        return [min(res) / r for r in res]
    return [1.0] * len(res)


def clip_loss(clip: CoralClip, img: torch.Tensor, target: torch.Tensor,
              source_img_emb: torch.Tensor | None = None,
              text_direction: torch.Tensor | None = None,
              directional_share: float = 1.0, as_displayed: bool = True) -> torch.Tensor:
    """1 - cos(E_I(x), E_T(t)); directional: 1 - cos(E_I(x) - E_I(x0), E_T(t) - E_T(n)),
    mixed with the global term by ``directional_share``. ``as_displayed``: the CLIP reads the
    picture as displayed (``TrainConfig.clip_sees_display``)."""
    return clip_loss_per_image(clip, img, target, source_img_emb, text_direction,
                               directional_share, as_displayed).mean()


def clip_loss_per_image(clip: CoralClip, img: torch.Tensor, target: torch.Tensor,
                        source_img_emb: torch.Tensor | None = None,
                        text_direction: torch.Tensor | None = None,
                        directional_share: float = 1.0,
                        as_displayed: bool = True) -> torch.Tensor:
    """``clip_loss`` for each image [B]: region pruning compares edits image by image."""
    emb = clip.encode_image(img, as_displayed)
    plain = 1 - (emb * target).sum(-1)
    if text_direction is not None and source_img_emb is not None:
        d_img = torch.nn.functional.normalize(emb - source_img_emb, dim=-1)
        directional = 1 - (d_img * text_direction).sum(-1)
        return directional_share * directional + (1 - directional_share) * plain
    return plain


def area_loss(masks: Sequence[torch.Tensor | None], betas: list[float]) -> torch.Tensor:
    terms = [b * m.mean() for m, b in zip(masks, betas) if m is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def tv_loss(masks: Sequence[torch.Tensor | None]) -> torch.Tensor:
    terms = []
    for m in masks:
        if m is None or m.shape[-1] < 2:
            continue
        terms.append((m[..., 1:, :] - m[..., :-1, :]).square().mean()
                     + (m[..., :, 1:] - m[..., :, :-1]).square().mean())
    return torch.stack(terms).mean() if terms else torch.zeros(())


def leak_loss(edited: torch.Tensor, original: torch.Tensor,
              masks: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Share of the pixel change that falls outside the edit's own footprint (its masks at the
    finest selected resolution, upsampled to the image).

    Why: the blend carries a change made at a coarse layer on into every later layer, so a
    background mask at 4-16 px repaints the objects too, although the fine masks leave them
    out. This term asks the edit to stay inside the region it declares at full resolution; it
    needs no outside segmentation, and is scale-free (a share of the change energy, 0..1).
    """
    active = [m for m in masks if m is not None]
    if not active:
        return torch.zeros((), device=edited.device)
    finest = max(m.shape[-1] for m in active)
    footprint = torch.stack([m.expand(-1, 1, -1, -1) for m in active
                             if m.shape[-1] == finest]).amax(0)
    footprint = torch.nn.functional.interpolate(footprint.float(), size=edited.shape[-2:],
                                                mode="bilinear", align_corners=False)
    change = (edited.float() - original.float()).square().sum(1, keepdim=True)
    outside = ((1 - footprint) * change).flatten(1).sum(1)
    return (outside / (change.flatten(1).sum(1) + 1e-8)).mean()


def uneven_change_loss(edited: torch.Tensor, original: torch.Tensor, region: torch.Tensor,
                       only_below: float | None = None) -> torch.Tensor:
    """How unevenly the edit changes its region: per image, the spread of the change (edited
    minus original, as displayed: clamped to [-1, 1]) over ``region`` [B, 1, H, W] relative to
    the size of its mean change there (scale-free; 0 for a change alike everywhere in the
    region); the mean over the images. With ``only_below``, an image whose change is already
    uneven beyond that share (``uneven_share``) adds 0: it is changing shape, not colour.

    Why (a departure from the paper, ``LossWeights.even_change``): the CLIP reads a 64-px
    picture at 224 px and barely notices a few pixels, so a recolour left a ring of the old
    colour round every object and along the border (the generator draws the background next
    to an object from the same w differently) and stopped at a muddy gradient inside objects;
    one W+ offset per layer can draw an even change, the CLIP just never asked for it. Relative
    to the mean change so that a large recolour pays no more than a small one (an absolute
    spread held object recolours short of their colour). Why the gate: a change of shape (long
    hair, glasses) or one whose region reaches past the part it changes (a face's eyes) is
    uneven by nature, and asking it to be even spread it over the whole region. Measurements:
    docs/method.md ("An even change across the region")."""
    mean, spread, energy = _change_over(edited, original, region)
    per_image = spread / (mean.square().sum(1) + UNEVEN_FLOOR)
    if only_below is not None:  # the gate (uneven_share from the same sums) has no gradient
        per_image = per_image * (_share(spread, energy).detach() <= only_below)
    return per_image.mean()


def uneven_share(edited: torch.Tensor, original: torch.Tensor, region: torch.Tensor
                 ) -> torch.Tensor:
    """[B]: the share of the change's energy over ``region`` that is not its mean change there
    (0: alike everywhere; near 1: concentrated in a part): the gate that tells a recolour
    (small) from a change of shape (large); what each kind measured is in docs/method.md."""
    _, spread, energy = _change_over(edited.detach(), original, region)
    return _share(spread, energy)


def _share(spread: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    return spread / (energy + UNEVEN_FLOOR)


def _change_over(edited: torch.Tensor, original: torch.Tensor, region: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, over ``region`` (weighted; its area taken as at least one pixel), of the
    displayed change (both pictures clamped to [-1, 1]): the mean change [B, 3], the mean
    squared distance from it (the spread) [B] and the mean squared change (the energy) [B]."""
    change = edited.float().clamp(-1, 1) - original.float().clamp(-1, 1)
    weight = region.float()
    area = weight.sum((2, 3)).clamp_min(1.0)  # [B, 1]
    mean = (change * weight).sum((2, 3)) / area  # [B, 3]
    spread = ((change - mean[..., None, None]).square() * weight).sum((1, 2, 3)) / area[:, 0]
    energy = (change.square() * weight).sum((1, 2, 3)) / area[:, 0]
    return mean, spread, energy


#: added to the mean change's squared size (RGB in [-1, 1]) so that an edit that has not yet
#: moved (or a region nothing changes) does not divide by zero
UNEVEN_FLOOR = 0.01


def mask_areas(masks: Sequence[torch.Tensor | None]) -> list[float]:
    return [0.0 if m is None else float(m.detach().mean()) for m in masks]
