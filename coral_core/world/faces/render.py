"""Batched, anti-aliased rendering of portraits, with exact per-part visible masks.

A portrait is painted back to front from simple shapes (ellipses, discs, rings, boxes) placed
relative to the head, so every part follows the head's size and position. Coverage is computed
on a supersampled grid and area-averaged (anti-aliased edges, fractional masks). Deterministic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scene import (BACKGROUNDS, EYE_COLOURS, HAIR_COLOURS, PARTS, RESOLUTION, SKIN_TONES,
                    FaceBatch)

_TABLES = {name: torch.tensor(list(table.values())) for name, table in
           (("background", BACKGROUNDS), ("skin", SKIN_TONES), ("hair_colour", HAIR_COLOURS),
            ("eyes", EYE_COLOURS))}
SCLERA = (0.95, 0.95, 0.93)
MOUTH = (0.58, 0.12, 0.16)
TEETH = (0.97, 0.96, 0.90)
FRAME = (0.08, 0.08, 0.10)
BEARD_SHADE = 0.82   # a beard is its hair colour, a little darker
PX = 1 / 64          # geometry below is written in 64-px units, scaled with the head


def _colour(name: str, index: torch.Tensor) -> torch.Tensor:
    return _TABLES[name].to(index.device)[index]


def _const(rgb: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rgb, device=like.device).expand(like.shape[0], 3)


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
             rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    return ((x - cx) / rx).square() + ((y - cy) / ry).square() <= 1


def layers(faces: FaceBatch, res: int, ss: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(part, coverage [B, res, res], colour [B, 3]) for every painted layer, back to front."""
    dev = faces.background.device
    n = res * ss
    coords = (torch.arange(n, dtype=torch.float32, device=dev) + 0.5) / n
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    x, y = xx[None], yy[None]

    def col(t: torch.Tensor) -> torch.Tensor:
        return t[:, None, None]

    s = col(faces.scale)
    cx, cy = 0.5 + col(faces.shift_x), 0.47 + col(faces.shift_y)
    rx, ry = 0.235 * s, 0.30 * s
    u, v = (x - cx) / rx, (y - cy) / ry
    face = u.square() + v.square() <= 1
    neck = ((x - cx).abs() <= 0.42 * rx) & (y >= cy + 0.6 * ry)
    style = col(faces.hair_style)
    hair_shell = _ellipse(x, y, cx, cy - 0.06 * ry, 1.13 * rx, 1.10 * ry)
    hair_top = hair_shell & ((v < -0.50 + 0.30 * u.square()) | (~face & (v < 0.05)))
    hair_top = hair_top & (style > 0)
    hair_back = ((x - cx).abs() <= 1.22 * rx) & (y >= cy - 0.2 * ry) & (y <= cy + 1.28 * ry)
    hair_back = (hair_back | hair_shell) & (style == 2)
    beard_shell = _ellipse(x, y, cx, cy + 0.04 * ry, 1.05 * rx, 1.08 * ry)
    beard = beard_shell & ((v > 0.30) | ((u.abs() > 0.80) & (v > -0.15)))
    beard = beard & (col(faces.beard) == 1)
    my = cy + 0.52 * ry
    # a smile is an open mouth (the lower half of an ellipse) showing a band of teeth: a thin
    # crescent of the lips' colour alone was no cue the CLIP could read at 64 px (its texts and
    # images for "smiling" and "neutral" embedded at cosine 0.999; docs/demo-worlds.md)
    top = my - 0.6 * PX * s
    smile = _ellipse(x, y, cx, top, 6.2 * PX * s, 3.8 * PX * s) & (y >= top)
    teeth = smile & (y <= top + 1.7 * PX * s) & (col(faces.mouth) == 1)
    neutral = _ellipse(x, y, cx, my + 1.0 * PX * s, 4.6 * PX * s, 1.25 * PX * s)
    mouth = torch.where(col(faces.mouth) == 1, smile, neutral)
    ey = cy - 0.08 * ry
    sclera = torch.zeros_like(face)
    iris = torch.zeros_like(face)
    rims = torch.zeros_like(face)
    for side in (-1, 1):
        ex = cx + side * 0.40 * rx
        white = _ellipse(x, y, ex, ey, 4.0 * PX * s, 2.9 * PX * s)
        sclera = sclera | white
        iris = iris | (white & _ellipse(x, y, ex, ey, 2.6 * PX * s, 2.6 * PX * s))
        d2 = (x - ex).square() + (y - ey).square()
        rims = rims | ((d2 <= (5.7 * PX * s).square()) & (d2 >= (4.1 * PX * s).square()))
    bar = (y - ey).abs() <= 0.65 * PX * s
    arms = bar & ((x - cx).abs() <= 1.0 * rx)
    glasses = (rims | arms) & (col(faces.glasses) == 1)

    hair_rgb = _colour("hair_colour", faces.hair_colour)
    skin_rgb = _colour("skin", faces.skin)
    return [("hair", hair_back, hair_rgb), ("skin", neck, skin_rgb * 0.9),
            ("skin", face, skin_rgb), ("hair", hair_top, hair_rgb),
            ("beard", beard, hair_rgb * BEARD_SHADE), ("mouth", mouth, _const(MOUTH, hair_rgb)),
            ("mouth", teeth, _const(TEETH, hair_rgb)),
            ("skin", sclera, _const(SCLERA, hair_rgb)),
            ("eyes", iris, _colour("eyes", faces.eyes)),
            ("glasses", glasses, _const(FRAME, hair_rgb))]


def render(faces: FaceBatch, res: int = RESOLUTION, supersample: int = 4
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, res, res] in [-1, 1] and visible masks [B, len(PARTS), res, res]."""
    b = len(faces)
    dev = faces.background.device
    painted = [(part, F.avg_pool2d(cov.float()[:, None], supersample)[:, 0], rgb)
               for part, cov, rgb in layers(faces, res, supersample)]
    img = _colour("background", faces.background)[:, :, None, None].expand(b, 3, res, res)
    for _, cover, rgb in painted:
        a = cover[:, None]
        img = img * (1 - a) + rgb[:, :, None, None] * a
    xs = (torch.arange(res, dtype=torch.float32, device=dev) + 0.5) / res
    light = 1 + faces.light[:, None, None, None] * (0.5 - xs[None, None, None, :]) * 2
    img = (img * light).clamp(0, 1)
    masks = torch.zeros(b, len(PARTS), res, res, device=dev)
    remaining = torch.ones(b, res, res, device=dev)
    for part, cover, _ in reversed(painted):
        visible = cover * remaining
        masks[:, PARTS.index(part)] += visible
        remaining = remaining - visible
    masks[:, 0] = remaining.clamp(0, 1)
    return img * 2 - 1, masks
