"""Face-world vocabulary, parameters, and how portraits are drawn from z.

Design decisions, each with its reason:

- **64 px, close-up.** A 128-px world costs four times the generator's training time on the
  2-core machine (the shapes world's 64-px generator already took 95 minutes), and the head
  fills most of the frame so the small parts stay readable at 64 px: each iris is a disc of
  2.6 px radius (about 21 px, two per face), glasses' rims are 1.6 px thick, the mouth spans
  12-14 px.
- **Colours shared between places.** Red and grey occur as hair colours *and* as background
  colours, so a CLIP must bind a colour to its place ("red hair" on a blue background is not
  "a red background"). Hair never takes its background's colour (it would vanish): it moves on
  to the next hair colour, a fixed rule the generator learns.
- **Small continuous variation** (head size and position, a side light) so that an edit must
  follow each face rather than paint a fixed stencil; kept small (head shifts of at most 2 px)
  because a StyleGAN2 synthesis network places things at sub-pixel offsets poorly.
- **Scenes from the normalised z**, like the shapes world: the mapping network's first step
  divides z by its RMS, so the generator sees exactly the numbers that decide its portrait.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

RESOLUTION = 64
SKIN_TONES = {"light": (0.96, 0.80, 0.69), "tan": (0.80, 0.58, 0.40),
              "dark": (0.46, 0.30, 0.20)}
HAIR_COLOURS = {"black": (0.09, 0.08, 0.08), "brown": (0.45, 0.27, 0.12),
                "blond": (0.95, 0.82, 0.45), "red": (0.82, 0.20, 0.10),
                "grey": (0.64, 0.64, 0.66)}
BACKGROUNDS = {"red": HAIR_COLOURS["red"], "blue": (0.20, 0.36, 0.82),
               "green": (0.20, 0.62, 0.30), "grey": HAIR_COLOURS["grey"],
               "purple": (0.52, 0.26, 0.68)}
EYE_COLOURS = {"brown": (0.42, 0.22, 0.08), "blue": (0.16, 0.45, 0.95),
               "green": (0.20, 0.70, 0.28)}
HAIR_STYLES = ("bald", "short", "long")
BEARDS = ("none", "beard")
GLASSES = ("none", "glasses")
MOUTHS = ("neutral", "smiling")

#: Every discrete attribute: its name, its values, and the z dim it is read from.
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("background", tuple(BACKGROUNDS)), ("skin", tuple(SKIN_TONES)),
    ("hair_colour", tuple(HAIR_COLOURS)), ("hair_style", HAIR_STYLES), ("beard", BEARDS),
    ("glasses", GLASSES), ("mouth", MOUTHS), ("eyes", tuple(EYE_COLOURS)))
ATTRIBUTE_NAMES = tuple(a for a, _ in ATTRIBUTES)
VALUES = dict(ATTRIBUTES)
DISCRETE_DIMS = tuple((i, len(values)) for i, (_, values) in enumerate(ATTRIBUTES))
#: Continuous dims: (z dim, field) read linearly from the uniform u in [0, 1).
CONTINUOUS = ((8, "scale"), (9, "shift_x"), (10, "shift_y"), (11, "light"))
SCENE_DIMS = 12
SCALE_RANGE = (0.93, 1.07)
SHIFT_MAX = 0.03   # of the image side: about 2 px at 64 px
LIGHT_MAX = 0.22
#: Visible-mask channels, in order.
PARTS = ("background", "skin", "hair", "beard", "eyes", "mouth", "glasses")


@dataclass
class FaceBatch:
    """Per-portrait attribute indices (into ``VALUES[name]``) and continuous parameters."""

    background: torch.Tensor
    skin: torch.Tensor
    hair_colour: torch.Tensor
    hair_style: torch.Tensor
    beard: torch.Tensor
    glasses: torch.Tensor
    mouth: torch.Tensor
    eyes: torch.Tensor
    scale: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    light: torch.Tensor

    def __len__(self) -> int:
        return int(self.background.shape[0])

    def describe(self, i: int) -> dict[str, str]:
        return {name: VALUES[name][int(getattr(self, name)[i])] for name in ATTRIBUTE_NAMES}

    def select(self, index: torch.Tensor | slice) -> "FaceBatch":
        return FaceBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str) -> "FaceBatch":
        return FaceBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def clone(self) -> "FaceBatch":
        return FaceBatch(*(getattr(self, f.name).clone() for f in fields(self)))

    def replace(self, **changes: torch.Tensor | int) -> "FaceBatch":
        """A copy with some attributes set (an int sets it for every portrait)."""
        out = self.clone()
        for name, value in changes.items():
            current = getattr(out, name)
            setattr(out, name, torch.as_tensor(value, dtype=current.dtype,
                                               device=current.device).expand_as(current).clone())
        return out.with_visible_hair()

    def with_visible_hair(self) -> "FaceBatch":
        """Apply the world's one rule: hair never has its background's colour."""
        self.hair_colour = visible_hair(self.background, self.hair_colour)
        return self


def _pick(u: torch.Tensor, n: int) -> torch.Tensor:
    return (u * n).long().clamp(0, n - 1)


_HAIR_OF_BACKGROUND = torch.tensor([list(HAIR_COLOURS).index(b) if b in HAIR_COLOURS else -1
                                    for b in BACKGROUNDS])


def visible_hair(background: torch.Tensor, hair: torch.Tensor) -> torch.Tensor:
    """Hair that would have its background's colour takes the next hair colour instead."""
    clash = _HAIR_OF_BACKGROUND.to(background.device)[background] == hair
    return torch.where(clash, (hair + 1) % len(HAIR_COLOURS), hair)


def faces_from_uniform(u: torch.Tensor) -> FaceBatch:
    """Portraits from uniforms u [B, >= SCENE_DIMS] in [0, 1): a fixed, deterministic map."""
    picks = {name: _pick(u[:, dim], n) for (name, _), (dim, n) in zip(ATTRIBUTES, DISCRETE_DIMS)}
    cont = {name: u[:, dim] for dim, name in CONTINUOUS}
    lo, hi = SCALE_RANGE
    return FaceBatch(**picks, scale=lo + (hi - lo) * cont["scale"],
                     shift_x=SHIFT_MAX * (2 * cont["shift_x"] - 1),
                     shift_y=SHIFT_MAX * (2 * cont["shift_y"] - 1),
                     light=LIGHT_MAX * (2 * cont["light"] - 1)).with_visible_hair()


def faces_from_z(z: torch.Tensor) -> FaceBatch:
    """The portrait a face-generator latent names (normal CDF of the normalised z)."""
    from ..scene import normalised_z

    u = 0.5 * (1 + torch.erf(normalised_z(z)[:, :SCENE_DIMS] / 2 ** 0.5))
    return faces_from_uniform(u.clamp(0, 1 - 1e-6))


def random_faces(n: int, seed: int, device: torch.device | str = "cpu") -> FaceBatch:
    """Portraits drawn independently of any generator (CLIP and judge training, evaluation)."""
    g = torch.Generator().manual_seed(seed)
    return faces_from_uniform(torch.rand(n, SCENE_DIMS, generator=g).to(device))
