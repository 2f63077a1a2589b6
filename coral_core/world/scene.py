"""Scene vocabulary and parameters of the demo world (v2), and how scenes are drawn from z.

A scene is a background colour (with a gentle vertical lighting gradient) and one or two
objects, each a shape, a colour and a size, in one of two fixed slots; the right-hand object is
drawn on top of the left-hand one where they overlap.

Design decisions (world v2), each with its reason:

- **One palette for objects and backgrounds.** In v1 the two palettes were disjoint, so any
  orange pixel meant "orange background" and a CLIP never had to learn *where* a colour is; an
  edit that painted the objects orange scored as well as one that painted the background. Now
  every colour occurs both as a background and as an object colour (an orange circle on cyan and
  a cyan circle on orange both occur). An object never has its background's colour (it would be
  invisible): its colour is drawn from the other ``len(PALETTE) - 1`` colours.
- **64 px** (9 conv layers instead of 7): a one-pixel anti-aliased boundary is half as large a
  share of an object, and the 32- and 64-px layers can resolve an object's outline, which is
  where localised edits live.
- **Fixed slots, no positional jitter.** A per-object IoU of 0.9 with an 11-px-radius object
  leaves less than one pixel of boundary error; a StyleGAN2 synthesis network (constant input,
  modulated convs) places things at continuous sub-pixel offsets poorly, and v1's jitter was one
  reason its samples were blurred. Two slots still give overlap (two large objects touch).
- **Scenes from the normalised z.** StyleGAN2's mapping network first divides z by its RMS;
  reading the scene from that normalised z means the generator sees exactly the numbers that
  decide its scene (v1 read raw z, an error source of about 10 % in every threshold).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SHAPES = ("circle", "square", "triangle")
# Seven well separated colours, each used for backgrounds and for objects.
PALETTE = {
    "red": (0.86, 0.14, 0.12), "orange": (0.95, 0.55, 0.10), "yellow": (0.95, 0.88, 0.18),
    "green": (0.15, 0.68, 0.22), "cyan": (0.18, 0.78, 0.84), "blue": (0.16, 0.28, 0.88),
    "purple": (0.56, 0.20, 0.70),
}
COLOUR_NAMES = tuple(PALETTE)
# Kept as separate names because captions, the judge and the evaluation speak of "object colour"
# and "background colour"; in v2 they are the same list.
OBJ_NAMES = COLOUR_NAMES
BG_NAMES = COLOUR_NAMES
SIZES = ("small", "large")
SIZE_RADIUS = (0.17, 0.26)  # fraction of the image side
MAX_OBJECTS = 2
SLOT_X = (0.30, 0.70)
SLOT_Y = 0.52
DEMO_RESOLUTION = 64
# z dims that name the scene (the rest are free): background, object count, gradient, and per
# object shape, colour offset, size.
SCENE_DIMS = 9
# The discrete choices and the z dim each is read from: (dim, number of choices). The demo
# generator's mapping network is initialised with step features at exactly these thresholds.
DISCRETE_DIMS = ((0, len(COLOUR_NAMES)), (1, 2),
                 (3, len(SHAPES)), (4, len(COLOUR_NAMES) - 1), (5, len(SIZES)),
                 (6, len(SHAPES)), (7, len(COLOUR_NAMES) - 1), (8, len(SIZES)))
GRADIENT_DIM = 2
GRADIENT_MAX = 0.25


@dataclass
class SceneBatch:
    """Scene parameters for a batch; object tensors are [B, MAX_OBJECTS], ``present`` masks
    out unused object slots."""

    background: torch.Tensor  # [B] index into COLOUR_NAMES
    shape: torch.Tensor       # [B, K] index into SHAPES
    colour: torch.Tensor      # [B, K] index into COLOUR_NAMES (never the background's)
    size: torch.Tensor        # [B, K] index into SIZES
    present: torch.Tensor     # [B, K] bool
    gradient: torch.Tensor    # [B] lighting gradient strength

    def __len__(self) -> int:
        return int(self.background.shape[0])

    def describe(self, i: int) -> dict:
        objects = [{"shape": SHAPES[int(self.shape[i, k])],
                    "colour": COLOUR_NAMES[int(self.colour[i, k])],
                    "size": SIZES[int(self.size[i, k])], "slot": k}
                   for k in range(MAX_OBJECTS) if bool(self.present[i, k])]
        return {"background": COLOUR_NAMES[int(self.background[i])], "objects": objects}

    def select(self, index: torch.Tensor | slice) -> "SceneBatch":
        return SceneBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def to(self, device: torch.device | str) -> "SceneBatch":
        return SceneBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def clone(self) -> "SceneBatch":
        return SceneBatch(*(getattr(self, f).clone() for f in self.__dataclass_fields__))


def _pick(u: torch.Tensor, n: int) -> torch.Tensor:
    return (u * n).long().clamp(0, n - 1)


def object_colour(background: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The offset-th palette colour other than the background's (so objects stay visible)."""
    return offset + (offset >= background).long()


