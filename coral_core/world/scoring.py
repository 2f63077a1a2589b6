"""Pixel-level scores of an edit against the world's truth, as a user would judge the picture.

Why these and not only a PSNR: a user sees halos (a ring of the old colour round objects),
frames (the old colour along the image border), muddy colours and reshaped objects. Each has a
number here: the target colour's share in the region's interior, in the ring round other parts
and in the border band (a halo or frame shows as a lower share there than inside); the PSNR
inside the region against the *ideal* edit (the scene re-rendered with the change); and the
outline of every object before and after (IoU), read from the pixels.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..metrics import psnr

RING = 3          # px: the ring round other parts and the border band
SATURATION = 0.2  # below this a pixel has no colour name (black, white, grey)


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """A boolean [H, W] mask grown by ``pixels`` (square neighbourhood)."""
    if pixels <= 0:
        return mask.bool()
    x = mask.float()[None, None]
    return F.max_pool2d(x, 2 * pixels + 1, stride=1, padding=pixels)[0, 0] > 0.5


def shrink(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    return ~grow(~mask.bool(), pixels)


def border_band(like: torch.Tensor) -> torch.Tensor:
    """The image's ``RING``-px border band, a boolean mask shaped like ``like`` [H, W]."""
    band = torch.zeros_like(like, dtype=torch.bool)
    band[:RING] = band[-RING:] = True
    band[:, :RING] = band[:, -RING:] = True
    return band


def hue(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hue in [0, 1), saturation) per pixel of a [3, H, W] image in [-1, 1]: hue does not move
    with the world's lighting gradient, which scales brightness only."""
    rgb = ((img.float() + 1) / 2).clamp(0, 1)
    mx, mn = rgb.max(0).values, rgb.min(0).values
    c = mx - mn
    r, g, b = rgb
    safe = c.clamp_min(1e-6)
    h = torch.where(mx == r, ((g - b) / safe) % 6,
                    torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    return h % 1.0, c / mx.clamp_min(1e-6)


def colour_names(img: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Index of the nearest palette hue per pixel, -1 where the pixel is unsaturated."""
    h, s = hue(img)
    ph = hue(palette.T[:, :, None].to(img.device) * 2 - 1)[0][:, 0]  # palette [n, 3] in [0, 1]
    d = h[None] - ph[:, None, None]
    d = torch.minimum(d.abs(), 1 - d.abs())
    return torch.where(s >= SATURATION, d.argmin(0), torch.full_like(h, -1, dtype=torch.long))


def target_shares(edited: torch.Tensor, palette: torch.Tensor, target: int,
                  region: torch.Tensor, others: torch.Tensor, border: bool
                  ) -> dict[str, float]:
    """Share of pixels named ``target`` in the region's interior (3 px in from its edge), in the
    1-3 px ring round the other parts, and (``border``) in the image's 3-px border band."""
    names = colour_names(edited, palette) == target
    inside = region >= 0.5
    full = region >= 0.99  # pixels wholly of the region: anti-aliased edge pixels excluded
    band = border_band(inside)
    interior = shrink(inside, RING) & ~(band if border else torch.zeros_like(band))
    out = {"share_interior": _share(names, interior)}
    obj = others >= 0.5
    out["share_ring"] = _share(names, full & grow(obj, RING) & ~obj)
    if border:
        out["share_border"] = _share(names, band & full)
    return out


# A pixel's change counts as made when it goes at least this share of the way to the ideal
# render; only pixels the ideal changes by more than MIN_IDEAL_CHANGE (RGB distance, [-1, 1])
# are judged, so anti-aliased edges and the generator's own small errors do not count.
HALFWAY = 0.5
MIN_IDEAL_CHANGE = 0.3


def change_shares(edited: torch.Tensor, original: torch.Tensor, ideal: torch.Tensor,
                  region: torch.Tensor) -> dict[str, float]:
    """Share of the region's pixels changed at least halfway towards the ideal render, in its
    interior and in its edge band (within ``RING`` px of the region's outline or of the
    image's border). Why: a halo or a frame is the old picture left along the edge of a
    change that is made inside; it shows as an edge share below the interior's, whatever the
    colours are (on the face world, where no palette names the parts' colours)."""
    o, e, i = (t.float() for t in (original, edited, ideal))
    wanted = i - o
    size2 = (wanted ** 2).sum(0)
    judged = (region >= 0.5) & (size2.sqrt() > MIN_IDEAL_CHANGE)
    made = ((e - o) * wanted).sum(0) / size2.clamp_min(1e-6) >= HALFWAY
    edge = ~shrink(region >= 0.5, RING) | border_band(judged)
    return {"change_interior": _share(made, judged & ~edge),
            "change_edge": _share(made, judged & edge)}


def _share(hit: torch.Tensor, where: torch.Tensor) -> float:
    n = int(where.sum())
    return float((hit & where).sum()) / n if n else float("nan")


def outline(img: torch.Tensor, background: torch.Tensor, area: torch.Tensor,
            threshold: float = 0.2) -> torch.Tensor:
    """An object's outline read from pixels: the pixels of ``area`` whose colour differs from
    the background colour of their row (the median of ``background`` pixels in that row, which
    follows the lighting gradient) by more than ``threshold`` (RGB distance on [0, 1])."""
    rgb = (img.float() + 1) / 2
    bg = background >= 0.5
    rows = []
    fallback = rgb[:, bg].median(1).values if bool(bg.any()) else rgb.flatten(1).median(1).values
    for y in range(rgb.shape[1]):
        sel = bg[y]
        rows.append(rgb[:, y, sel].median(1).values if int(sel.sum()) >= 3 else fallback)
    ref = torch.stack(rows, 1)[:, :, None]  # [3, H, 1]
    return ((rgb - ref).norm(dim=0) > threshold) & area


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def psnr_in(edited: torch.Tensor, reference: torch.Tensor, where: torch.Tensor) -> float:
    """PSNR (dB) over the pixels of ``where`` [H, W] (images [3, H, W] in [-1, 1])."""
    return float(psnr(edited[None].cpu().float(), reference[None].cpu().float(),
                      where.float()[None])[0])


PRIOR_RECORD_KEYS = ("held_to_prior", "reach_trace", "freed_at_region_choice",
                     "reopened", "short_when_held", "trained_again_free", "held_first",
                     "held_kept", "free_tried")


def prior_record(info: dict[str, Any]) -> dict[str, Any]:
    """What the held direction did on a case (the reach per image as training went, which
    images were freed or trained again), for reading the runs afterwards."""
    prior = info.get("prior") or {}
    return {k: prior[k] for k in PRIOR_RECORD_KEYS if k in prior}
