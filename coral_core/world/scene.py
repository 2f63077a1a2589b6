"""Scene vocabulary and parameters of the demo world, and how scenes are drawn from z.

A scene is a background colour (with a gentle vertical lighting gradient) and one or two objects,
each a shape, a colour, a size and a position; a later object is drawn on top of an earlier one.
``scenes_from_z`` is a fixed function of the latent: the demo generator is trained to draw the
scene its z names (the supervised route, see ``gan_train``), so a sample's true masks are known.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SHAPES = ("circle", "square", "triangle")
OBJECT_COLOURS = {
    "red": (0.86, 0.16, 0.14), "green": (0.16, 0.70, 0.22), "blue": (0.15, 0.30, 0.88),
    "yellow": (0.95, 0.85, 0.15), "purple": (0.58, 0.22, 0.72), "white": (0.95, 0.95, 0.95),
}
BACKGROUND_COLOURS = {
    "black": (0.08, 0.08, 0.09), "grey": (0.50, 0.50, 0.52), "orange": (0.93, 0.52, 0.12),
    "cyan": (0.20, 0.75, 0.80), "pink": (0.95, 0.60, 0.72),
}
OBJ_NAMES = tuple(OBJECT_COLOURS)
BG_NAMES = tuple(BACKGROUND_COLOURS)
SIZES = ("small", "large")
SIZE_RADIUS = (0.17, 0.26)  # fraction of the image side
MAX_OBJECTS = 2
# Objects sit in two slots (left, right) with a small positional jitter. Measured reason: with
# free positions the supervised demo generator still drew blurry blobs after 3,100 steps (about
# 50 CPU minutes); a generator whose input is a learned constant learns slots much faster, and
# consistent slots give the segment catalogue parts that mean the same thing on every image.
SLOT_X = (0.32, 0.68)
JITTER = 0.05


@dataclass
class SceneBatch:
    """Scene parameters for a batch; object tensors are [B, MAX_OBJECTS], ``present`` masks
    out unused object slots."""

    background: torch.Tensor  # [B] index into BG_NAMES
    shape: torch.Tensor       # [B, K] index into SHAPES
    colour: torch.Tensor      # [B, K] index into OBJ_NAMES
    size: torch.Tensor        # [B, K] index into SIZES
    cx: torch.Tensor          # [B, K] in [0, 1]
    cy: torch.Tensor          # [B, K]
    present: torch.Tensor     # [B, K] bool
    gradient: torch.Tensor    # [B] lighting gradient strength

    def __len__(self) -> int:
        return int(self.background.shape[0])

    def describe(self, i: int) -> dict:
        objects = [{"shape": SHAPES[int(self.shape[i, k])],
                    "colour": OBJ_NAMES[int(self.colour[i, k])],
                    "size": SIZES[int(self.size[i, k])],
                    "center": [round(float(self.cx[i, k]), 3), round(float(self.cy[i, k]), 3)]}
                   for k in range(MAX_OBJECTS) if bool(self.present[i, k])]
        return {"background": BG_NAMES[int(self.background[i])], "objects": objects}

    def select(self, index: torch.Tensor | slice) -> "SceneBatch":
        return SceneBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def _pick(u: torch.Tensor, n: int) -> torch.Tensor:
    return (u * n).long().clamp(0, n - 1)


def scenes_from_uniform(u: torch.Tensor) -> SceneBatch:
    """Scene parameters from uniforms u [B, >= 16] in [0, 1): a fixed, deterministic map."""
    b = u.shape[0]
    background = _pick(u[:, 0], len(BG_NAMES))
    n_objects = 1 + (u[:, 1] > 0.5).long()
    present = torch.stack([torch.ones(b, dtype=torch.bool), n_objects > 1], 1)
    cols = []
    shapes, sizes, cxs, cys = [], [], [], []
    for k in range(MAX_OBJECTS):
        o = 2 + 6 * k
        shapes.append(_pick(u[:, o], len(SHAPES)))
        cols.append(_pick(u[:, o + 1], len(OBJ_NAMES)))
        sizes.append(_pick(u[:, o + 2], len(SIZES)))
        cxs.append(SLOT_X[k] + JITTER * (2 * u[:, o + 3] - 1))
        cys.append(0.5 + JITTER * (2 * u[:, o + 4] - 1))
    gradient = 0.25 * u[:, 14]
    return SceneBatch(background, torch.stack(shapes, 1), torch.stack(cols, 1),
                      torch.stack(sizes, 1), torch.stack(cxs, 1), torch.stack(cys, 1),
                      present, gradient)


def scenes_from_z(z: torch.Tensor) -> SceneBatch:
    """The scene a demo-generator latent names: uniforms from the first 16 z dims (normal CDF)."""
    u = 0.5 * (1 + torch.erf(z[:, :16].to(torch.float32) / 2 ** 0.5))
    return scenes_from_uniform(u.clamp(0, 1 - 1e-6))


def random_scenes(n: int, seed: int) -> SceneBatch:
    """Scenes drawn independently of any generator (for CLIP training and evaluation)."""
    g = torch.Generator().manual_seed(seed)
    return scenes_from_uniform(torch.rand(n, 16, generator=g))
