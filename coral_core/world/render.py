"""Batched, anti-aliased rendering of demo-world scenes, with exact per-object visible masks.

Coverage is computed on a supersampled grid and area-averaged, so edges are anti-aliased and the
masks are fractional where a pixel is partly covered. Deterministic: same scenes, same pixels,
on the device the scenes live on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scene import (DEMO_RESOLUTION, MAX_OBJECTS, PALETTE, SIZE_RADIUS, SLOT_X, SLOT_Y,
                    SceneBatch)

_RGB = torch.tensor(list(PALETTE.values()))
_RADIUS = torch.tensor(SIZE_RADIUS)


def palette_rgb(device: torch.device | str) -> torch.Tensor:
    """The palette as [n_colours, 3] in [0, 1]."""
    return _RGB.to(device)


def _coverage(scenes: SceneBatch, k: int, res: int, ss: int) -> torch.Tensor:
    """Fraction of each pixel covered by object slot k: [B, res, res]."""
    device = scenes.background.device
    n = res * ss
    coords = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    r = _RADIUS.to(device)[scenes.size[:, k]][:, None, None]
    dx, dy = xx[None] - SLOT_X[k], yy[None] - SLOT_Y
    circle = dx.square() + dy.square() <= r.square()
    square = (dx.abs() <= r * 0.82) & (dy.abs() <= r * 0.82)
    # upward triangle with its centroid at the slot centre
    h = r * 1.5
    top, base = -h * 2 / 3, h / 3
    rel = (dy - top) / (base - top)
    triangle = (dy >= top) & (dy <= base) & (dx.abs() <= rel * r * 1.0)
    shape = scenes.shape[:, k, None, None]
    inside = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    inside = inside & scenes.present[:, k, None, None]
    return F.avg_pool2d(inside.float()[:, None], ss)[:, 0]


def shading(scenes: SceneBatch, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row brightness factors [B, 1, res, 1] of the background and of objects (objects are
    lit half as strongly), so segmenters can predict each region's exact colour."""
    device = scenes.background.device
    ys = (torch.arange(res, dtype=torch.float32, device=device) + 0.5) / res
    tilt = scenes.gradient[:, None, None, None] * (0.5 - ys[None, None, :, None])
    return 1 + tilt, 1 + 0.5 * tilt


def render(scenes: SceneBatch, res: int = DEMO_RESOLUTION, supersample: int = 4
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, res, res] in [-1, 1] and visible masks [B, 1 + MAX_OBJECTS, res, res]:
    channel 0 the background, channel 1 + k object slot k (zero if absent)."""
    b = len(scenes)
    device = scenes.background.device
    rgb = palette_rgb(device)
    bg_light, obj_light = shading(scenes, res)
    img = (rgb[scenes.background][:, :, None, None] * bg_light).expand(b, 3, res, res)
    remaining = torch.ones(b, res, res, device=device)
    covers = [_coverage(scenes, k, res, supersample) for k in range(MAX_OBJECTS)]
    visible: list[torch.Tensor] = []
    for k in reversed(range(MAX_OBJECTS)):  # later objects are on top
        vis = covers[k] * remaining
        visible.insert(0, vis)
        remaining = remaining - vis
    for k in range(MAX_OBJECTS):
        colour = rgb[scenes.colour[:, k]][:, :, None, None] * obj_light
        a = covers[k][:, None]
        img = img * (1 - a) + colour * a
    masks = torch.stack([remaining.clamp(0, 1)] + visible, 1)
    return (img.clamp(0, 1) * 2 - 1), masks
