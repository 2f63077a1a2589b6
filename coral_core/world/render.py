"""Batched, anti-aliased rendering of demo-world scenes, with exact per-object visible masks.

Coverage is computed on a supersampled grid and area-averaged, so edges are anti-aliased and the
masks are fractional where a pixel is partly covered. Deterministic: same scenes, same pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scene import (BACKGROUND_COLOURS, MAX_OBJECTS, OBJECT_COLOURS, SIZE_RADIUS, SceneBatch)

_OBJ_RGB = torch.tensor(list(OBJECT_COLOURS.values()))
_BG_RGB = torch.tensor(list(BACKGROUND_COLOURS.values()))


def _coverage(scenes: SceneBatch, k: int, res: int, ss: int) -> torch.Tensor:
    """Fraction of each pixel covered by object slot k: [B, res, res]."""
    n = res * ss
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cx = scenes.cx[:, k, None, None]
    cy = scenes.cy[:, k, None, None]
    r = torch.tensor(SIZE_RADIUS)[scenes.size[:, k]][:, None, None]
    dx, dy = xx[None] - cx, yy[None] - cy
    circle = dx.square() + dy.square() <= r.square()
    square = (dx.abs() <= r * 0.82) & (dy.abs() <= r * 0.82)
    # upward triangle with its centroid at (cx, cy)
    h = r * 1.5
    top, base = -h * 2 / 3, h / 3
    rel = (dy - top) / (base - top)
    triangle = (dy >= top) & (dy <= base) & (dx.abs() <= rel * r * 1.0)
    shape = scenes.shape[:, k, None, None]
    inside = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    inside = inside & scenes.present[:, k, None, None]
    return F.avg_pool2d(inside.float()[:, None], ss)[:, 0]


def render(scenes: SceneBatch, res: int = 32, supersample: int = 4
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, res, res] in [-1, 1] and visible masks [B, 1 + MAX_OBJECTS, res, res]:
    channel 0 the background, channel 1 + k object slot k (zero if absent)."""
    b = len(scenes)
    ys = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    light = 1 + scenes.gradient[:, None] * (0.5 - ys[None])  # brighter at the top
    bg = _BG_RGB[scenes.background][:, :, None, None] * light[:, None, :, None]
    img = bg.expand(b, 3, res, res).clone()
    visible = []
    remaining = torch.ones(b, res, res)
    covers = [_coverage(scenes, k, res, supersample) for k in range(MAX_OBJECTS)]
    for k in reversed(range(MAX_OBJECTS)):  # later objects are on top
        vis = covers[k] * remaining
        visible.insert(0, vis)
        remaining = remaining - vis
    for k in range(MAX_OBJECTS):
        colour = _OBJ_RGB[scenes.colour[:, k]][:, :, None, None]
        shade = 1 + 0.5 * scenes.gradient[:, None, None, None] * (0.5 - ys[None, None, :, None])
        a = covers[k][:, None]
        img = img * (1 - a) + colour * shade * a
    masks = torch.stack([remaining.clamp(0, 1)] + visible, 1)
    return (img.clamp(0, 1) * 2 - 1), masks