def scenes_from_uniform(u: torch.Tensor) -> SceneBatch:
    """Scene parameters from uniforms u [B, >= SCENE_DIMS] in [0, 1): a fixed, deterministic
    map (see DISCRETE_DIMS for which dim decides what)."""
    b = u.shape[0]
    background = _pick(u[:, 0], len(COLOUR_NAMES))
    two = u[:, 1] >= 0.5
    present = torch.stack([torch.ones(b, dtype=torch.bool, device=u.device), two], 1)
    shapes, cols, sizes = [], [], []
    for k in range(MAX_OBJECTS):
        o = 3 + 3 * k
        shapes.append(_pick(u[:, o], len(SHAPES)))
        cols.append(object_colour(background, _pick(u[:, o + 1], len(COLOUR_NAMES) - 1)))
        sizes.append(_pick(u[:, o + 2], len(SIZES)))
    gradient = GRADIENT_MAX * u[:, GRADIENT_DIM]
    return SceneBatch(background, torch.stack(shapes, 1), torch.stack(cols, 1),
                      torch.stack(sizes, 1), present, gradient)


def normalised_z(z: torch.Tensor) -> torch.Tensor:
    """z divided by its RMS over dims, exactly as StyleGAN2's mapping network's first step."""
    z = z.to(torch.float32)
    return z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def scenes_from_z(z: torch.Tensor) -> SceneBatch:
    """The scene a demo-generator latent names: uniforms from the first SCENE_DIMS dims of the
    normalised z (normal CDF)."""
    u = 0.5 * (1 + torch.erf(normalised_z(z)[:, :SCENE_DIMS] / 2 ** 0.5))
    return scenes_from_uniform(u.clamp(0, 1 - 1e-6))


def random_scenes(n: int, seed: int, device: torch.device | str = "cpu") -> SceneBatch:
    """Scenes drawn independently of any generator (for CLIP training and evaluation)."""
    g = torch.Generator().manual_seed(seed)
    return scenes_from_uniform(torch.rand(n, SCENE_DIMS, generator=g).to(device))


def swap_background_and_object(scenes: SceneBatch) -> SceneBatch:
    """Hard negatives for binding: the background takes the first object's colour and that
    object takes the background's (an orange circle on cyan becomes a cyan circle on orange).
    A second object that would then match the new background takes the old background colour's
    place too, so every object stays visible."""
    out = scenes.clone()
    out.background = scenes.colour[:, 0].clone()
    out.colour[:, 0] = scenes.background
    second_clash = out.colour[:, 1] == out.background
    out.colour[:, 1] = torch.where(second_clash, scenes.background, out.colour[:, 1])
    return out


def swap_object_colours(scenes: SceneBatch) -> SceneBatch:
    """Hard negatives for binding two objects: the two objects exchange colours."""
    out = scenes.clone()
    two = scenes.present[:, 1]
    out.colour[:, 0] = torch.where(two, scenes.colour[:, 1], scenes.colour[:, 0])
    out.colour[:, 1] = torch.where(two, scenes.colour[:, 0], scenes.colour[:, 1])
    return out
